//! ESP32-C3 firmware: the session logic of `hil-session` on real hardware.
//!
//! Hardware setup lives here and only here (the esp-hal `hil-test` shape);
//! the behaviour is `hil_session::Device`, the same code the host sim runs.
//! - console: USB-Serial-JTAG (or UART0 with the `uart-console` feature), the
//!   same `@hil` / `!command` protocol as the sim;
//! - identity: the factory eFuse MAC;
//! - flash: records and settings in the `nvs` range through sequential-storage
//!   (wear-levelled key-value map);
//! - Wi-Fi: `!wifi off` drops the controller (the radio is deinitialised),
//!   `!wifi on` brings it back; credentials come from `!config`.
#![no_std]
#![no_main]

extern crate alloc;

mod link;
mod settings;
mod store;
#[cfg(feature = "tls")]
mod tls;
mod wifi;

use core::cell::RefCell;
use embassy_executor::Spawner;
use embassy_futures::select::{select4, Either4};
use embassy_net::tcp::TcpSocket;
use embassy_net::{IpEndpoint, Runner, Stack, StackResources};
use embassy_time::{Duration, Instant, Timer};
use embedded_io_async::Write;
use esp_backtrace as _;
use esp_hal::efuse::{interface_mac_address, InterfaceMacAddress};
use esp_hal::rng::Rng;
use esp_hal::timer::timg::TimerGroup;
use hil_session::console::{Command, LineSplitter};
use hil_session::{Config, Device, Event, LinkDownReason, Mac, Output, RandomSource};
use static_cell::StaticCell;

esp_bootloader_esp_idf::esp_app_desc!();

/// The chip's hardware RNG as the session's jitter source.
struct HwRng(Rng);
impl RandomSource for HwRng {
    fn next_u32(&mut self) -> u32 {
        self.0.random()
    }
}

#[cfg(not(feature = "uart-console"))]
type ConsoleRx = esp_hal::usb::usb_serial_jtag::UsbSerialJtagRx<'static, esp_hal::Async>;
#[cfg(not(feature = "uart-console"))]
type ConsoleTx = esp_hal::usb::usb_serial_jtag::UsbSerialJtagTx<'static, esp_hal::Async>;
#[cfg(feature = "uart-console")]
type ConsoleRx = esp_hal::uart::UartRx<'static, esp_hal::Async>;
#[cfg(feature = "uart-console")]
type ConsoleTx = esp_hal::uart::UartTx<'static, esp_hal::Async>;

#[embassy_executor::task]
async fn net_task(mut runner: Runner<'static, esp_radio::wifi::Interface>) {
    runner.run().await
}

async fn println(tx: &mut ConsoleTx, line: &str) {
    let _ = tx.write_all(line.as_bytes()).await;
    let _ = tx.write_all(b"\r\n").await;
    // By path: UART's inherent blocking `flush` (a Result, not a future)
    // shadows the async trait method under `uart-console`.
    let _ = embedded_io_async::Write::flush(tx).await;
}

fn now_ms() -> u64 {
    Instant::now().as_millis()
}

#[esp_rtos::main]
async fn main(spawner: Spawner) {
    let peripherals = esp_hal::init(esp_hal::Config::default());
    esp_alloc::heap_allocator!(#[esp_hal::ram(reclaimed)] size: 64 * 1024);
    esp_alloc::heap_allocator!(size: 48 * 1024);

    let timg0 = TimerGroup::new(peripherals.TIMG0);
    esp_rtos::start(timg0.timer0, peripherals.FROM_CPU_INTR0);

    #[cfg(not(feature = "uart-console"))]
    let (mut rx, mut tx): (ConsoleRx, ConsoleTx) =
        esp_hal::usb::usb_serial_jtag::UsbSerialJtag::new(peripherals.USB_DEVICE)
            .into_async()
            .split();
    #[cfg(feature = "uart-console")]
    let (mut rx, mut tx): (ConsoleRx, ConsoleTx) = esp_hal::uart::Uart::new(
        peripherals.UART0,
        esp_hal::uart::Config::default().with_baudrate(115_200),
    )
    .expect("UART0 config")
    .with_tx(peripherals.GPIO21)
    .with_rx(peripherals.GPIO20)
    .into_async()
    .split();

    let mut store = store::Store::new(peripherals.FLASH);
    let mut settings = store.load_settings().await;

    let mac_bytes = interface_mac_address(InterfaceMacAddress::Station);
    let mut raw = [0u8; 6];
    raw.copy_from_slice(mac_bytes.as_bytes());
    let mac = match Mac::new(raw) {
        Ok(m) => m,
        Err(e) => {
            // No identity, no session: say why and stay on the console.
            let line = Event::error("identity", e).format();
            loop {
                println(&mut tx, &line).await;
                Timer::after(Duration::from_secs(5)).await;
            }
        }
    };

    let rng = Rng::new();
    // TLS keys come from the true random source (the RNG fed by the ADC's
    // noise, and the radio's once it runs), which must stay alive.
    #[cfg(feature = "tls")]
    let _trng_source = esp_hal::rng::TrngSource::new(peripherals.RNG, peripherals.ADC1);
    #[cfg(feature = "tls")]
    let trng = esp_hal::rng::Trng::try_new().ok();
    let mut cfg = Config::new("esp32c3", mac);
    cfg.mqtt = settings.mqtt;
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
    cfg.outbox_capacity = store::OUTBOX_CAPACITY;
    let (records, corrupt) = store.load_records().await;
    let mut device = Device::boot(cfg, HwRng(rng), records);
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
        println(&mut tx, &line.format()).await;
    }
    for (key, kept) in corrupt {
        println(
            &mut tx,
            &Event::error(
                "flash",
                alloc::format!("record {key} unreadable ({kept}), starting it empty"),
            )
            .format(),
        )
        .await;
    }

    // Network stack on the Wi-Fi station interface; the controller itself is
    // owned by the Wi-Fi task, which creates and drops it on `!wifi on/off`.
    static RESOURCES: StaticCell<StackResources<3>> = StaticCell::new();
    let seed = ((rng.random() as u64) << 32) | rng.random() as u64;
    let (stack, runner) = embassy_net::new(
        esp_radio::wifi::Interface::station(),
        embassy_net::Config::dhcpv4(Default::default()),
        RESOURCES.init(StackResources::new()),
        seed,
    );
    spawner.spawn(net_task(runner).expect("net task"));
    spawner.spawn(wifi::wifi_task(peripherals.WIFI).expect("wifi task"));
    wifi::set_credentials(settings.wifi.clone());
    wifi::request(settings.wifi.is_some());
    if settings.wifi.is_none() {
        println(
            &mut tx,
            &Event::error(
                "config",
                "no Wi-Fi credentials: send !config wifi.ssid=... wifi.pass=... broker=HOST:PORT",
            )
            .format(),
        )
        .await;
    }

    run(
        &mut device,
        stack,
        &mut rx,
        &mut tx,
        &mut store,
        &mut settings,
        #[cfg(feature = "tls")]
        trng,
    )
    .await
}

async fn run(
    device: &mut Device<HwRng>,
    stack: Stack<'static>,
    rx: &mut ConsoleRx,
    tx: &mut ConsoleTx,
    store: &mut store::Store,
    settings: &mut settings::Settings,
    #[cfg(feature = "tls")] mut trng: Option<esp_hal::rng::Trng>,
) -> ! {
    static SOCKET_BUFFERS: StaticCell<[u8; 4096]> = StaticCell::new();
    static SOCKET: StaticCell<RefCell<TcpSocket<'static>>> = StaticCell::new();
    let (sock_rx, sock_tx) = SOCKET_BUFFERS.init([0; 4096]).split_at_mut(2048);
    let socket = SOCKET.init(RefCell::new(TcpSocket::new(stack, sock_rx, sock_tx)));
    let mut link = link::Link::new(socket);
    let mut connected = false;
    let mut splitter = LineSplitter::default();
    let mut cbuf = [0u8; 256];
    let mut nbuf = [0u8; 1024];
    loop {
        while let Some(out) = device.poll_output() {
            match out {
                Output::Console(e) => println(tx, &e.format()).await,
                Output::Persist(r) => {
                    if let Err(e) = store.save(&r).await {
                        println(tx, &Event::error("flash", e).format()).await;
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
                            let timeout = Duration::from_secs(settings.keepalive_s as u64 * 2);
                            link.close(true).await;
                            #[cfg(not(feature = "tls"))]
                            let r = link.connect(ep, timeout).await;
                            // A TLS device connects only with a CA and a name,
                            // and never in plaintext.
                            #[cfg(feature = "tls")]
                            let r = match (&settings.ca, &settings.tls_name, trng.as_mut()) {
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
                Output::Wifi(on) => wifi::request(on),
                Output::Reboot => {
                    Timer::after(Duration::from_millis(50)).await; // let the ack drain
                    esp_hal::system::software_reset();
                }
                Output::Config(fields) => {
                    let reply = settings.apply(&fields);
                    match reply {
                        Ok(changed) => {
                            store.save_settings(settings).await;
                            wifi::set_credentials(settings.wifi.clone());
                            if changed.wifi {
                                wifi::request(true);
                            }
                            // Keys only: secrets are never echoed.
                            let keys: alloc::vec::Vec<(
                                alloc::string::String,
                                alloc::string::String,
                            )> = fields
                                .iter()
                                .map(|(k, _)| (k.clone(), "set".into()))
                                .collect();
                            println(
                                tx,
                                &Event::Ack {
                                    cmd: "config".into(),
                                    fields: keys,
                                }
                                .format(),
                            )
                            .await;
                        }
                        Err(e) => println(tx, &Event::error("config", e).format()).await,
                    }
                }
            }
        }
        let deadline = device
            .poll_timeout()
            .map(embassy_time::Instant::from_millis)
            .unwrap_or(Instant::now() + Duration::from_secs(3600));
        let net_read = async {
            if connected {
                link.read(&mut nbuf).await
            } else {
                core::future::pending().await
            }
        };
        match select4(
            embedded_io_async::Read::read(rx, &mut cbuf),
            net_read,
            Timer::at(deadline),
            wifi::state_changed(),
        )
        .await
        {
            Either4::First(Ok(n)) => {
                let t = now_ms();
                let mut lines = alloc::vec::Vec::new();
                splitter.feed(&cbuf[..n], &mut |l| lines.push(l));
                for line in lines {
                    // Wi-Fi is the radio's business here: the session hears the
                    // real state from the Wi-Fi task, the host gets its ack now.
                    if let Ok(Ok(Command::Wifi(on))) = line.as_ref().map(|l| Command::parse(l)) {
                        wifi::request(on);
                        if !on {
                            device.handle_wifi(t, false);
                        }
                        let state = if on { "on" } else { "off" };
                        println(
                            tx,
                            &Event::Ack {
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
            Either4::First(Err(_)) => {}
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
            Either4::Fourth(up) => {
                if up {
                    // Associated: the session is told once DHCP gave an address.
                    let _ =
                        embassy_time::with_timeout(Duration::from_secs(15), stack.wait_config_up())
                            .await;
                }
                if !up && connected {
                    connected = false;
                    link.close(true).await;
                }
                device.handle_wifi(now_ms(), up && stack.is_config_up());
            }
        }
    }
}
