//! The step vocabulary scenarios share: wait for the device's CONNACK and
//! subscription, read its identity, publish a command and wait for it, read
//! a retained status. Each step fails naming the promise it serves.

use super::{Failure, Promise, Stop};
use crate::dut::{Dut, DutError};
use crate::testbed::{Dir, Packet, RigError, Testbed, WireEvent, WireLog, WireRecord};
use hil_broker::client::ClientError;
use hil_broker::Client;
use hil_session::Event;
use std::time::{Duration, Instant};

/// How long a device has for each awaited step.
pub const STEP: Duration = Duration::from_secs(15);

/// A device that did not do what was awaited broke `promise`; a console the
/// runner could not drive is the rig's fault.
pub fn on(promise: Promise) -> impl Fn(DutError) -> Stop {
    move |e| {
        if e.is_device_silence() {
            Stop::Fail(Failure {
                promise,
                detail: e.to_string(),
            })
        } else {
            Stop::Rig(RigError::Dut(e))
        }
    }
}

pub fn fail(promise: Promise, detail: impl Into<String>) -> Stop {
    Stop::Fail(Failure {
        promise,
        detail: detail.into(),
    })
}

/// A rig fault: the broker, the proxy, a cloud client, starting a device.
pub fn rig(e: impl Into<RigError>) -> Stop {
    Stop::Rig(e.into())
}

/// A cloud client that failed mid-scenario (publish, subscribe, receive).
pub fn cloud_err(name: &str) -> impl Fn(ClientError) -> Stop + '_ {
    move |source| {
        Stop::Rig(RigError::Cloud {
            name: name.into(),
            source,
        })
    }
}

/// The client ID a device reports when it boots.
pub fn device_id(dev: &mut Dut, promise: Promise) -> Result<String, Stop> {
    match dev
        .expect("`id` line", STEP, |e| matches!(e, Event::Id { .. }))
        .map_err(on(promise))?
    {
        Event::Id { client_id } => Ok(client_id),
        _ => unreachable!("matched above"),
    }
}

/// The device under test's client ID: the last it reported, or the next.
pub fn client_id(tb: &mut Testbed) -> Result<String, Stop> {
    if let Some(id) = tb.dut.seen.iter().rev().find_map(|e| match e {
        Event::Id { client_id } => Some(client_id.clone()),
        _ => None,
    }) {
        return Ok(id);
    }
    device_id(&mut tb.dut, Promise::StableClientId)
}

/// How long the wire may lag the console line that reports what crossed it.
const WIRE_LAG: Duration = Duration::from_secs(2);

/// The client IDs a device has reported (a device with random IDs reports several).
fn ids_of(dev: &Dut) -> Vec<String> {
    dev.seen
        .iter()
        .filter_map(|e| match e {
            Event::Id { client_id } => Some(client_id.clone()),
            _ => None,
        })
        .collect()
}

/// How many `pred` packets the wire shows broker -> device on connections
/// whose CONNECT carried one of `ids`.
fn on_wire(records: &[WireRecord], ids: &[String], pred: impl Fn(&Packet) -> bool) -> usize {
    let mut mine = std::collections::HashSet::new();
    let mut n = 0;
    for r in records {
        if let WireEvent::Packet { conn, dir, packet } = &r.event {
            match (dir, packet) {
                (Dir::Up, Packet::Connect { client_id, .. }) if ids.contains(client_id) => {
                    mine.insert(*conn);
                }
                (Dir::Down, p) if mine.contains(conn) && pred(p) => n += 1,
                _ => {}
            }
        }
    }
    n
}

/// A claim on the console must be on the wire: each of the device's reports
/// (`claimed` events so far) needs a matching packet from the broker.
fn confirm(
    dev: &Dut,
    wire: &WireLog,
    what: &str,
    claimed: impl Fn(&Event) -> bool,
    promise: Promise,
    pred: impl Fn(&Packet) -> bool,
) -> Result<(), Stop> {
    let claims = dev.seen.iter().filter(|e| claimed(e)).count();
    let ids = ids_of(dev);
    let deadline = Instant::now() + WIRE_LAG;
    loop {
        let records = wire.records();
        let n = on_wire(&records, &ids, &pred);
        if n >= claims {
            return Ok(());
        }
        // The tap may not have recorded it yet: wait for its next record.
        if !wire.wait_beyond(records.len(), deadline) {
            return Err(fail(
                promise,
                format!(
                    "the console reports {what} ({claims} so far), the wire shows {n} for {ids:?}"
                ),
            ));
        }
    }
}

/// The device's next CONNACK: its session_present (a refusal breaks
/// `promise`). The claim is cross-checked: the wire must show that CONNACK.
pub fn connack(dev: &mut Dut, wire: &WireLog, what: &str, promise: Promise) -> Result<bool, Stop> {
    let Event::MqttConnack {
        session_present,
        rc,
    } = dev
        .expect(what, STEP, |e| matches!(e, Event::MqttConnack { .. }))
        .map_err(on(promise))?
    else {
        unreachable!("matched above")
    };
    confirm(
        dev,
        wire,
        &format!("CONNACK session_present={}", session_present as u8),
        |e| matches!(e, Event::MqttConnack { .. }),
        promise,
        |p| matches!(p, Packet::Connack { .. }),
    )?;
    let consistent = on_wire(
        &wire.records(),
        &ids_of(dev),
        |p| matches!(p, Packet::Connack { session_present: sp, .. } if *sp == session_present),
    );
    if consistent == 0 {
        return Err(fail(
            promise,
            format!(
                "the console says session_present={}, no CONNACK on the wire says so",
                session_present as u8
            ),
        ));
    }
    if rc != 0 {
        return Err(fail(
            promise,
            format!("broker refused the connection, rc={rc}"),
        ));
    }
    Ok(session_present)
}

/// The device's next confirmed subscription; its granted QoS. The claim is
/// cross-checked: the wire must show the broker's SUBACK.
pub fn subscribed(dev: &mut Dut, wire: &WireLog) -> Result<u8, Stop> {
    subscribed_for(dev, wire, Promise::SubscribesToCommands)
}

/// [`subscribed`], failing `promise` when it does not happen.
pub fn subscribed_for(dev: &mut Dut, wire: &WireLog, promise: Promise) -> Result<u8, Stop> {
    let Event::MqttSubscribed { qos, .. } = dev
        .expect("subscription to its command topic", STEP, |e| {
            matches!(e, Event::MqttSubscribed { .. })
        })
        .map_err(on(promise))?
    else {
        unreachable!("matched above")
    };
    confirm(
        dev,
        wire,
        "a SUBACK",
        |e| matches!(e, Event::MqttSubscribed { .. }),
        promise,
        |p| matches!(p, Packet::Suback { codes, .. } if codes.contains(&qos)),
    )?;
    Ok(qos)
}

/// [`connack`] of the device under test.
pub fn dut_connack(tb: &mut Testbed, what: &str, promise: Promise) -> Result<bool, Stop> {
    let wire = tb.wire().clone();
    connack(&mut tb.dut, &wire, what, promise)
}

/// [`subscribed`] of the device under test.
pub fn dut_subscribed(tb: &mut Testbed) -> Result<u8, Stop> {
    let wire = tb.wire().clone();
    subscribed(&mut tb.dut, &wire)
}

/// A fresh device's client ID and its first CONNACK's session_present.
pub fn online(dev: &mut Dut, wire: &WireLog, promise: Promise) -> Result<(String, bool), Stop> {
    let id = device_id(dev, promise)?;
    let sp = connack(dev, wire, "CONNACK", promise)?;
    Ok((id, sp))
}

/// The command ids the device executed, in order.
pub fn executed(dut: &Dut) -> Vec<String> {
    dut.seen
        .iter()
        .filter_map(|e| match e {
            Event::Cmd { id, .. } => Some(id.clone()),
            _ => None,
        })
        .collect()
}

/// The QoS and DUP of the execution of command `want`.
pub fn cmd_of(e: &Event, want: &str) -> Option<(u8, bool)> {
    match e {
        Event::Cmd { id, qos, dup, .. } if id == want => Some((*qos, *dup)),
        _ => None,
    }
}

/// Whether the device has executed command `id` so far.
pub fn ran(dut: &Dut, id: &str) -> bool {
    dut.seen.iter().any(|e| cmd_of(e, id).is_some())
}

/// A command's payload: `{"id":"<id>"}`.
pub fn command(id: &str) -> String {
    format!("{{\"id\":\"{id}\"}}")
}

/// Waits until the device executes command `id`.
pub fn await_command(dev: &mut Dut, what: &str, id: &str, promise: Promise) -> Result<(), Stop> {
    dev.expect(what, STEP, |e| cmd_of(e, id).is_some())
        .map_err(on(promise))?;
    Ok(())
}

/// Publishes a sentinel command and waits until the device executes it: every
/// earlier delivery (or redelivery) has shown up by then.
pub fn sentinel(
    tb: &mut Testbed,
    cloud: &mut Client,
    topic: &str,
    promise: Promise,
) -> Result<String, Stop> {
    let id = format!("sentinel-{}", tb.nonce());
    cloud
        .publish(topic, command(&id).as_bytes(), 1, false)
        .map_err(cloud_err("cloud"))?;
    tb.t().cloud("publish sentinel qos=1");
    await_command(&mut tb.dut, "the sentinel command", &id, promise)?;
    Ok(id)
}

/// The `seq` of a telemetry payload.
pub fn telemetry_seq(text: &str) -> Option<u32> {
    json_u32(text, "seq")
}

/// A non-negative integer field of a flat JSON payload.
pub fn json_u32(text: &str, field: &str) -> Option<u32> {
    let rest = text.split(&format!("\"{field}\":")).nth(1)?;
    rest.chars()
        .take_while(|c| c.is_ascii_digit())
        .collect::<String>()
        .parse()
        .ok()
}

/// Waits for `want` on the status topic; false at the deadline.
pub fn status(cloud: &mut Client, topic: &str, want: &str, within: Duration) -> Result<bool, Stop> {
    let deadline = Instant::now() + within;
    let got = cloud
        .recv_matching(deadline, |m| m.topic == topic && m.text() == want)
        .map_err(cloud_err("status subscriber"))?;
    Ok(got.is_some())
}

/// A cloud client on the device's status topic, once it has seen the
/// retained `online` of the connected device; and the topic.
pub fn watch_status(
    tb: &Testbed,
    id: &str,
    name: &str,
    promise: Promise,
) -> Result<(Client, String), Stop> {
    let topic = tb.topics(id).status();
    let mut cloud = tb.cloud(name)?;
    cloud.subscribe(&topic, 1).map_err(cloud_err(name))?;
    if !status(&mut cloud, &topic, "online", STEP)? {
        return Err(fail(promise, "no retained `online` status while connected"));
    }
    tb.t().cloud("status online (retained)");
    Ok((cloud, topic))
}

/// A new subscriber to the status topic must be told `online` (retained).
pub fn retained_online(
    tb: &Testbed,
    topic: &str,
    name: &str,
    promise: Promise,
) -> Result<(), Stop> {
    let mut late = tb.observer(name)?;
    late.subscribe(topic, 1).map_err(cloud_err(name))?;
    match late.recv(Instant::now() + STEP).map_err(cloud_err(name))? {
        Some(m) if m.retain && m.text() == "online" => {
            tb.t().cloud("retained status for a new subscriber: online");
            Ok(())
        }
        other => Err(fail(
            promise,
            format!(
                "retained status for a new subscriber: {:?}",
                other.map(|m| m.text())
            ),
        )),
    }
}

/// A QoS 1 publish from a cloud client that, like a real backend, reconnects
/// when the broker drops its connection and publishes again. A dropped cloud
/// connection says nothing of the device, so the scenario goes on, and the
/// transcript keeps what the broker logged. (rumqttd 0.20 dropped the storm's
/// cloud client once: the id-reuse bug described at `Client::disconnect`,
/// now avoided by the readiness probe.) A resend is safe: the device dedupes
/// commands by id, and QoS 1 allows duplicates anyway.
pub fn publish_reconnecting(
    tb: &Testbed,
    cloud: &mut Client,
    name: &str,
    topic: &str,
    payload: &[u8],
) -> Result<(), Stop> {
    const ATTEMPTS: usize = 3;
    let mut attempt = 1;
    loop {
        match cloud.publish(topic, payload, 1, false) {
            Ok(()) => return Ok(()),
            Err(ClientError::Closed) if attempt < ATTEMPTS => {
                tb.t().note(format!(
                    "the broker closed {name}'s connection (publish to {topic}); it reconnects and publishes again. Broker log, last lines:\n{}",
                    tb.broker_log(5)
                ));
                cloud.reconnect().map_err(cloud_err(name))?;
                attempt += 1;
            }
            Err(e) => return Err(cloud_err(name)(e)),
        }
    }
}

/// `!wifi off`, and then the wire must show the connection closed on the
/// broker's side too. Only after both is the device offline as
/// the broker sees it; a message published before that may still go to the
/// dying connection, and what happens to it then depends on timing.
pub fn wifi_off(tb: &mut Testbed, promise: Promise) -> Result<(), Stop> {
    let conn = tb.wire().last_connection();
    tb.dut.command("!wifi off").map_err(on(promise))?;
    offline_at_broker(tb, conn, "Wi-Fi off")
}

/// The device's power cut (kill -9), and then, as for [`wifi_off`], the
/// wire must show its connection closed on the broker's side too: a command
/// published before that may go to the dying connection (and be redelivered
/// on the next one), which is timing, not what a scenario of a sleeping
/// device is about.
pub fn power_cut(tb: &mut Testbed) -> Result<(), Stop> {
    let conn = tb.wire().last_connection();
    tb.dut.power_off().map_err(rig)?;
    offline_at_broker(tb, conn, "the power cut")
}

/// Waits until connection `conn`, which the device has just left (`what`),
/// is closed on the broker's side too.
fn offline_at_broker(tb: &mut Testbed, conn: Option<u32>, what: &str) -> Result<(), Stop> {
    let Some(conn) = conn else { return Ok(()) };
    let closed = |by: Dir| {
        move |r: &WireRecord| {
            matches!(r.event, WireEvent::Closed { conn: c, by: b } if c == conn && b == by)
                || matches!(r.event, WireEvent::Cut { conn: c } if c == conn)
        }
    };
    // A sim resets its socket; a board whose radio went off sends nothing at
    // all, and its connection only goes silent. Then the proxy closes it, as
    // the lost network would in time: the scenario needs the broker to know.
    let quick = Instant::now() + Duration::from_secs(2);
    if tb.wire().wait_for(quick, closed(Dir::Up)).is_none() {
        // A note, not a runner step: whether it is needed is timing.
        tb.t().note(format!(
            "connection #{conn} silent since {what}: the proxy closes it"
        ));
        tb.link().cut();
    }
    // The proxy passes the device's close on as a FIN; a broker may keep its
    // half open until it next writes (rumqttd 0.20 does). Where a real reset
    // would end it at once, the proxy resets it.
    let quick = Instant::now() + Duration::from_secs(2);
    if tb.wire().wait_for(quick, closed(Dir::Down)).is_none() {
        // A note, not a runner step: whether it is needed is timing.
        tb.t().note(format!(
            "connection #{conn} half open at the broker after the device closed it: the proxy resets it"
        ));
        tb.link().cut();
    }
    let deadline = Instant::now() + STEP;
    if tb.wire().wait_for(deadline, closed(Dir::Down)).is_none() {
        return Err(rig(RigError::BrokerBehaviour(format!(
            "connection #{conn} did not end at the broker, even after the proxy reset it"
        ))));
    }
    Ok(())
}

/// The keep-alive the device's last CONNECT declared, which must let a dead
/// link (`what`) be noticed within `budget` (1.5 x keep-alive): the budget is
/// the scenario's, not the device's, or a device declaring a long keep-alive
/// would be blind for 1.5 times that.
pub fn keepalive_within(
    tb: &Testbed,
    budget: Duration,
    what: &str,
    promise: Promise,
) -> Result<Duration, Stop> {
    let declared = tb
        .wire()
        .packets(Dir::Up)
        .iter()
        .rev()
        .find_map(|p| match p {
            Packet::Connect { keepalive, .. } => Some(*keepalive),
            _ => None,
        })
        .ok_or_else(|| fail(promise, "no CONNECT on the wire"))?;
    let ka = Duration::from_secs(declared as u64);
    if declared == 0 || ka * 3 / 2 > budget {
        return Err(fail(
            promise,
            format!(
                "the device declares keep-alive {declared} s: {what} would go unnoticed for {:.1} s, over the {:.1} s budget",
                (ka * 3 / 2).as_secs_f32(),
                budget.as_secs_f32()
            ),
        ));
    }
    Ok(ka)
}

/// Retries whose waits (from the wire) are `class` must be exponential with
/// jitter: exponential without it fails the jitter promise (a fleet would
/// retry in lockstep), anything else the capped-backoff promise.
pub fn jittered_backoff(class: super::schedule::Schedule, waits: &[u64]) -> Result<(), Stop> {
    use super::schedule::Schedule;
    match class {
        Schedule::ExponentialWithJitter => Ok(()),
        Schedule::Exponential => Err(fail(
            Promise::Jitter,
            format!("the retries are {class}: {waits:?} ms; a fleet would retry in lockstep"),
        )),
        _ => Err(fail(
            Promise::CappedBackoff,
            format!("the retries are {class}, not exponential with jitter: {waits:?} ms"),
        )),
    }
}
