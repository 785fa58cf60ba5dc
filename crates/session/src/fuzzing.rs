//! One entry point for every fuzzer of the device's network input (the
//! seeded mutation test in `tests/network_fuzz.rs` feeds streams its own way;
//! the coverage-guided AFL++ target in `fuzz/` feeds arbitrary bytes here).
//!
//! The input: one mode byte (bit 0: MQTT 5), then records of one length byte
//! and that many bytes from the broker. Length 0 is a timer firing after a
//! while, 255 a lost link: so a fuzzer reaches reconnects, retries and
//! keep-alive paths, not only the parser.

use crate::backoff::SplitMix64;
use crate::config::{Config, MqttVersion};
use crate::device::{Device, LinkDownReason, Output};
use alloc::vec::Vec;

/// Runs one input; panics only if the device does (the fuzzer's finding).
pub fn drive(data: &[u8]) {
    let Some((&mode, mut rest)) = data.split_first() else {
        return;
    };
    let Ok(mac) = "24:0a:c4:12:34:56".parse() else {
        return;
    };
    let mut cfg = Config::new("esp32c3", mac);
    cfg.mqtt = if mode & 1 == 1 {
        MqttVersion::V5
    } else {
        MqttVersion::V3_1_1
    };
    cfg.max_packet_size = 1024;
    cfg.outbox_capacity = 8;
    let mut d = Device::boot(cfg, SplitMix64(mode as u64), Vec::new());
    let mut now = 0u64;
    d.handle_wifi(now, true);
    let step = |d: &mut Device<SplitMix64>, now: u64| {
        d.handle_timeout(now);
        let mut opened = false;
        while let Some(o) = d.poll_output() {
            opened |= o == Output::Open;
        }
        if opened {
            d.handle_link_up(now);
            while d.poll_output().is_some() {}
        }
    };
    step(&mut d, now);
    while let Some((&len, tail)) = rest.split_first() {
        now += 1 + (len as u64) * 37;
        match len {
            0 => step(&mut d, now + 60_000),
            255 => d.handle_link_down(now, LinkDownReason::Closed),
            n => {
                let n = (n as usize).min(tail.len());
                d.handle_bytes(now, &tail[..n]);
                rest = &tail[n..];
                while d.poll_output().is_some() {}
                continue;
            }
        }
        rest = tail;
        step(&mut d, now);
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn drives_a_connack_and_a_publish() {
        // CONNACK, then a QoS 1 PUBLISH with packet id 0 (refused), a lost
        // link and a timer: the paths the format reaches.
        super::drive(&[0, 4, 0x20, 2, 0, 0, 7, 0x32, 5, 0, 1, b't', 0, 0, 255, 0]);
        super::drive(&[1, 5, 0x20, 3, 0, 0, 0, 2, 0xe0, 0]);
        super::drive(&[]);
    }
}
