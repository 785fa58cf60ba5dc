//! The firmware's application on the host: `hil-firmware-app`, the code
//! the ESP32-C3 runs, with only the hardware layer swapped (Zephyr's
//! `native_sim` is the model):
//! - console: stdin and stdout, the same `@hil` / `!command` protocol;
//! - flash: a NOR flash in a file (hil-norflash), 24 KiB like the chip's
//!   `nvs` range, so a kill -9 is a power cut;
//! - network: libslirp behind embassy-net (hil-slirp-net): DHCP, and the
//!   host's 127.0.0.1:PORT at 10.0.2.2:PORT;
//! - radio: `!wifi off` unplugs that link, through the app's `Radio`;
//! - reboot: the process executes itself again, on the same flash.
//!
//! Usage: `hil-firmware-host --state-dir DIR --mac MAC`.

use futures_channel::mpsc;
use futures_util::StreamExt;
use hil_firmware_app::settings::WifiCreds;
use hil_session::RandomSource;
use std::io::{BufRead, Write};
use std::path::PathBuf;

struct Console {
    lines: mpsc::UnboundedReceiver<Vec<u8>>,
    pending: Vec<u8>,
}

impl hil_firmware_app::Console for Console {
    async fn read(&mut self, buf: &mut [u8]) -> usize {
        if self.pending.is_empty() {
            match self.lines.next().await {
                Some(bytes) => self.pending = bytes,
                // The host closed the console: nothing more will come.
                None => std::future::pending().await,
            }
        }
        let n = self.pending.len().min(buf.len());
        buf[..n].copy_from_slice(&self.pending[..n]);
        self.pending.drain(..n);
        n
    }

    async fn write_line(&mut self, line: &str) {
        let mut out = std::io::stdout().lock();
        let _ = writeln!(out, "{line}");
        let _ = out.flush();
    }
}

/// The radio is the slirp link: on and off as `!wifi on/off` asks.
struct Radio {
    link: hil_slirp_net::Link,
    tx: mpsc::UnboundedSender<bool>,
    rx: mpsc::UnboundedReceiver<bool>,
}

impl hil_firmware_app::Radio for Radio {
    fn set_credentials(&mut self, _creds: Option<WifiCreds>) {}

    fn request(&mut self, on: bool) {
        self.link.set_up(on);
        let _ = self.tx.unbounded_send(on);
    }

    async fn state_changed(&mut self) -> bool {
        match self.rx.next().await {
            Some(up) => up,
            None => std::future::pending().await,
        }
    }
}

struct Host {
    console: Console,
    radio: Radio,
}

impl hil_firmware_app::Platform for Host {
    type Console = Console;
    type Radio = Radio;
    const CHIP: &'static str = "esp32c3";

    fn console_and_radio(&mut self) -> (&mut Console, &mut Radio) {
        (&mut self.console, &mut self.radio)
    }

    fn reboot(&mut self) -> ! {
        // A software reset: the same program, on the same flash.
        use std::os::unix::process::CommandExt;
        let mut args = std::env::args_os();
        let exe = std::env::current_exe().expect("my own executable");
        let err = std::process::Command::new(exe)
            .args(args.by_ref().skip(1))
            .exec();
        eprintln!("hil-firmware-host: cannot reboot: {err}");
        std::process::exit(1)
    }
}

struct Jitter(rand::rngs::SmallRng);
impl RandomSource for Jitter {
    fn next_u32(&mut self) -> u32 {
        rand::RngCore::next_u32(&mut self.0)
    }
}

fn usage(msg: &str) -> ! {
    eprintln!("hil-firmware-host: {msg}\nusage: hil-firmware-host --state-dir DIR --mac MAC");
    std::process::exit(2)
}

fn main() {
    let mut state: Option<PathBuf> = None;
    let mut mac: Option<[u8; 6]> = None;
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        match a.as_str() {
            "--state-dir" => state = args.next().map(PathBuf::from),
            "--mac" => {
                let m: hil_session::Mac = args
                    .next()
                    .unwrap_or_default()
                    .parse()
                    .unwrap_or_else(|e| usage(&format!("--mac: {e}")));
                mac = Some(m.0);
            }
            other => usage(&format!("unknown argument {other}")),
        }
    }
    let state = state.unwrap_or_else(|| usage("--state-dir is required"));
    let mac = mac.unwrap_or_else(|| usage("--mac is required"));
    std::fs::create_dir_all(&state).unwrap_or_else(|e| usage(&format!("{}: {e}", state.display())));
    let flash = hil_norflash::FileFlash::open(&state.join("flash.bin"), 6)
        .unwrap_or_else(|e| usage(&format!("the flash file: {e}")));

    // stdin, line by line, into the console's queue.
    let (line_tx, lines) = mpsc::unbounded();
    std::thread::spawn(move || {
        let stdin = std::io::stdin();
        for line in stdin.lock().split(b'\n') {
            let Ok(mut line) = line else { break };
            line.push(b'\n');
            if line_tx.unbounded_send(line).is_err() {
                break;
            }
        }
        // The host closed the console (the runner is gone): a process left
        // behind would keep dialling a broker nobody runs.
        std::process::exit(0);
    });

    // The station's MAC on the virtual Ethernet, locally administered.
    let mut eth = mac;
    eth[0] = (eth[0] | 0x02) & 0xFE;
    let (device, link) =
        hil_slirp_net::start(eth).unwrap_or_else(|e| usage(&format!("network: {e}")));
    link.set_up(false);
    static RESOURCES: static_cell::StaticCell<embassy_net::StackResources<3>> =
        static_cell::StaticCell::new();
    let seed = rand::random();
    let (stack, runner) = embassy_net::new(
        device,
        embassy_net::Config::dhcpv4(Default::default()),
        RESOURCES.init(embassy_net::StackResources::new()),
        seed,
    );
    let (state_tx, state_rx) = mpsc::unbounded();
    let host = Host {
        console: Console {
            lines,
            pending: Vec::new(),
        },
        radio: Radio {
            link,
            tx: state_tx,
            rx: state_rx,
        },
    };
    let jitter = Jitter(rand::SeedableRng::from_entropy());
    static EXECUTOR: static_cell::StaticCell<embassy_executor::Executor> =
        static_cell::StaticCell::new();
    // Runs forever: the process ends by a signal, a reboot (exec) or the
    // console closing (the stdin thread exits).
    EXECUTOR
        .init(embassy_executor::Executor::new())
        .run(move |spawner| {
            spawner.spawn(net_task(runner).expect("the network task"));
            spawner.spawn(app_task(host, flash, mac, jitter, stack).expect("the application task"));
        })
}

#[embassy_executor::task]
async fn net_task(mut runner: embassy_net::Runner<'static, hil_slirp_net::Device>) -> ! {
    runner.run().await
}

#[embassy_executor::task]
async fn app_task(
    host: Host,
    flash: hil_norflash::FileFlash,
    mac: [u8; 6],
    jitter: Jitter,
    stack: embassy_net::Stack<'static>,
) -> ! {
    hil_firmware_app::main(host, flash, 0..6 * 4096, mac, jitter, stack).await
}
