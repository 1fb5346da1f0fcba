//! Who waits out a throttle: KIP-219's rule of which request versions the
//! client holds off for (a pure table, used by the connection).

/// KIP-219 (Kafka 2.0): from these request versions a throttled request is
/// answered at once and the client holds off for `throttle_time_ms`. To
/// older versions a broker before 2.0 held the answer back itself, and a
/// broker from 2.0 holds back the connection's next request: waiting again
/// would double the pause. (Produce 6, Metadata 6, InitProducerId 1, as in
/// Kafka's `shouldClientThrottle`.)
pub fn client_holds_off(api_key: i16, version: i16) -> bool {
    const PRODUCE: i16 = 0;
    const METADATA: i16 = 3;
    const INIT_PRODUCER_ID: i16 = 22;
    match api_key {
        PRODUCE | METADATA => version >= 6,
        INIT_PRODUCER_ID => version >= 1,
        _ => true,
    }
}

#[cfg(test)]
mod tests {
    use super::client_holds_off;

    #[test]
    fn old_versions_were_throttled_by_the_broker_already() {
        assert!(!client_holds_off(0, 5) && client_holds_off(0, 6));
        assert!(!client_holds_off(3, 5) && client_holds_off(3, 12));
        assert!(!client_holds_off(22, 0) && client_holds_off(22, 1));
    }
}
