//! Unit tests of record runs: cutting, the stored header, byte-identical
//! batches in each codec, decoding back.

use super::*;
use crate::event::encode_headers;
use crate::kafka::record_batch::{ProducerFields, write_stored_run_header};

const CODECS: [Codec; 3] = [Codec::None, Codec::Lz4, Codec::Zstd(3)];

fn shape(codec: Codec, partitions: i32) -> RunShape {
    RunShape {
        codec,
        partitions,
        max_events: 1000,
        max_raw_bytes: 1 << 20,
    }
}

/// `n` events of topic `t`: keys `k{i % keys}` (none where `keys` is
/// 0), one header on odd events, an unsynced clock on the first when
/// `unsynced`.
fn events(n: usize, keys: usize, unsynced: bool) -> Vec<u8> {
    let mut data = Vec::new();
    for i in 0..n {
        let key = format!("k{}", i % keys.max(1));
        let mut headers = Vec::new();
        if i % 2 == 1 {
            encode_headers([("h", &b"v"[..]), ("h", &b""[..])], &mut headers);
        }
        let value = format!("value {i}");
        Event {
            topic: "t",
            key: (keys > 0).then_some(key.as_bytes()),
            headers: &headers,
            value: value.as_bytes(),
            timestamp_ms: 1_700_000_000_000 + (i as i64 % 5),
            clock: (unsynced && i == 0).then_some(crate::clock::UnsyncedStamp {
                boot: 1,
                boot_ms: i as u64,
            }),
        }
        .encode_into(&mut data);
    }
    data
}

enum Stored {
    Run(i64, u32, usize, Vec<u8>),
    Events(i64, u32, Vec<u8>),
}

fn cut(data: &[u8], shape: RunShape) -> (Vec<Stored>, i64) {
    let mut pieces = Vec::new();
    let next = RunCutter::default()
        .cut::<()>(data, "t", shape, "node-1", 100, |p| {
            pieces.push(match p {
                Piece::Run {
                    seq_first,
                    count,
                    raw_bytes,
                    payload,
                } => Stored::Run(seq_first, count, raw_bytes, payload.to_vec()),
                Piece::Events {
                    seq_first,
                    count,
                    data,
                } => Stored::Events(seq_first, count, data.to_vec()),
            });
            Ok(())
        })
        .unwrap();
    (pieces, next)
}

fn all_events(data: &[u8]) -> Vec<Event<'_>> {
    let mut out = Vec::new();
    let mut rest = data;
    while !rest.is_empty() {
        let (e, r) = Event::decode_from(rest).unwrap();
        out.push(e);
        rest = r;
    }
    out
}

/// Every event is in exactly one piece, a run's events hash to its
/// partition, sequence numbers follow on, and each key's events keep
/// their order.
#[test]
fn runs_and_the_rest_hold_every_event_once_with_keys_in_order() {
    let data = events(600, 40, true);
    let (pieces, next) = cut(&data, shape(Codec::Lz4, 4));
    assert_eq!(next, 700);
    let mut seq = 100;
    let mut seen: Vec<(String, String)> = Vec::new();
    let mut runs = 0;
    for p in &pieces {
        match p {
            Stored::Run(first, count, raw, payload) => {
                runs += 1;
                assert_eq!(*first, seq);
                let (h, records) = RunHeader::read(payload).unwrap();
                assert!(*count as usize >= RUN_MIN_EVENTS);
                assert_eq!(h.shape.count as u32, *count);
                assert_eq!(h.records_crc, crc32c::crc32c(records));
                let d = decode_run(&h, records, *raw, "t").unwrap();
                for e in all_events(&d.data) {
                    let key = e.key.unwrap();
                    assert_eq!(partition_for_key(key, 4), h.partition);
                    assert!(e.clock.is_none());
                    seen.push((
                        String::from_utf8_lossy(key).into(),
                        String::from_utf8_lossy(e.value).into(),
                    ));
                }
                seq += *count as i64;
            }
            Stored::Events(first, count, data) => {
                assert_eq!(*first, seq);
                let es = all_events(data);
                assert_eq!(es.len(), *count as usize);
                for e in es {
                    seen.push((
                        String::from_utf8_lossy(e.key.unwrap()).into(),
                        String::from_utf8_lossy(e.value).into(),
                    ));
                }
                seq += *count as i64;
            }
        }
    }
    // The first event's partition stays events (its clock is unsynced).
    assert!(runs >= 3, "{runs} runs");
    assert_eq!(seen.len(), 600);
    let mut values: Vec<usize> = seen
        .iter()
        .map(|(_, v)| v.trim_start_matches("value ").parse().unwrap())
        .collect();
    // Per key, in acknowledgement order.
    for k in 0..40 {
        let of_key: Vec<usize> = seen
            .iter()
            .filter(|(key, _)| *key == format!("k{k}"))
            .map(|(_, v)| v.trim_start_matches("value ").parse().unwrap())
            .collect();
        assert!(of_key.windows(2).all(|w| w[0] < w[1]), "k{k}: {of_key:?}");
    }
    values.sort();
    assert_eq!(values, (0..600).collect::<Vec<_>>());
}

/// What a run's stored bytes send is the batch the forwarder would
/// encode from the same events, byte for byte, in every codec; and the
/// run decodes back to the events it was cut from.
#[test]
fn a_stored_run_sends_the_batch_the_events_would_make() {
    for codec in CODECS {
        let data = events(100, 0, false);
        let (pieces, _) = cut(&data, shape(codec, 3));
        let [Stored::Run(first, count, raw, payload)] = &pieces[..] else {
            panic!("one keyless run expected");
        };
        let (h, records) = RunHeader::read(payload).unwrap();
        assert_eq!(h.partitions, KEYLESS);
        let fields = ProducerFields {
            producer_id: 7,
            producer_epoch: 1,
            base_sequence: 40,
        };
        let mut sent = Vec::new();
        write_stored_run_header(
            &mut sent,
            h.codec,
            fields,
            h.shape,
            records.len(),
            h.records_crc,
        );
        sent.extend_from_slice(records);
        let mut enc = BatchEncoder::default();
        for (i, e) in all_events(&data).iter().enumerate() {
            let id = format!("node-1:{}", first + i as i64);
            let headers = e
                .raw_header_iter()
                .chain(std::iter::once((FERRY_ID_HEADER.as_bytes(), id.as_bytes())));
            enc.push(e.timestamp_ms, e.key, e.value, headers);
        }
        let mut whole = Vec::new();
        enc.finish_into(codec, fields, &mut whole);
        let first_difference = sent[61..]
            .iter()
            .zip(&whole[61..])
            .position(|(a, b)| a != b);
        assert_eq!(
            (sent.len(), first_difference),
            (whole.len(), None),
            "{codec:?}: the batch from the stored run differs"
        );
        let d = decode_run(&h, records, *raw, "t").unwrap();
        assert_eq!(d.offsets.len(), *count as usize);
        assert_eq!(all_events(&d.data), all_events(&data), "{codec:?}");
    }
}

#[test]
fn runs_are_cut_at_the_batch_limits_and_small_groups_stay_events() {
    let data = events(250, 0, false);
    let mut s = shape(Codec::Lz4, 2);
    s.max_events = 100;
    let (pieces, next) = cut(&data, s);
    let counts: Vec<u32> = pieces
        .iter()
        .map(|p| match p {
            Stored::Run(_, c, _, _) => *c,
            Stored::Events(..) => 0,
        })
        .collect();
    assert_eq!(counts, [100, 100, 50]);
    assert_eq!(next, 350);
    // Under the threshold: everything stays events.
    let data = events(RUN_MIN_EVENTS - 1, 0, false);
    let (pieces, _) = cut(&data, s);
    assert!(matches!(&pieces[..], [Stored::Events(100, _, d)] if *d == data));
}

#[test]
fn a_run_fits_only_where_it_was_cut_for() {
    let h = RunHeader {
        partitions: 4,
        partition: 2,
        codec: Codec::Lz4.number(),
        shape: RecordsShape {
            count: 3,
            base_timestamp: 0,
            max_timestamp: 0,
        },
        records_crc: 0,
        node: 9,
    };
    assert!(h.fits(4, 2, Codec::Lz4, 9));
    assert!(!h.fits(8, 2, Codec::Lz4, 9), "partition count changed");
    assert!(!h.fits(4, 1, Codec::Lz4, 9));
    assert!(!h.fits(4, 2, Codec::Zstd(3), 9), "codec changed");
    assert!(!h.fits(4, 2, Codec::Lz4, 8), "node id changed");
    let keyless = RunHeader {
        partitions: KEYLESS,
        ..h
    };
    assert!(keyless.fits(16, 11, Codec::Lz4, 9));
    let mut bytes = vec![0; RUN_HEADER_LEN];
    h.write(&mut bytes);
    assert_eq!(RunHeader::read(&bytes).map(|r| r.0), Some(h));
    bytes[0] = 9;
    assert_eq!(RunHeader::read(&bytes), None);
}
