//! Test brokers for the runner, behind one interface:
//!
//! - `rumqttd`: embedded rumqttd (the default). rumqttd has no shutdown API and
//!   a second broker on a taken port fails silently, so it runs as a child
//!   process of a binary of ours (`hil broker serve`, or any program that calls
//!   [`rumqttd::serve`]); restart is a real process restart on the same port.
//! - `mosquitto`: Debian's mosquitto from PATH, with a config we write
//!   (persistence on or off).
//! - external: an address, and an optional shell command that restarts it.
//!
//! A broker that listens for MQTT over TLS only (mosquitto given a
//! [`ListenerTls`], an external `mqtts://` one) is reached through a
//! [`TlsOrigin`]: [`Broker::addr`] is then the origin's plaintext port.
//!
//! Readiness is proven by a real CONNECT/CONNACK, never by a sleep.

pub mod check;
pub mod client;
pub mod origin;
mod process;
pub mod rumqttd;

pub use client::{Client, ClientError, Received};
pub use origin::{TlsOrigin, UpstreamTls};
pub use process::{
    Broker, BrokerError, BrokerSpec, ListenerTls, Restart, SessionsOnRestart, Tuning,
};

use std::net::{IpAddr, SocketAddr, TcpListener};

/// The exit code of `hil broker serve` when its port is taken: the parent
/// starts it again on fresh ports (a typed signal, not a log to grep).
pub const EXIT_PORT_TAKEN: i32 = 98;

/// A free TCP port on `ip` (the kernel's pick; released before returning, so
/// the caller binds it next).
/// Two different free ports of `ip`: both are held while the second is
/// picked (two `free_port` calls in a row may return the same port, and a
/// broker given it twice binds one listener and answers MQTT 5 on 3.1.1).
pub fn free_port_pair(ip: std::net::IpAddr) -> std::io::Result<(u16, u16)> {
    let a = TcpListener::bind(SocketAddr::new(ip, 0))?;
    let b = TcpListener::bind(SocketAddr::new(ip, 0))?;
    Ok((a.local_addr()?.port(), b.local_addr()?.port()))
}

pub fn free_port(ip: std::net::IpAddr) -> std::io::Result<u16> {
    let l = TcpListener::bind(SocketAddr::new(ip, 0))?;
    Ok(l.local_addr()?.port())
}

/// A loopback address of its own (127.a.b.c) for one broker and its proxy.
///
/// Why: a port picked with [`free_port`] is free only until someone else binds
/// it, and parallel test processes bind ports all the time. On 127.0.0.1 that
/// race was measured here (about one start in 30 of two in-thread rumqttd
/// tests in parallel): rumqttd only logs a taken port and runs without that
/// listener, so clients reached another test's broker, which then closed them.
/// And a port freed by a `kill -9` must still be ours when the broker starts
/// again. On an address nobody else uses, both hold. Linux routes all of
/// 127.0.0.0/8 to `lo`; where only 127.0.0.1 is usable (macOS without
/// aliases), that is returned.
pub fn private_loopback() -> IpAddr {
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0);
    // SplitMix64 finaliser over pid, a per-process counter and the clock.
    let mut h = (u64::from(std::process::id()) << 32)
        ^ N.fetch_add(1, Ordering::Relaxed)
            .wrapping_mul(0x9e37_79b9_7f4a_7c15)
        ^ nanos;
    h = (h ^ (h >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    h = (h ^ (h >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    h ^= h >> 31;
    // a in 1..=254 keeps clear of 127.0.0.x, c in 1..=254 of .0 and .255.
    let ip = IpAddr::V4(std::net::Ipv4Addr::new(
        127,
        1 + (h % 254) as u8,
        (h >> 8) as u8,
        1 + ((h >> 16) % 254) as u8,
    ));
    match TcpListener::bind(SocketAddr::new(ip, 0)) {
        Ok(_) => ip,
        Err(_) => IpAddr::V4(std::net::Ipv4Addr::LOCALHOST),
    }
}

/// Which MQTT version a client speaks (rumqttd listens on one port per
/// version): the workspace's one version type, from the packet codec.
pub use hil_packets::MqttVersion;
