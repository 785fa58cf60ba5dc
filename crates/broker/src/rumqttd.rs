//! rumqttd, configured small: tiny segments (the defaults cost ~288 MB RSS)
//! and one listener per protocol version.

use std::collections::HashMap;
use std::net::SocketAddr;

/// A config for a v4 (3.1.1) listener on `v4` and a v5 listener on `v5`.
pub fn config(v4: SocketAddr, v5: SocketAddr) -> rumqttd::Config {
    config_for(v4, v5, DEFAULT_MAX_CONNECTIONS, None)
}

/// rumqttd's TLS listeners (rustls): its certificate chain and key, and
/// the CA a client's certificate must chain to. rumqttd is built with
/// `verify-client-cert`, so it requires one (mutual TLS), as the runner's
/// mosquitto listener does.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServeTls {
    pub cert: std::path::PathBuf,
    pub key: std::path::PathBuf,
    pub ca: std::path::PathBuf,
}

/// Connections rumqttd admits unless told otherwise: plenty for a scenario
/// and its 50-device fleet; `hil fleet` asks for more.
pub const DEFAULT_MAX_CONNECTIONS: usize = 1024;

/// [`config`] admitting `max_connections` clients.
pub fn config_for(
    v4: SocketAddr,
    v5: SocketAddr,
    max_connections: usize,
    tls: Option<&ServeTls>,
) -> rumqttd::Config {
    let tls = tls.map(|t| rumqttd::TlsConfig::Rustls {
        capath: Some(t.ca.display().to_string()),
        certpath: t.cert.display().to_string(),
        keypath: t.key.display().to_string(),
    });
    // Beyond a scenario's needs, accept as fast as it can: rumqttd's pause
    // between accepts (1 ms) would bound a 10,000-device fleet to 1,000
    // connections a second before anything else does.
    let accept_delay_ms = if max_connections > DEFAULT_MAX_CONNECTIONS {
        0
    } else {
        1
    };
    let connections = rumqttd::ConnectionSettings {
        connection_timeout_ms: 10_000,
        max_payload_size: 256 * 1024,
        max_inflight_count: 100,
        auth: None,
        external_auth: None,
        dynamic_filters: true,
    };
    let server = |name: &str, listen| rumqttd::ServerSettings {
        name: name.into(),
        listen,
        tls: tls.clone(),
        next_connection_delay_ms: accept_delay_ms,
        connections: connections.clone(),
    };
    rumqttd::Config {
        id: 0,
        router: rumqttd::RouterConfig {
            max_connections,
            max_outgoing_packet_count: 200,
            max_segment_size: 64 * 1024,
            max_segment_count: 4,
            custom_segment: None,
            initialized_filters: None,
            shared_subscriptions_strategy: Default::default(),
        },
        v4: Some(HashMap::from([("1".to_string(), server("v4", v4))])),
        v5: Some(HashMap::from([("1".to_string(), server("v5", v5))])),
        ws: None,
        cluster: None,
        console: None,
        bridge: None,
        prometheus: None,
        metrics: None,
    }
}

/// Runs rumqttd in this process until the process ends (rumqttd cannot be
/// stopped). Checks first that both ports are free, because rumqttd itself
/// only logs a taken port and keeps running without a listener.
pub fn serve(
    v4: SocketAddr,
    v5: SocketAddr,
    max_connections: usize,
    tls: Option<&ServeTls>,
) -> Result<(), ServeError> {
    listen_check(v4, v5)?;
    if let Some(t) = tls {
        // rumqttd only logs a TLS file it cannot read, and serves nothing.
        for f in [&t.cert, &t.key, &t.ca] {
            std::fs::metadata(f).map_err(|source| ServeError::TlsFile {
                path: f.clone(),
                source,
            })?;
        }
    }
    let mut broker = rumqttd::Broker::new(config_for(v4, v5, max_connections, tls));
    broker
        .start()
        .map_err(|e| ServeError::Stopped(e.to_string()))
}

/// Why embedded rumqttd could not serve.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    /// The caller exits with [`crate::EXIT_PORT_TAKEN`], so a parent can
    /// retry on fresh ports without reading the message.
    #[error("cannot listen on {addr}: {source} (is another broker running there?)")]
    PortTaken {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("rumqttd stopped: {0}")]
    Stopped(String),
    #[error("TLS: cannot read {path}: {source}")]
    TlsFile {
        path: std::path::PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    NotReady(#[from] crate::ClientError),
}

fn listen_check(v4: SocketAddr, v5: SocketAddr) -> Result<(), ServeError> {
    for addr in [v4, v5] {
        std::net::TcpListener::bind(addr)
            .map_err(|source| ServeError::PortTaken { addr, source })?;
    }
    Ok(())
}

/// Starts rumqttd on a thread of this process (for tests: it lives as long as
/// the test process) and waits until it answers CONNECT.
pub fn spawn_in_thread(v4: SocketAddr, v5: SocketAddr) -> Result<(), ServeError> {
    listen_check(v4, v5)?;
    std::thread::spawn(move || {
        let mut broker = rumqttd::Broker::new(config(v4, v5));
        let _ = broker.start();
    });
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    crate::client::wait_ready(v4, crate::MqttVersion::V3_1_1, deadline)?;
    crate::client::wait_ready(v5, crate::MqttVersion::V5, deadline)?;
    Ok(())
}
