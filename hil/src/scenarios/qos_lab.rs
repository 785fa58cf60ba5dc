//! The reference text's lab: 100 commands per QoS over a link the tap cuts
//! right after a seeded 20 % of the broker's PUBLISHes; a table of delivered,
//! lost, duplicated and DUP-flagged resends per QoS, with the time each
//! batch of 100 took, each delivery's handshake time at the tap, and the
//! packets and bytes the device's link carried per delivered message (the
//! reference text's "battery impact" proxy), beside the text's expected
//! table.

use super::steps::{STEP, cloud_err, cmd_of, command, device_id, dut_subscribed, fail, on, rig};
use super::{Control, ControlBroker, Need, Outcome, Promise, Scenario};
use hil_session::{Bug, MqttVersion};
use crate::dut::{Capability, DeviceSpec};
use crate::testbed::rules::CutAfterPublishes;
use crate::testbed::{Dir, Packet, Testbed};
use hil_broker::check::Semantic;
use hil_session::Event;
use std::time::Duration;

const N: usize = 100;

pub static SCENARIO: Scenario = Scenario {
    name: "qos_lab",
    about: "100 commands per QoS over a link cut at seeded random points (20 %): a table of delivered, lost and duplicated per QoS",
    advisor: &[],
    needs: &[
        Need::Can(Capability::ReachesBroker),
        Need::Can(Capability::Fleet),
        Need::Can(Capability::LinkFaults),
        Need::Semantic(Semantic::QosCapping),
        Need::Semantic(Semantic::DupOnRedelivery),
    ],
    device: DeviceSpec {
        keepalive_s: 10,
        ..DeviceSpec::DEFAULT
    },
    catches: &[Control::new(
        Bug::SubscribeQos0,
        Promise::QosSemantics,
        ControlBroker::Mosquitto,
        MqttVersion::V3_1_1,
    )],
    run,
};

/// The seeded 20 % of `ids` whose delivery the link cut hits.
fn hit(ids: &[String], qos: u8) -> Vec<String> {
    let mut rng = hil_session::backoff::SplitMix64(0x1ab + qos as u64);
    let mut order: Vec<usize> = (0..ids.len()).collect();
    for i in (1..ids.len()).rev() {
        let j = (hil_session::RandomSource::next_u32(&mut rng) as usize) % (i + 1);
        order.swap(i, j);
    }
    order[..ids.len() / 5]
        .iter()
        .map(|k| format!("\"{}\"", ids[*k]))
        .collect()
}

/// Mean time (ms) from a broker PUBLISH to the device crossing the tap to the
/// device's last acknowledgement of it (PUBACK at QoS 1, PUBCOMP at QoS 2),
/// over the deliveries in `batch` that completed.
fn handshake_ms(batch: &[crate::testbed::WireRecord], qos: u8) -> f64 {
    use crate::testbed::WireEvent;
    use std::collections::HashMap;
    let mut sent: HashMap<(u32, u16), std::time::Instant> = HashMap::new();
    let mut total = std::time::Duration::ZERO;
    let mut n = 0u32;
    for r in batch {
        let WireEvent::Packet { conn, dir, packet } = &r.event else {
            continue;
        };
        match (dir, packet) {
            (Dir::Down, Packet::Publish { pid: Some(pid), qos: q, .. }) if *q == qos => {
                sent.entry((*conn, *pid)).or_insert(r.at);
            }
            (Dir::Up, Packet::Puback { pid, .. } | Packet::Pubcomp { pid }) => {
                if let Some(at) = sent.remove(&(*conn, *pid)) {
                    total += r.at.duration_since(at);
                    n += 1;
                }
            }
            _ => {}
        }
    }
    if n == 0 {
        0.0
    } else {
        total.as_secs_f64() * 1000.0 / n as f64
    }
}

fn run(tb: &mut Testbed) -> Outcome {
    const P: Promise = Promise::QosSemantics;
    dut_subscribed(tb)?;
    // The lab device subscribes at QoS 2, so the delivered QoS is the publisher's.
    let mut dev = tb
        .fleet()?
        .start("24:0a:c4:00:60:01", &|s| s.cmd_qos = 2)
        .map_err(rig)?;
    let id = device_id(&mut dev, P)?;
    dev.expect("subscription", STEP, |e| {
        matches!(e, Event::MqttSubscribed { qos: 2, .. })
    })
    .map_err(on(P))?;
    let topic = tb.topics(&id).cmd();
    let mut cloud = tb.cloud("cloud-lab")?;
    let mut table = String::from(
        "qos  sent  delivered  lost  duplicated  duplicates-with-DUP  batch-s  handshake-ms  packets/msg  bytes/msg\n",
    );
    let mut times = Vec::new();
    let mut verdicts = Vec::new();
    for qos in [0u8, 1, 2] {
        let ids: Vec<String> = (0..N)
            .map(|k| format!("lab-q{qos}-{k}-{}", tb.nonce()))
            .collect();
        // Seeded: the same 20 % of messages are hit on every run.
        let cuts = tb.link().install(CutAfterPublishes::new(hit(&ids, qos)));
        let started = std::time::Instant::now();
        let packets_before = tb.wire().records().len();
        let bytes_before = tb.wire().bytes();
        // Paced like the reference lab: one message at a time; after a cut the
        // next waits until the device is back, so a cut hits only its message.
        let wait = if qos == 0 {
            Duration::from_millis(300)
        } else {
            Duration::from_secs(5)
        };
        for cid in &ids {
            let mark = dev.seen.len();
            cloud
                .publish(&topic, command(cid).as_bytes(), qos, false)
                .map_err(cloud_err("cloud-lab"))?;
            let _ = dev.expect("the message", wait, |e| {
                cmd_of(e, cid).is_some() || matches!(e, Event::CmdDuplicate { id, .. } if id == cid)
            });
            let cut = dev.seen[mark..]
                .iter()
                .any(|e| matches!(e, Event::MqttDisconnected { .. }));
            let back = dev.seen[mark..]
                .iter()
                .rev()
                .take_while(|e| !matches!(e, Event::MqttDisconnected { .. }))
                .any(|e| matches!(e, Event::MqttConnack { .. }));
            if cut && !back {
                dev.expect(
                    "the device back after the cut",
                    Duration::from_secs(10),
                    |e| matches!(e, Event::MqttConnack { .. }),
                )
                .map_err(on(P))?;
            }
        }
        // A QoS 1 sentinel after the 100: every delivery or redelivery before it has happened.
        let end = format!("lab-end-q{qos}-{}", tb.nonce());
        cloud
            .publish(&topic, command(&end).as_bytes(), 1, false)
            .map_err(cloud_err("cloud-lab"))?;
        dev.expect("the end of the batch", Duration::from_secs(60), |e| {
            cmd_of(e, &end).is_some()
        })
        .map_err(on(P))?;
        drop(cuts);
        let took = started.elapsed();
        // The device's link: every packet and byte the proxy carried for the
        // batch (the cuts' reconnects included: they are what loss costs).
        let batch = tb.wire().records()[packets_before..].to_vec();
        let packets = batch
            .iter()
            .filter(|r| matches!(r.event, crate::testbed::WireEvent::Packet { .. }))
            .count();
        let handshake = handshake_ms(&batch, qos);
        let (up, down) = tb.wire().bytes();
        let bytes = (up - bytes_before.0) + (down - bytes_before.1);
        times.push(handshake);
        let deliveries = |cid: &str| {
            dev.seen
                .iter()
                .filter(|e| matches!(e, Event::Cmd { id, .. } | Event::CmdDuplicate { id, .. } if id == cid))
                .count()
        };
        let counts: Vec<usize> = ids.iter().map(|c| deliveries(c)).collect();
        let delivered = counts.iter().filter(|c| **c > 0).count();
        let lost = N - delivered;
        let duplicated: usize = counts.iter().map(|c| c.saturating_sub(1)).sum();
        // Duplicates seen on the wire: broker-to-device PUBLISHes of an id after its first.
        let wire = tb.wire().packets(Dir::Down);
        let (mut dup_flagged, mut dup_unflagged) = (0, 0);
        for cid in &ids {
            let marker = format!("\"{cid}\"");
            let sends: Vec<bool> = wire
                .iter()
                .filter_map(|p| match p {
                    Packet::Publish { payload, dup, .. } if payload.contains(&marker) => Some(*dup),
                    _ => None,
                })
                .collect();
            for d in sends.iter().skip(1) {
                if *d {
                    dup_flagged += 1;
                } else {
                    dup_unflagged += 1;
                }
            }
        }
        let per = |x: u64| x as f64 / delivered.max(1) as f64;
        table.push_str(&format!(
            "{qos:>3}  {N:>4}  {delivered:>9}  {lost:>4}  {duplicated:>10}  {:>19}  {:>7.2}  {:>12.3}  {:>11.1}  {:>9.0}\n",
            format!("{dup_flagged}/{}", dup_flagged + dup_unflagged),
            took.as_secs_f64(),
            handshake,
            per(packets as u64),
            per(bytes),
        ));
        let verdict = match qos {
            0 if duplicated > 0 => Err(format!("QoS 0 delivered {duplicated} duplicates")),
            0 => Ok(format!(
                "QoS 0: at most once ({} lost is expected)",
                if lost > 0 { "some" } else { "none" }
            )),
            1 if lost > 0 => Err(format!("QoS 1 lost {lost} of {N}")),
            1 if dup_unflagged > 0 => {
                Err(format!("QoS 1 resent {dup_unflagged} messages without DUP"))
            }
            1 => Ok("QoS 1: none lost; every resend carried DUP".to_string()),
            _ if lost > 0 => Err(format!("QoS 2 lost {lost} of {N}")),
            _ if duplicated > 0 => Err(format!(
                "QoS 2 delivered {duplicated} duplicates to the application"
            )),
            _ => Ok("QoS 2: exactly once".to_string()),
        };
        match verdict {
            Ok(v) => verdicts.push(v),
            Err(e) => {
                tb.t()
                    .note(format!("QoS lab (20% of messages hit by a cut):\n{table}"));
                return Err(fail(P, format!("{e}\n{table}")));
            }
        }
    }
    tb.t().note(format!(
        "QoS lab, 20 % of messages hit by a link cut (seeded):\n{table}\
         handshake: from the broker's PUBLISH at the tap to the device's last acknowledgement \
         (PUBACK; PUBREC, PUBREL, PUBCOMP), mean per delivered message: QoS 1 {:.3} ms, QoS 2 {:.3} ms, {:.1}x \
         (QoS 0 has none); batch-s includes the runner's pacing (300 ms for each lost QoS 0 message) and the reconnects\n\
         the reference text's lab (20 % packet loss): delivered 80/100, 100/100, 100/100; \
         duplicates 0, ~4-6, 0; time 1.0x, 1.5x, 2.5x\n\
         why this differs: a cut here lands right after the broker's PUBLISH reached the device, \
         so every hit QoS 1 message is processed and its PUBACK lost (a duplicate each, not ~5 \
         in 100), and each hit costs a reconnect with backoff, which dominates the batch time; \
         the handshakes themselves show QoS 2's extra round trip",
        times[1],
        times[2],
        times[2] / times[1].max(1e-9)
    ));
    for v in verdicts {
        tb.t().runner(v);
    }
    Ok(())
}
