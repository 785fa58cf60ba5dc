//! ESP32-C3 firmware: the shell that runs the chip-independent application
//! (`hil-firmware-app`) on the chip. Hardware setup lives here and only
//! here (the esp-hal `hil-test` shape): the behaviour is the app's, on the
//! same `hil_session::Device` the host sim runs.
//! - console: USB-Serial-JTAG (or UART0 with the `uart-console` feature), the
//!   same `@hil` / `!command` protocol as the sim;
//! - identity: the factory eFuse MAC;
//! - flash: the `nvs` range of the default partition table (0x9000, 24 KiB),
//!   esp-storage behind the async NorFlash the app's store uses;
//! - Wi-Fi: `!wifi off` drops the controller (the radio is deinitialised),
//!   `!wifi on` brings it back; credentials come from `!config`.
#![no_std]
#![no_main]

extern crate alloc;

mod wifi;

use embassy_embedded_hal::adapter::BlockingAsync;
use embassy_executor::Spawner;
use embassy_net::{Runner, StackResources};
use embedded_io_async::Write;
use esp_backtrace as _;
use esp_hal::efuse::{interface_mac_address, InterfaceMacAddress};
use esp_hal::rng::Rng;
use esp_hal::timer::timg::TimerGroup;
use hil_firmware_app::settings::WifiCreds;
use hil_session::RandomSource;
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

struct Console {
    rx: ConsoleRx,
    tx: ConsoleTx,
}

impl hil_firmware_app::Console for Console {
    async fn read(&mut self, buf: &mut [u8]) -> usize {
        embedded_io_async::Read::read(&mut self.rx, buf)
            .await
            .unwrap_or(0)
    }

    async fn write_line(&mut self, line: &str) {
        let _ = self.tx.write_all(line.as_bytes()).await;
        let _ = self.tx.write_all(b"\r\n").await;
        // By path: UART's inherent blocking `flush` (a Result, not a future)
        // shadows the async trait method under `uart-console`.
        let _ = embedded_io_async::Write::flush(&mut self.tx).await;
    }
}

/// The Wi-Fi task (wifi.rs) owns the radio; this is its switch.
struct Radio;

impl hil_firmware_app::Radio for Radio {
    fn set_credentials(&mut self, creds: Option<WifiCreds>) {
        wifi::set_credentials(creds)
    }
    fn request(&mut self, on: bool) {
        wifi::request(on)
    }
    async fn state_changed(&mut self) -> bool {
        wifi::state_changed().await
    }
}

struct Chip {
    console: Console,
    radio: Radio,
    #[cfg(feature = "tls")]
    trng: Option<esp_hal::rng::Trng>,
}

impl hil_firmware_app::Platform for Chip {
    type Console = Console;
    type Radio = Radio;
    #[cfg(feature = "tls")]
    type TlsRng = esp_hal::rng::Trng;
    const CHIP: &'static str = "esp32c3";

    fn console_and_radio(&mut self) -> (&mut Console, &mut Radio) {
        (&mut self.console, &mut self.radio)
    }

    fn reboot(&mut self) -> ! {
        esp_hal::system::software_reset()
    }

    #[cfg(feature = "tls")]
    fn tls_rng(&mut self) -> Option<&mut esp_hal::rng::Trng> {
        self.trng.as_mut()
    }
}

#[embassy_executor::task]
async fn net_task(mut runner: Runner<'static, esp_radio::wifi::Interface>) {
    runner.run().await
}

/// The `nvs` range of the default partition table: six 4 KiB pages.
const NVS: core::ops::Range<u32> = 0x9000..0xF000;

#[esp_rtos::main]
async fn main(spawner: Spawner) {
    let peripherals = esp_hal::init(esp_hal::Config::default());
    esp_alloc::heap_allocator!(#[esp_hal::ram(reclaimed)] size: 64 * 1024);
    esp_alloc::heap_allocator!(size: 48 * 1024);

    let timg0 = TimerGroup::new(peripherals.TIMG0);
    esp_rtos::start(timg0.timer0, peripherals.FROM_CPU_INTR0);

    #[cfg(not(feature = "uart-console"))]
    let (rx, tx): (ConsoleRx, ConsoleTx) =
        esp_hal::usb::usb_serial_jtag::UsbSerialJtag::new(peripherals.USB_DEVICE)
            .into_async()
            .split();
    #[cfg(feature = "uart-console")]
    let (rx, tx): (ConsoleRx, ConsoleTx) = esp_hal::uart::Uart::new(
        peripherals.UART0,
        esp_hal::uart::Config::default().with_baudrate(115_200),
    )
    .expect("UART0 config")
    .with_tx(peripherals.GPIO21)
    .with_rx(peripherals.GPIO20)
    .into_async()
    .split();

    let flash = BlockingAsync::new(esp_storage::FlashStorage::new(peripherals.FLASH));
    let mac_bytes = interface_mac_address(InterfaceMacAddress::Station);
    let mut mac = [0u8; 6];
    mac.copy_from_slice(mac_bytes.as_bytes());

    let rng = Rng::new();
    // TLS keys come from the true random source (the RNG fed by the ADC's
    // noise, and the radio's once it runs), which must stay alive.
    #[cfg(feature = "tls")]
    let _trng_source = esp_hal::rng::TrngSource::new(peripherals.RNG, peripherals.ADC1);

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

    let chip = Chip {
        console: Console { rx, tx },
        radio: Radio,
        #[cfg(feature = "tls")]
        trng: esp_hal::rng::Trng::try_new().ok(),
    };
    hil_firmware_app::main(chip, flash, NVS, mac, HwRng(rng), stack).await
}
