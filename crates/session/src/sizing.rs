//! Sizing: the reference text's memory formulas, for plans and checks.
//!
//! Broker queue memory for one offline client with a persistent session:
//! `M = N_msgs × (M_payload + M_overhead)`; the device's local buffer for an
//! outage is the same product on the device side, with its own per-entry overhead.

/// Broker-side per-message metadata assumed by the reference text (bytes).
pub const BROKER_OVERHEAD_BYTES: u64 = 40;

/// Messages queued for a client that is offline for `offline_s` seconds while
/// receiving `msgs_per_min` messages a minute.
pub fn queued_messages(offline_s: u64, msgs_per_min: u64) -> u64 {
    offline_s * msgs_per_min / 60
}

/// `N_msgs × (M_payload + M_overhead)`: bytes a broker holds for one offline client.
pub fn queue_memory_bytes(n_msgs: u64, payload_bytes: u64, overhead_bytes: u64) -> u64 {
    n_msgs * (payload_bytes + overhead_bytes)
}

/// Broker memory for a fleet of `devices` offline at once.
pub fn fleet_queue_memory_bytes(devices: u64, per_device_bytes: u64) -> u64 {
    devices * per_device_bytes
}

/// With an MQTT 5 Message Expiry Interval, nothing older than the expiry is
/// queued, so the queue is bounded by the messages of one expiry window.
pub fn expiry_bounded_messages(offline_s: u64, msgs_per_min: u64, expiry_s: u64) -> u64 {
    queued_messages(offline_s.min(expiry_s), msgs_per_min)
}

/// Bytes a device needs to buffer its own telemetry through an outage of
/// `outage_s` seconds, sampling every `period_s` seconds.
pub fn local_buffer_bytes(
    outage_s: u64,
    period_s: u64,
    payload_bytes: u64,
    entry_overhead: u64,
) -> u64 {
    if period_s == 0 {
        return 0;
    }
    outage_s.div_ceil(period_s) * (payload_bytes + entry_overhead)
}

/// How many readings of `payload_bytes` fit in `budget_bytes` of buffer.
pub fn local_buffer_capacity(budget_bytes: u64, payload_bytes: u64, entry_overhead: u64) -> u64 {
    budget_bytes
        .checked_div(payload_bytes + entry_overhead)
        .unwrap_or(0)
}

/// The reference text's restart burst: every one of `devices` reconnects
/// after a broker restart and is handed its `queued` messages of
/// `message_bytes` at once: `N × Q × M` bytes.
pub fn restart_burst_bytes(devices: u64, queued: u64, message_bytes: u64) -> u64 {
    devices * queued * message_bytes
}

/// The memory the text tells a broker to have for a burst: "2-3× this peak".
pub fn burst_headroom_bytes(burst_bytes: u64) -> (u64, u64) {
    (burst_bytes * 2, burst_bytes * 3)
}

/// QoS is per hop: a message reaches a subscriber at the lower of the
/// publisher's and the subscription's QoS.
pub fn effective_qos(publish_qos: u8, subscription_qos: u8) -> u8 {
    publish_qos.min(subscription_qos).min(2)
}

/// What a delivery at `qos` promises the application, in the text's words.
pub fn qos_guarantee(qos: u8) -> &'static str {
    match qos {
        0 => "at most once: may be lost",
        1 => "at least once: may be duplicated",
        _ => "exactly once",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reference_worked_numbers() {
        // One sensor, offline 1 hour, 1 msg/min: 60 × (100 + 40) = 8,400 B.
        let n = queued_messages(3600, 1);
        assert_eq!(n, 60);
        let hour = queue_memory_bytes(n, 100, BROKER_OVERHEAD_BYTES);
        assert_eq!(hour, 8_400);
        // 1,000 sensors: 8.4 MB.
        assert_eq!(fleet_queue_memory_bytes(1000, hour), 8_400_000);
        // Offline 24 hours: 1,440 × 140 = 201,600 B.
        let day = queue_memory_bytes(queued_messages(86_400, 1), 100, BROKER_OVERHEAD_BYTES);
        assert_eq!(day, 201_600);
        // 10,000 sensors for a day: ~1.88 GiB as the text says (10,000 × 197 KiB).
        let fleet = fleet_queue_memory_bytes(10_000, day);
        assert_eq!(fleet, 2_016_000_000);
        assert_eq!(fleet / (1024 * 1024 * 1024), 1); // 1.877 GiB
                                                     // Message expiry of one hour bounds the day-long outage to the hour's 8,400 B.
        let bounded = expiry_bounded_messages(86_400, 1, 3600);
        assert_eq!(
            queue_memory_bytes(bounded, 100, BROKER_OVERHEAD_BYTES),
            8_400
        );
    }

    #[test]
    fn restart_burst_and_qos() {
        // "1,000 devices x 100 messages x 500 bytes = 50MB burst ... 2-3x".
        let b = restart_burst_bytes(1000, 100, 500);
        assert_eq!(b, 50_000_000);
        assert_eq!(burst_headroom_bytes(b), (100_000_000, 150_000_000));
        // "Publishing with QoS 2 to a subscriber with QoS 0 ... QoS 0 delivery".
        assert_eq!(effective_qos(2, 0), 0);
        assert_eq!(effective_qos(1, 2), 1);
        assert_eq!(effective_qos(2, 2), 2);
        assert_eq!(
            qos_guarantee(effective_qos(2, 1)),
            "at least once: may be duplicated"
        );
    }

    #[test]
    fn local_buffer() {
        // A reading a minute through a one-hour outage, 100 B + 40 B each.
        assert_eq!(local_buffer_bytes(3600, 60, 100, 40), 8_400);
        assert_eq!(local_buffer_bytes(61, 60, 100, 40), 280);
        assert_eq!(local_buffer_bytes(10, 0, 100, 40), 0);
        assert_eq!(local_buffer_capacity(8_400, 100, 40), 60);
        assert_eq!(local_buffer_capacity(10, 0, 0), 0);
    }
}
