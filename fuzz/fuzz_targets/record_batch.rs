//! ferry's record-batch encoder against a reference decoder
//! (`kafka-protocol`'s): any records ferry encodes (uncompressed) decode to
//! the same keys, values, timestamps, headers and producer fields, with a
//! valid CRC.
#![no_main]

use ferry::kafka::record_batch::{BatchEncoder, Codec, ProducerFields};
use libfuzzer_sys::fuzz_target;

/// Records from fuzz input: per record, a length-prefixed key (0xff: none),
/// value, one header name and value, and a timestamp delta.
fn take<'a>(data: &mut &'a [u8]) -> Option<&'a [u8]> {
    let (&n, rest) = data.split_first()?;
    let n = (n as usize).min(rest.len());
    let (v, rest) = rest.split_at(n);
    *data = rest;
    Some(v)
}

fuzz_target!(|input: &[u8]| {
    let mut data = input;
    let mut enc = BatchEncoder::default();
    let mut expected = Vec::new();
    let mut ts = 1_700_000_000_000i64;
    while enc.count() < 64 {
        let Some(flag) = data.first().copied() else {
            break;
        };
        data = &data[1..];
        let key = if flag == 0xff { None } else { take(&mut data) };
        let Some(value) = take(&mut data) else { break };
        let name = take(&mut data).unwrap_or_default();
        let hvalue = take(&mut data).unwrap_or_default();
        ts += i64::from(flag) - 100;
        // Header names are strings on the consumer side.
        let name = String::from_utf8_lossy(name).into_owned();
        let headers = [(name.as_bytes(), hvalue)];
        enc.push(ts, key, value, headers.iter().copied());
        expected.push((
            key.map(<[u8]>::to_vec),
            value.to_vec(),
            ts,
            name,
            hvalue.to_vec(),
        ));
    }
    if expected.is_empty() {
        return;
    }
    let producer = ProducerFields {
        producer_id: 42,
        producer_epoch: 3,
        base_sequence: 7,
    };
    let mut out = Vec::new();
    enc.finish_into(Codec::None, producer, &mut out);
    let mut buf = bytes::Bytes::from(out);
    let set = kafka_protocol::records::RecordBatchDecoder::decode(&mut buf)
        .expect("the reference decoder reads ferry's batch");
    assert_eq!(set.records.len(), expected.len());
    for (i, (r, (key, value, ts, name, hvalue))) in set.records.iter().zip(&expected).enumerate() {
        assert_eq!(r.key.as_deref(), key.as_deref(), "record {i}");
        assert_eq!(r.value.as_deref(), Some(value.as_slice()), "record {i}");
        assert_eq!(r.timestamp, *ts, "record {i}");
        assert_eq!(r.producer_id, 42);
        assert_eq!(r.producer_epoch, 3);
        assert_eq!(r.sequence, 7 + i as i32);
        let got = r
            .headers
            .iter()
            .find(|(k, _)| k.as_str() == name)
            .and_then(|(_, v)| v.clone());
        assert_eq!(got.as_deref(), Some(hvalue.as_slice()), "record {i}");
    }
});
