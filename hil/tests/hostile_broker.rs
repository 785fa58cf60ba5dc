//! The sim device (same session core as the firmware) against a fake broker
//! on loopback that sends what no broker should: a QoS 1/2 PUBLISH with
//! packet id 0, a PUBLISH announcing 268 MB followed by 1 MB of it, a refused
//! SUBACK. Each must end in one clean error line, a close with its reason and
//! a new connection after the backoff: never a crash, never unbounded memory.

mod common;

use common::Sim;

use hil_session::{Event, MqttVersion};
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::time::Duration;

const DEADLINE: Duration = Duration::from_secs(15);

fn start(broker: SocketAddr, proto: MqttVersion) -> Sim {
    let state = tempfile::tempdir().unwrap();
    let mut args = hil_sim::Args::new(
        broker.to_string(),
        "24:0a:c4:00:00:07".into(),
        state.path().into(),
    );
    args.mqtt = proto;
    args.backoff_base_ms = 100;
    args.backoff_cap_ms = 400;
    args.seed = Some(3);
    Sim::spawn(&args, state)
}

/// Reads one whole packet (fixed header + body) from the device.
fn read_packet(s: &mut TcpStream) -> Vec<u8> {
    let mut head = [0u8; 1];
    s.read_exact(&mut head).unwrap();
    let mut len = 0usize;
    let mut bytes = vec![head[0]];
    for i in 0..4 {
        let mut b = [0u8; 1];
        s.read_exact(&mut b).unwrap();
        bytes.push(b[0]);
        len |= ((b[0] & 0x7f) as usize) << (7 * i);
        if b[0] & 0x80 == 0 {
            break;
        }
    }
    let mut body = vec![0u8; len];
    s.read_exact(&mut body).unwrap();
    bytes.extend(body);
    bytes
}

/// Accepts the device, answers its CONNECT, and returns the stream once the
/// device has sent its SUBSCRIBE (whose packet id is returned too).
fn accept_session(l: &TcpListener, v5: bool) -> (TcpStream, u16) {
    let (mut s, _) = l.accept().unwrap();
    s.set_read_timeout(Some(DEADLINE)).unwrap();
    let connect = read_packet(&mut s);
    assert_eq!(connect[0], 0x10, "CONNECT first");
    if v5 {
        s.write_all(&[0x20, 3, 0, 0, 0]).unwrap();
    } else {
        s.write_all(&[0x20, 2, 0, 0]).unwrap();
    }
    loop {
        let p = read_packet(&mut s);
        if p[0] == 0x82 {
            let at = if p[1] & 0x80 != 0 { 3 } else { 2 };
            return (s, u16::from_be_bytes([p[at], p[at + 1]]));
        }
    }
}

fn hostile(proto: MqttVersion, send: impl Fn(&mut TcpStream, u16, bool), reason: &str, kind: &str) {
    let ip = hil_broker::private_loopback();
    let l = TcpListener::bind(SocketAddr::new(ip, 0)).unwrap();
    let mut sim = start(l.local_addr().unwrap(), proto);
    let v5 = proto == MqttVersion::V5;
    let (mut s, pid) = accept_session(&l, v5);
    send(&mut s, pid, v5);
    let fail = |sim: &Sim, e: hil::dut::DutError| -> ! {
        panic!("{e}; the device said:\n{}", sim.transcript.raw())
    };
    let err = sim
        .console
        .expect(
            "error line",
            DEADLINE,
            |e| matches!(e, Event::Error { kind: k, .. } if k == kind),
        )
        .unwrap_or_else(|e| fail(&sim, e));
    let disc = sim
        .console
        .expect("disconnect with its reason", DEADLINE, |e| {
            matches!(e, Event::MqttDisconnected { .. })
        })
        .unwrap_or_else(|e| fail(&sim, e));
    let Event::MqttDisconnected { reason: got } = &disc else {
        unreachable!()
    };
    assert!(
        got.starts_with(reason),
        "reason {got:?}, expected {reason}; error {err:?}"
    );
    sim.console
        .expect("backoff", DEADLINE, |e| matches!(e, Event::Backoff { .. }))
        .unwrap_or_else(|e| fail(&sim, e));
    // The device is alive and connects again.
    drop(s);
    let (_s2, _) = accept_session(&l, v5);
    let status = sim
        .console
        .command("!status")
        .unwrap_or_else(|e| fail(&sim, e));
    assert!(
        matches!(&status, Event::Ack { fields, .. } if fields.iter().any(|(k, _)| k == "rejected")),
        "{status:?}"
    );
    assert!(
        sim.child.try_wait().unwrap().is_none(),
        "the device is still running"
    );
}

fn publish_pid0(s: &mut TcpStream, _pid: u16, v5: bool) {
    let topic = b"devices/esp32c3-240ac4000007/cmd";
    let mut body = (topic.len() as u16).to_be_bytes().to_vec();
    body.extend_from_slice(topic);
    body.extend_from_slice(&[0, 0]);
    if v5 {
        body.push(0);
    }
    body.extend_from_slice(br#"{"id":"x"}"#);
    let mut p = vec![0x32, body.len() as u8];
    p.extend(body);
    s.write_all(&p).unwrap();
}

fn huge(s: &mut TcpStream, _pid: u16, _v5: bool) {
    s.write_all(&[0x30, 0xff, 0xff, 0xff, 0x7f]).unwrap();
    // 1 MB of the announced 268 MB; the device closes long before it is read.
    let chunk = vec![b'x'; 64 * 1024];
    for _ in 0..16 {
        if s.write_all(&chunk).is_err() {
            break;
        }
    }
}

fn refuse(s: &mut TcpStream, pid: u16, v5: bool) {
    let [hi, lo] = pid.to_be_bytes();
    if v5 {
        s.write_all(&[0x90, 4, hi, lo, 0, 0x80]).unwrap();
    } else {
        s.write_all(&[0x90, 3, hi, lo, 0x80]).unwrap();
    }
}

macro_rules! both {
    ($name:ident, $send:expr, $reason:expr, $kind:expr) => {
        mod $name {
            use super::*;
            #[test]
            fn v3() {
                hostile(MqttVersion::V3_1_1, $send, $reason, $kind)
            }
            #[test]
            fn v5() {
                hostile(MqttVersion::V5, $send, $reason, $kind)
            }
        }
    };
}

both!(
    packet_id_zero,
    publish_pid0,
    "protocol-violation",
    "protocol"
);
both!(announced_268_mb, huge, "packet-too-large", "protocol");
both!(
    suback_refused,
    refuse,
    "subscribe-refused rc=0x80",
    "subscribe"
);
