//! Decoders for the answers ferry reads from a broker: ApiVersions,
//! Metadata, InitProducerId, Produce, SaslHandshake and SaslAuthenticate,
//! at every version ferry may ask with; ListOffsets v1 and Fetch v4, the
//! versions `ferry fleet` asks with.
//!
//! Written here rather than taken from `kafka-protocol` (whose structs they
//! fill, and whose encoders the tests check them against): its decoders
//! size every array from the count on the wire before reading a single
//! element (`Vec::with_capacity(n)`), so ten bytes of garbage on a broker's
//! port can ask for hundreds of gigabytes and abort ferry. Found by the
//! `kafka_responses` fuzz target. Here a count is checked against the bytes
//! left in the frame (every element takes at least one byte) before
//! anything is allocated, and tagged fields ferry does not use are skipped.

use bytes::Bytes;
use kafka_protocol::messages::api_versions_response::ApiVersion;
use kafka_protocol::messages::fetch_response::{
    AbortedTransaction, FetchableTopicResponse, PartitionData,
};
use kafka_protocol::messages::list_offsets_response::{
    ListOffsetsPartitionResponse, ListOffsetsTopicResponse,
};
use kafka_protocol::messages::metadata_response::{
    MetadataResponseBroker, MetadataResponsePartition, MetadataResponseTopic,
};
use kafka_protocol::messages::produce_response::{
    BatchIndexAndErrorMessage, PartitionProduceResponse, TopicProduceResponse,
};
use kafka_protocol::messages::{
    ApiVersionsResponse, BrokerId, FetchResponse, InitProducerIdResponse, ListOffsetsResponse,
    MetadataResponse, ProduceResponse, ProducerId, SaslAuthenticateResponse, SaslHandshakeResponse,
    TopicName,
};
use kafka_protocol::protocol::StrBytes;

/// What went wrong reading an answer, for the caller to put in context.
pub type ReadError = String;

/// A cursor over one response frame. Every read checks the bytes are there.
pub struct Reader {
    buf: Bytes,
    pos: usize,
}

impl Reader {
    pub fn new(buf: Bytes) -> Reader {
        Reader { buf, pos: 0 }
    }

    /// Bytes not read yet.
    pub fn remaining(&self) -> usize {
        self.buf.len() - self.pos
    }

    fn take(&mut self, n: usize) -> Result<&[u8], ReadError> {
        if self.remaining() < n {
            return Err(format!(
                "the answer ends early: {n} more bytes needed at offset {}, {} left",
                self.pos,
                self.remaining()
            ));
        }
        let start = self.pos;
        self.pos += n;
        Ok(&self.buf[start..start + n])
    }

    fn take_bytes(&mut self, n: usize) -> Result<Bytes, ReadError> {
        self.take(n)?;
        Ok(self.buf.slice(self.pos - n..self.pos))
    }

    fn fixed<const N: usize>(&mut self) -> Result<[u8; N], ReadError> {
        let mut out = [0; N];
        out.copy_from_slice(self.take(N)?);
        Ok(out)
    }

    pub fn i16(&mut self) -> Result<i16, ReadError> {
        self.fixed().map(i16::from_be_bytes)
    }

    pub fn i32(&mut self) -> Result<i32, ReadError> {
        self.fixed().map(i32::from_be_bytes)
    }

    pub fn i64(&mut self) -> Result<i64, ReadError> {
        self.fixed().map(i64::from_be_bytes)
    }

    fn bool(&mut self) -> Result<bool, ReadError> {
        Ok(self.fixed::<1>()?[0] != 0)
    }

    /// An unsigned LEB128 varint of at most 32 bits.
    fn uvarint(&mut self) -> Result<u32, ReadError> {
        let mut value = 0u32;
        for i in 0..5 {
            let b = self.fixed::<1>()?[0];
            value |= u32::from(b & 0x7f) << (7 * i);
            if b & 0x80 == 0 {
                return Ok(value);
            }
        }
        Err(format!(
            "a varint longer than 5 bytes at offset {}",
            self.pos
        ))
    }

    /// The length of a string, bytes or array: `None` for null. `flexible`
    /// (compact) lengths are varints stored plus one; the others are
    /// `int16` (strings) or `int32` (bytes, arrays) with -1 for null.
    fn length(&mut self, flexible: bool, short: bool) -> Result<Option<usize>, ReadError> {
        let n: i64 = if flexible {
            i64::from(self.uvarint()?) - 1
        } else if short {
            i64::from(self.i16()?)
        } else {
            i64::from(self.i32()?)
        };
        match n {
            -1 => Ok(None),
            n if n < 0 => Err(format!("a negative length ({n}) at offset {}", self.pos)),
            // Every byte string and every array element takes at least one
            // byte, so a count beyond what is left cannot be true.
            n if n as usize > self.remaining() => Err(format!(
                "a length of {n} at offset {} with only {} bytes left",
                self.pos,
                self.remaining()
            )),
            n => Ok(Some(n as usize)),
        }
    }

    fn nullable_string(&mut self, flexible: bool) -> Result<Option<StrBytes>, ReadError> {
        let Some(n) = self.length(flexible, true)? else {
            return Ok(None);
        };
        let at = self.pos;
        let bytes = self.take_bytes(n)?;
        StrBytes::from_utf8(bytes)
            .map(Some)
            .map_err(|_| format!("a string that is not UTF-8 at offset {at}"))
    }

    fn string(&mut self, flexible: bool) -> Result<StrBytes, ReadError> {
        let at = self.pos;
        self.nullable_string(flexible)?
            .ok_or_else(|| format!("a null string at offset {at} where one is required"))
    }

    fn bytes(&mut self, flexible: bool) -> Result<Bytes, ReadError> {
        match self.length(flexible, false)? {
            Some(n) => self.take_bytes(n),
            None => Ok(Bytes::new()),
        }
    }

    /// An array of elements read by `element`; null reads as empty.
    fn array<T>(
        &mut self,
        flexible: bool,
        mut element: impl FnMut(&mut Reader) -> Result<T, ReadError>,
    ) -> Result<Vec<T>, ReadError> {
        let n = self.length(flexible, false)?.unwrap_or(0);
        let mut out = Vec::with_capacity(n);
        for _ in 0..n {
            out.push(element(self)?);
        }
        Ok(out)
    }

    /// The tagged fields that end every struct of a flexible version; none
    /// of them carries anything ferry uses, so each is skipped by its size.
    fn skip_tags(&mut self, flexible: bool) -> Result<(), ReadError> {
        if !flexible {
            return Ok(());
        }
        let count = self.uvarint()?;
        for _ in 0..count {
            self.uvarint()?;
            let size = self.uvarint()? as usize;
            self.take(size)?;
        }
        Ok(())
    }

    /// A response header (the correlation id, then tags from v1).
    pub fn header(&mut self, header_version: i16) -> Result<i32, ReadError> {
        let id = self.i32()?;
        self.skip_tags(header_version >= 1)?;
        Ok(id)
    }
}

/// An answer ferry can read, at any version from `VERSIONS`.
pub trait Answer: Sized {
    /// The versions this decoder reads.
    const VERSIONS: (i16, i16);
    fn read(r: &mut Reader, version: i16) -> Result<Self, ReadError>;
}

fn check_version<A: Answer>(version: i16) -> Result<(), ReadError> {
    let (min, max) = A::VERSIONS;
    if (min..=max).contains(&version) {
        Ok(())
    } else {
        Err(format!(
            "version {version} is not one ferry reads ({min} to {max})"
        ))
    }
}

impl Answer for ListOffsetsResponse {
    // v1: one offset per partition, no throttle time (from v2).
    const VERSIONS: (i16, i16) = (1, 1);
    fn read(r: &mut Reader, version: i16) -> Result<Self, ReadError> {
        check_version::<Self>(version)?;
        let mut out = ListOffsetsResponse::default();
        out.topics = r.array(false, |r| {
            let mut t = ListOffsetsTopicResponse::default();
            t.name = TopicName(r.string(false)?);
            t.partitions = r.array(false, |r| {
                let mut p = ListOffsetsPartitionResponse::default();
                p.partition_index = r.i32()?;
                p.error_code = r.i16()?;
                p.timestamp = r.i64()?;
                p.offset = r.i64()?;
                Ok(p)
            })?;
            Ok(t)
        })?;
        Ok(out)
    }
}

impl Answer for FetchResponse {
    // v4: records as one byte string per partition, no fetch sessions.
    const VERSIONS: (i16, i16) = (4, 4);
    fn read(r: &mut Reader, version: i16) -> Result<Self, ReadError> {
        check_version::<Self>(version)?;
        let mut out = FetchResponse::default();
        out.throttle_time_ms = r.i32()?;
        out.responses = r.array(false, |r| {
            let mut t = FetchableTopicResponse::default();
            t.topic = TopicName(r.string(false)?);
            t.partitions = r.array(false, |r| {
                let mut p = PartitionData::default();
                p.partition_index = r.i32()?;
                p.error_code = r.i16()?;
                p.high_watermark = r.i64()?;
                p.last_stable_offset = r.i64()?;
                let aborted = match r.length(false, false)? {
                    None => None,
                    Some(n) => {
                        // Each takes 16 bytes: checked before allocating.
                        if n.saturating_mul(16) > r.remaining() {
                            return Err(format!(
                                "{n} aborted transactions in {} bytes",
                                r.remaining()
                            ));
                        }
                        let mut v = Vec::with_capacity(n);
                        for _ in 0..n {
                            v.push(
                                AbortedTransaction::default()
                                    .with_producer_id(ProducerId(r.i64()?))
                                    .with_first_offset(r.i64()?),
                            );
                        }
                        Some(v)
                    }
                };
                p.aborted_transactions = aborted;
                p.records = match r.length(false, false)? {
                    Some(n) => Some(r.take_bytes(n)?),
                    None => None,
                };
                Ok(p)
            })?;
            Ok(t)
        })?;
        Ok(out)
    }
}

impl Answer for ApiVersionsResponse {
    // v3 and later are flexible; ferry asks with v2 (or v0 after
    // UNSUPPORTED_VERSION).
    const VERSIONS: (i16, i16) = (0, 2);
    fn read(r: &mut Reader, version: i16) -> Result<Self, ReadError> {
        check_version::<Self>(version)?;
        let mut out = ApiVersionsResponse::default();
        out.error_code = r.i16()?;
        out.api_keys = r.array(false, |r| {
            Ok(ApiVersion::default()
                .with_api_key(r.i16()?)
                .with_min_version(r.i16()?)
                .with_max_version(r.i16()?))
        })?;
        if version >= 1 {
            out.throttle_time_ms = r.i32()?;
        }
        Ok(out)
    }
}

impl Answer for MetadataResponse {
    const VERSIONS: (i16, i16) = (0, 12);
    fn read(r: &mut Reader, version: i16) -> Result<Self, ReadError> {
        check_version::<Self>(version)?;
        let flex = version >= 9;
        let mut out = MetadataResponse::default();
        if version >= 3 {
            out.throttle_time_ms = r.i32()?;
        }
        out.brokers = r.array(flex, |r| {
            let mut b = MetadataResponseBroker::default();
            b.node_id = BrokerId(r.i32()?);
            b.host = r.string(flex)?;
            b.port = r.i32()?;
            if version >= 1 {
                b.rack = r.nullable_string(flex)?;
            }
            r.skip_tags(flex)?;
            Ok(b)
        })?;
        if version >= 2 {
            out.cluster_id = r.nullable_string(flex)?;
        }
        if version >= 1 {
            out.controller_id = BrokerId(r.i32()?);
        }
        out.topics = r.array(flex, |r| {
            let mut t = MetadataResponseTopic::default();
            t.error_code = r.i16()?;
            t.name = if version >= 12 {
                r.nullable_string(flex)?.map(TopicName)
            } else {
                Some(TopicName(r.string(flex)?))
            };
            if version >= 10 {
                // The topic id: ferry names topics, so it stays nil.
                r.take(16)?;
            }
            if version >= 1 {
                t.is_internal = r.bool()?;
            }
            t.partitions = r.array(flex, |r| {
                let mut p = MetadataResponsePartition::default();
                p.error_code = r.i16()?;
                p.partition_index = r.i32()?;
                p.leader_id = BrokerId(r.i32()?);
                if version >= 7 {
                    p.leader_epoch = r.i32()?;
                }
                p.replica_nodes = r.array(flex, |r| r.i32().map(BrokerId))?;
                p.isr_nodes = r.array(flex, |r| r.i32().map(BrokerId))?;
                if version >= 5 {
                    p.offline_replicas = r.array(flex, |r| r.i32().map(BrokerId))?;
                }
                r.skip_tags(flex)?;
                Ok(p)
            })?;
            if version >= 8 {
                t.topic_authorized_operations = r.i32()?;
            }
            r.skip_tags(flex)?;
            Ok(t)
        })?;
        if (8..=10).contains(&version) {
            out.cluster_authorized_operations = r.i32()?;
        }
        r.skip_tags(flex)?;
        Ok(out)
    }
}

impl Answer for InitProducerIdResponse {
    const VERSIONS: (i16, i16) = (0, 5);
    fn read(r: &mut Reader, version: i16) -> Result<Self, ReadError> {
        check_version::<Self>(version)?;
        let mut out = InitProducerIdResponse::default();
        out.throttle_time_ms = r.i32()?;
        out.error_code = r.i16()?;
        out.producer_id = ProducerId(r.i64()?);
        out.producer_epoch = r.i16()?;
        r.skip_tags(version >= 2)?;
        Ok(out)
    }
}

impl Answer for ProduceResponse {
    const VERSIONS: (i16, i16) = (3, 12);
    fn read(r: &mut Reader, version: i16) -> Result<Self, ReadError> {
        check_version::<Self>(version)?;
        let flex = version >= 9;
        let mut out = ProduceResponse::default();
        out.responses = r.array(flex, |r| {
            let mut t = TopicProduceResponse::default();
            t.name = TopicName(r.string(flex)?);
            t.partition_responses = r.array(flex, |r| {
                let mut p = PartitionProduceResponse::default();
                p.index = r.i32()?;
                p.error_code = r.i16()?;
                p.base_offset = r.i64()?;
                p.log_append_time_ms = r.i64()?;
                if version >= 5 {
                    p.log_start_offset = r.i64()?;
                }
                if version >= 8 {
                    p.record_errors = r.array(flex, |r| {
                        let mut e = BatchIndexAndErrorMessage::default();
                        e.batch_index = r.i32()?;
                        e.batch_index_error_message = r.nullable_string(flex)?;
                        r.skip_tags(flex)?;
                        Ok(e)
                    })?;
                    p.error_message = r.nullable_string(flex)?;
                }
                // v10's tag 0 (the current leader) is skipped: ferry asks
                // for metadata again on NOT_LEADER instead.
                r.skip_tags(flex)?;
                Ok(p)
            })?;
            r.skip_tags(flex)?;
            Ok(t)
        })?;
        out.throttle_time_ms = r.i32()?;
        r.skip_tags(flex)?;
        Ok(out)
    }
}

impl Answer for SaslHandshakeResponse {
    const VERSIONS: (i16, i16) = (0, 1);
    fn read(r: &mut Reader, version: i16) -> Result<Self, ReadError> {
        check_version::<Self>(version)?;
        let mut out = SaslHandshakeResponse::default();
        out.error_code = r.i16()?;
        out.mechanisms = r.array(false, |r| r.string(false))?;
        Ok(out)
    }
}

impl Answer for SaslAuthenticateResponse {
    const VERSIONS: (i16, i16) = (0, 2);
    fn read(r: &mut Reader, version: i16) -> Result<Self, ReadError> {
        check_version::<Self>(version)?;
        let flex = version >= 2;
        let mut out = SaslAuthenticateResponse::default();
        out.error_code = r.i16()?;
        out.error_message = r.nullable_string(flex)?;
        out.auth_bytes = r.bytes(flex)?;
        if version >= 1 {
            out.session_lifetime_ms = r.i64()?;
        }
        r.skip_tags(flex)?;
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::BytesMut;
    use kafka_protocol::protocol::Encodable;

    /// Encode `answer` with kafka-protocol's encoder and read it back here.
    fn round_trip<A: Answer + Encodable>(answer: &A, version: i16) -> A {
        let mut buf = BytesMut::new();
        answer.encode(&mut buf, version).unwrap();
        let mut r = Reader::new(buf.freeze());
        let got = A::read(&mut r, version).unwrap();
        assert_eq!(r.remaining(), 0, "v{version}: bytes left over");
        got
    }

    fn s(text: &'static str) -> StrBytes {
        StrBytes::from_static_str(text)
    }

    fn metadata(version: i16) -> MetadataResponse {
        let mut m = MetadataResponse::default().with_brokers(vec![
            MetadataResponseBroker::default()
                .with_node_id(BrokerId(1))
                .with_host(s("b1"))
                .with_port(9092),
            MetadataResponseBroker::default()
                .with_node_id(BrokerId(2))
                .with_host(s("b2"))
                .with_port(9093),
        ]);
        if version >= 1 {
            m.brokers[1].rack = Some(s("rack-a"));
            m.controller_id = BrokerId(2);
        }
        if version >= 2 {
            m.cluster_id = Some(s("cluster"));
        }
        if version >= 3 {
            m.throttle_time_ms = 250;
        }
        let mut p = MetadataResponsePartition::default()
            .with_partition_index(3)
            .with_leader_id(BrokerId(2))
            .with_replica_nodes(vec![BrokerId(1), BrokerId(2)])
            .with_isr_nodes(vec![BrokerId(2)]);
        if version >= 7 {
            p.leader_epoch = 9;
        }
        if version >= 5 {
            p.offline_replicas = vec![BrokerId(1)];
        }
        let mut t = MetadataResponseTopic::default()
            .with_error_code(0)
            .with_name(Some(TopicName(s("telemetry"))))
            .with_partitions(vec![
                p.clone(),
                p.with_partition_index(4).with_error_code(5),
            ]);
        if version >= 8 {
            t.topic_authorized_operations = 0x0f;
            if version <= 10 {
                m.cluster_authorized_operations = 3;
            }
        }
        m.topics = vec![
            t.clone(),
            t.with_name(Some(TopicName(s("other"))))
                .with_error_code(3)
                .with_partitions(vec![]),
        ];
        m
    }

    #[test]
    fn metadata_reads_what_kafka_protocol_writes_at_every_version() {
        for v in 0..=12 {
            let m = metadata(v);
            assert_eq!(round_trip(&m, v), m, "v{v}");
        }
    }

    fn produce(version: i16) -> ProduceResponse {
        let mut p = PartitionProduceResponse::default()
            .with_index(1)
            .with_error_code(0)
            .with_base_offset(41)
            .with_log_append_time_ms(-1);
        if version >= 5 {
            p.log_start_offset = 7;
        }
        let mut refused = p.clone().with_index(2).with_error_code(87);
        if version >= 8 {
            refused.record_errors = vec![
                BatchIndexAndErrorMessage::default()
                    .with_batch_index(3)
                    .with_batch_index_error_message(Some(s("bad record"))),
            ];
            refused.error_message = Some(s("INVALID_RECORD"));
        }
        ProduceResponse::default()
            .with_responses(vec![
                TopicProduceResponse::default()
                    .with_name(TopicName(s("t")))
                    .with_partition_responses(vec![p, refused]),
            ])
            .with_throttle_time_ms(300)
    }

    #[test]
    fn produce_reads_what_kafka_protocol_writes_at_every_version() {
        for v in 3..=12 {
            let p = produce(v);
            assert_eq!(round_trip(&p, v), p, "v{v}");
        }
    }

    #[test]
    fn small_answers_read_what_kafka_protocol_writes() {
        for v in 0..=2 {
            let mut a = ApiVersionsResponse::default().with_api_keys(vec![
                ApiVersion::default()
                    .with_api_key(0)
                    .with_min_version(3)
                    .with_max_version(12),
            ]);
            if v >= 1 {
                a.throttle_time_ms = 5;
            }
            assert_eq!(round_trip(&a, v), a, "ApiVersions v{v}");
        }
        for v in 0..=5 {
            let a = InitProducerIdResponse::default()
                .with_throttle_time_ms(1)
                .with_producer_id(ProducerId(1 << 40))
                .with_producer_epoch(3);
            assert_eq!(round_trip(&a, v), a, "InitProducerId v{v}");
        }
        for v in 0..=1 {
            let a = SaslHandshakeResponse::default()
                .with_error_code(33)
                .with_mechanisms(vec![s("PLAIN"), s("SCRAM-SHA-512")]);
            assert_eq!(round_trip(&a, v), a, "SaslHandshake v{v}");
        }
        for v in 0..=2 {
            let mut a = SaslAuthenticateResponse::default()
                .with_error_message(Some(s("no")))
                .with_auth_bytes(Bytes::from_static(b"r=abc"));
            if v >= 1 {
                a.session_lifetime_ms = 60_000;
            }
            assert_eq!(round_trip(&a, v), a, "SaslAuthenticate v{v}");
        }
    }

    #[test]
    fn tagged_fields_ferry_does_not_use_are_skipped() {
        // Produce v10 with the current-leader tag on a partition and node
        // endpoints at the end: read, and the fields ferry uses intact.
        let mut p = produce(10);
        p.responses[0].partition_responses[0]
            .current_leader
            .leader_id = BrokerId(4);
        p.node_endpoints = vec![Default::default()];
        let got = round_trip(&p, 10);
        assert_eq!(got.responses[0].partition_responses[1].error_code, 87);
        assert_eq!(got.throttle_time_ms, 300);
    }

    #[test]
    fn counts_beyond_the_frame_are_refused_before_allocating() {
        // Found by the kafka_responses fuzz target: an array count of
        // 0x7fffffff in a ten-byte Metadata answer. kafka-protocol asks the
        // allocator for that many topics at once and aborts.
        let frame = Bytes::from_static(&[0, 0, 0, 0, 0x7f, 0xff, 0xff, 0xff, 0, 0]);
        let err = MetadataResponse::read(&mut Reader::new(frame), 3).unwrap_err();
        assert!(err.contains("length of 2147483647"), "{err}");
        // The same in a compact (flexible) array: varint 0xffffffff.
        let frame = Bytes::from_static(&[0, 0, 0, 0, 0xff, 0xff, 0xff, 0xff, 0x0f]);
        assert!(MetadataResponse::read(&mut Reader::new(frame), 9).is_err());
        let frame = Bytes::from_static(&[0, 0, 0x7f, 0xff, 0xff, 0xff]);
        assert!(SaslHandshakeResponse::read(&mut Reader::new(frame), 1).is_err());
    }

    #[test]
    fn truncation_and_bad_text_are_errors() {
        let full = {
            let mut buf = BytesMut::new();
            metadata(12).encode(&mut buf, 12).unwrap();
            buf.freeze()
        };
        for cut in 0..full.len() {
            let r = MetadataResponse::read(&mut Reader::new(full.slice(..cut)), 12);
            assert!(r.is_err(), "cut at {cut} read as whole");
        }
        // "b1" → 0xff 0x31: not UTF-8.
        let mut bad = full.to_vec();
        let at = bad.windows(2).position(|w| w == b"b1").unwrap();
        bad[at] = 0xff;
        let err = MetadataResponse::read(&mut Reader::new(Bytes::from(bad)), 12).unwrap_err();
        assert!(err.contains("UTF-8"), "{err}");
        assert!(ProduceResponse::read(&mut Reader::new(Bytes::new()), 2).is_err());
    }
}
