//! The firmware's application, chip-independent (no_std + alloc, async):
//! the session logic of `hil-session` driven by the main loop, which
//! selects over the console, the broker connection and the session's
//! timers; the console protocol's glue; the broker connection over
//! embassy-net (plain TCP, or TLS with the `tls` feature); the flash store
//! on sequential-storage over any async NOR flash; the settings kept in it.
//!
//! What differs between a chip and the host is behind [`Platform`]: the
//! console's bytes, the radio (Wi-Fi on the ESP32-C3: a link that goes up
//! and down on `!wifi on/off`), the reset, and a true random source for
//! TLS. A shell (firmware/src for the ESP32-C3) sets up the hardware, the
//! network stack and its driver, and calls [`main`]. Zephyr's `native_sim`
//! is the model: the real application, only the hardware layer swapped.
#![no_std]
#![allow(async_fn_in_trait)] // one executor, one task: no Send bounds needed

extern crate alloc;

pub mod link;
pub mod settings;
pub mod store;
#[cfg(feature = "tls")]
pub mod tls;

use core::cell::RefCell;
use core::ops::Range;
use embassy_futures::select::{select, select4, Either, Either4};
use embassy_net::tcp::TcpSocket;
use embassy_net::{IpEndpoint, Stack};
use embassy_time::{Duration, Instant, Timer};
use embedded_storage_async::nor_flash::NorFlash;
use hil_session::console::{Command, LineSplitter};
use hil_session::{Config, Device, Event, LinkDownReason, Mac, Output, RandomSource};
use settings::WifiCreds;
use static_cell::StaticCell;

/// The console: bytes in, lines out (the `@hil` protocol).
pub trait Console {
    /// Some bytes from the host (0 when there were none to read).
    async fn read(&mut self, buf: &mut [u8]) -> usize;
    /// One line, with its line ending.
    async fn write_line(&mut self, line: &str);
}

/// The link layer's switch: Wi-Fi on the chip.
pub trait Radio {
    fn set_credentials(&mut self, creds: Option<WifiCreds>);
    /// Bring the link up (associate) or down.
    fn request(&mut self, on: bool);
    /// Resolves when the link goes up (true) or down (false).
    async fn state_changed(&mut self) -> bool;
}

/// Everything the application needs of the hardware besides the network
/// stack and the flash.
pub trait Platform {
    type Console: Console;
    type Radio: Radio;
    #[cfg(feature = "tls")]
    type TlsRng: embedded_tls::CryptoRngCore;

    /// The chip's name, the client ID's first part (`esp32c3`).
    const CHIP: &'static str;

    /// Both at once: the main loop waits on each.
    fn console_and_radio(&mut self) -> (&mut Self::Console, &mut Self::Radio);

    /// A software reset.
    fn reboot(&mut self) -> !;

    /// A cryptographic random source for TLS keys, if the chip has one.
    #[cfg(feature = "tls")]
    fn tls_rng(&mut self) -> Option<&mut Self::TlsRng>;

    async fn console_line(&mut self, line: &str) {
        self.console_and_radio().0.write_line(line).await
    }
    fn radio_request(&mut self, on: bool) {
        self.console_and_radio().1.request(on)
    }
    fn radio_credentials(&mut self, creds: Option<WifiCreds>) {
        self.console_and_radio().1.set_credentials(creds)
    }
}

fn now_ms() -> u64 {
    Instant::now().as_millis()
}

/// Boots the session from the flash in `range` of `flash` and runs it
/// forever. `mac`: the factory MAC; `rng`: the jitter's random source;
/// `stack`: the network stack on the platform's interface (its runner
/// already spawned).
pub async fn main<P: Platform, F: NorFlash, G: RandomSource>(
    mut p: P,
    flash: F,
    range: Range<u32>,
    mac: [u8; 6],
    rng: G,
    stack: Stack<'static>,
) -> ! {
    let mut store = store::Store::new(flash, range);
    let mut settings = store.load_settings().await;
    let mac = match Mac::new(mac) {
        Ok(m) => m,
        Err(e) => {
            // No identity, no session: say why and stay on the console.
            let line = Event::error("identity", e).format();
            loop {
                p.console_line(&line).await;
                Timer::after(Duration::from_secs(5)).await;
            }
        }
    };
    let mut cfg = Config::new(P::CHIP, mac);
    cfg.mqtt = settings.mqtt;
    let t = settings.tuning;
    cfg.keepalive_s = t.keepalive_s;
    cfg.session_expiry_s = t.session_expiry_s;
    cfg.backoff_base_ms = t.backoff_base_ms.into();
    cfg.backoff_cap_ms = t.backoff_cap_ms.max(t.backoff_base_ms).into();
    cfg.connack_timeout_ms = t.connack_timeout_ms.into();
    cfg.ack_timeout_ms = t.ack_timeout_ms.into();
    cfg.cmd_qos = t.cmd_qos;
    #[cfg(feature = "ingest-topic")]
    {
        cfg.telemetry_topic = settings.telemetry_topic.clone();
    }
    #[cfg(feature = "controls")]
    {
        cfg.bugs = settings
            .bugs
            .iter()
            .fold(hil_session::Bugs::default(), |b, bug| b.with(*bug));
    }
    #[cfg(feature = "tls")]
    {
        cfg.credentials = settings
            .login
            .as_ref()
            .map(|(user, pass)| hil_session::Credentials {
                username: user.clone(),
                password: hil_session::Secret::new(pass.clone()),
            });
    }
    cfg.outbox_capacity = t.outbox.into();
    let (records, corrupt) = store.load_records().await;
    let mut device = Device::boot(cfg, rng, records);
    // Where each setting came from: the firmware has no flags, only flash
    // (`!config`) and its defaults.
    let broker = match settings.broker {
        Some((ip, port)) => (alloc::format!("{ip}:{port}"), "flash"),
        None => ("none".into(), "default"),
    };
    // TLS: whether a CA is provisioned and for what name; never a secret.
    #[cfg(feature = "tls")]
    let tls_state = match (&settings.ca, &settings.tls_name) {
        (Some(ca), Some(name)) => alloc::format!(
            "on ca={} bytes name={name}{}",
            ca.len(),
            if settings.client.is_some() {
                " client-cert=yes"
            } else {
                ""
            }
        ),
        _ => "required (no CA or name: connections refused)".into(),
    };
    for (setting, value, source) in [
        ("broker", broker.0, broker.1),
        ("mqtt", alloc::format!("{}", settings.mqtt), "flash"),
        #[cfg(feature = "tls")]
        ("tls", tls_state, "flash"),
    ] {
        let line = Event::Config {
            setting: setting.into(),
            value,
            source: source.into(),
        };
        p.console_line(&line.format()).await;
    }
    for (key, kept) in corrupt {
        p.console_line(
            &Event::error(
                "flash",
                alloc::format!("record {key} unreadable ({kept}), starting it empty"),
            )
            .format(),
        )
        .await;
    }
    p.radio_credentials(settings.wifi.clone());
    p.radio_request(settings.wifi.is_some());
    if settings.wifi.is_none() {
        p.console_line(
            &Event::error(
                "config",
                "no Wi-Fi credentials: send !config wifi.ssid=... wifi.pass=... broker=HOST:PORT",
            )
            .format(),
        )
        .await;
    }
    run(&mut device, stack, &mut p, &mut store, &mut settings).await
}

/// What the link layer has to say.
enum LinkNews {
    /// The radio went up (associated) or down.
    Radio(bool),
    /// DHCP gave an address.
    Address,
}

async fn run<G: RandomSource, P: Platform, F: NorFlash>(
    device: &mut Device<G>,
    stack: Stack<'static>,
    p: &mut P,
    store: &mut store::Store<F>,
    settings: &mut settings::Settings,
) -> ! {
    static SOCKET_BUFFERS: StaticCell<[u8; 4096]> = StaticCell::new();
    static SOCKET: StaticCell<RefCell<TcpSocket<'static>>> = StaticCell::new();
    let (sock_rx, sock_tx) = SOCKET_BUFFERS.init([0; 4096]).split_at_mut(2048);
    let socket = SOCKET.init(RefCell::new(TcpSocket::new(stack, sock_rx, sock_tx)));
    let mut link = link::Link::new(socket);
    let mut connected = false;
    let mut awaiting_address = false;
    let mut splitter = LineSplitter::default();
    let mut cbuf = [0u8; 256];
    let mut nbuf = [0u8; 1024];
    loop {
        while let Some(out) = device.poll_output() {
            match out {
                Output::Console(e) => p.console_line(&e.format()).await,
                Output::Persist(r) => {
                    if let Err(e) = store.save(&r).await {
                        p.console_line(&Event::error("flash", e).format()).await;
                    }
                }
                Output::Transmit(bytes) => {
                    if connected {
                        if let Err(e) = link.write_all(&bytes).await {
                            connected = false;
                            link.close(true).await;
                            device.handle_link_down(now_ms(), LinkDownReason::Error(e));
                        }
                    }
                }
                Output::Open => {
                    let result = match settings.broker {
                        None => Err(alloc::string::String::from(
                            "no broker configured (!config broker=HOST:PORT)",
                        )),
                        Some(_) if !stack.is_config_up() => Err("no IP address yet".into()),
                        Some((ip, port)) => {
                            let ep = IpEndpoint::new(embassy_net::IpAddress::Ipv4(ip), port);
                            let timeout = Duration::from_secs(settings.tuning.keepalive_s as u64 * 2);
                            link.close(true).await;
                            #[cfg(not(feature = "tls"))]
                            let r = link.connect(ep, timeout).await;
                            // A TLS device connects only with a CA and a name,
                            // and never in plaintext.
                            #[cfg(feature = "tls")]
                            let r = match (&settings.ca, &settings.tls_name, p.tls_rng()) {
                                (Some(ca), Some(name), Some(rng)) => {
                                    let client = settings.client.as_ref().map(|(cert, key)| {
                                        tls::Identity { cert, key }
                                    });
                                    match link.connect(ep, timeout).await {
                                        Ok(()) => link.handshake(ca, name, client, rng).await,
                                        Err(e) => Err(e),
                                    }
                                }
                                (_, _, None) => Err("tls: no true random source".into()),
                                _ => Err(
                                    "production device: no CA or name provisioned (!config ca=... tls.name=...), plaintext MQTT refused"
                                        .into(),
                                ),
                            };
                            r
                        }
                    };
                    match result {
                        Ok(()) => {
                            connected = true;
                            device.handle_link_up(now_ms());
                        }
                        Err(e) => device.handle_link_down(now_ms(), LinkDownReason::Refused(e)),
                    }
                }
                Output::Close { abrupt } => {
                    connected = false;
                    link.close(abrupt).await;
                }
                Output::Wifi(on) => p.radio_request(on),
                Output::Reboot => {
                    Timer::after(Duration::from_millis(50)).await; // let the ack drain
                    p.reboot();
                }
                Output::Config(fields) => {
                    let reply = settings.apply(&fields);
                    match reply {
                        Ok(changed) => {
                            store.save_settings(settings).await;
                            p.radio_credentials(settings.wifi.clone());
                            if changed.wifi {
                                p.radio_request(true);
                            }
                            // Keys only: secrets are never echoed.
                            let keys: alloc::vec::Vec<(
                                alloc::string::String,
                                alloc::string::String,
                            )> = fields
                                .iter()
                                .map(|(k, _)| (k.clone(), "set".into()))
                                .collect();
                            p.console_line(&Event::Ack {
                                    cmd: "config".into(),
                                    fields: keys,
                                }
                                .format(),
                            )
                            .await;
                        }
                        Err(e) => p.console_line(&Event::error("config", e).format()).await,
                    }
                }
            }
        }
        let deadline = device
            .poll_wake()
            .map(embassy_time::Instant::from_millis)
            .unwrap_or(Instant::now() + Duration::from_secs(3600));
        let net_read = async {
            if connected {
                link.read(&mut nbuf).await
            } else {
                core::future::pending().await
            }
        };
        let (console, radio) = p.console_and_radio();
        // The link's news: the radio going up or down, or, once it is up,
        // DHCP's address. Waited on here, never inside a branch: a link up
        // without an address must not stop the console and the timers.
        let link_news = async {
            if awaiting_address {
                match select(radio.state_changed(), stack.wait_config_up()).await {
                    Either::First(up) => LinkNews::Radio(up),
                    Either::Second(()) => LinkNews::Address,
                }
            } else {
                LinkNews::Radio(radio.state_changed().await)
            }
        };
        match select4(
            console.read(&mut cbuf),
            net_read,
            Timer::at(deadline),
            link_news,
        )
        .await
        {
            Either4::First(n) => {
                let t = now_ms();
                let mut lines = alloc::vec::Vec::new();
                splitter.feed(&cbuf[..n], &mut |l| lines.push(l));
                for line in lines {
                    // Wi-Fi is the radio's business here: the session hears the
                    // real state from the Wi-Fi task, the host gets its ack now.
                    if let Ok(Ok(Command::Wifi(on))) = line.as_ref().map(|l| Command::parse(l)) {
                        p.radio_request(on);
                        if !on {
                            device.handle_wifi(t, false);
                        }
                        let state = if on { "on" } else { "off" };
                        p.console_line(&Event::Ack {
                                cmd: "wifi".into(),
                                fields: alloc::vec![("state".into(), state.into())],
                            }
                            .format(),
                        )
                        .await;
                        continue;
                    }
                    device.handle_console_line(t, line);
                }
            }
            Either4::Second(Ok(0)) => {
                connected = false;
                device.handle_link_down(now_ms(), LinkDownReason::Closed);
            }
            Either4::Second(Ok(n)) => device.handle_bytes(now_ms(), &nbuf[..n]),
            Either4::Second(Err(e)) => {
                connected = false;
                link.close(true).await;
                device.handle_link_down(now_ms(), LinkDownReason::Error(e));
            }
            Either4::Third(()) => device.handle_timeout(now_ms()),
            // Associated: the session is told once DHCP gave an address.
            Either4::Fourth(LinkNews::Radio(true)) if !stack.is_config_up() => {
                awaiting_address = true;
            }
            Either4::Fourth(LinkNews::Radio(true)) | Either4::Fourth(LinkNews::Address) => {
                awaiting_address = false;
                device.handle_wifi(now_ms(), true);
            }
            Either4::Fourth(LinkNews::Radio(false)) => {
                awaiting_address = false;
                if connected {
                    connected = false;
                    link.close(true).await;
                }
                device.handle_wifi(now_ms(), false);
            }
        }
    }
}
