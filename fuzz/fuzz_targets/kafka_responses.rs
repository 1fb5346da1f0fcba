//! What a broker (or anything on its port) sends back: the frame size
//! check and every response decoder ferry uses, at every version ferry may
//! ask with. No input may panic.
#![no_main]

use bytes::Bytes;
use ferry::kafka::wire::{self, Request};
use kafka_protocol::messages::{
    ApiVersionsRequest, InitProducerIdRequest, MetadataRequest, ProduceRequest,
    SaslAuthenticateRequest, SaslHandshakeRequest,
};
use libfuzzer_sys::fuzz_target;

fn each_version<R: Request>(frame: &Bytes) {
    for v in R::VERSIONS.min..=R::VERSIONS.max {
        let _ = wire::decode_response::<R>(frame.clone(), v);
    }
}

fuzz_target!(|data: &[u8]| {
    if data.len() < 5 {
        return;
    }
    let _ = wire::frame_size([data[0], data[1], data[2], data[3]]);
    let _ = wire::correlation_id(&data[4..]);
    let frame = Bytes::copy_from_slice(&data[5..]);
    match data[4] % 6 {
        0 => each_version::<ProduceRequest>(&frame),
        1 => each_version::<MetadataRequest>(&frame),
        2 => each_version::<ApiVersionsRequest>(&frame),
        3 => each_version::<InitProducerIdRequest>(&frame),
        4 => each_version::<SaslHandshakeRequest>(&frame),
        _ => each_version::<SaslAuthenticateRequest>(&frame),
    }
});
