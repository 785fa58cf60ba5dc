//! Boards on a bench: the rig file, firmware images, and
//! flashing over the serial ROM bootloader (espflash) or a debug probe
//! (probe-rs). Hardware setup lives here; scenarios never see it.

pub mod firmware;
pub mod flash;
pub mod probe;
pub mod rig;

use espflash::target::Chip;

/// Why a firmware image could not be made or flashed, worded for the
/// person at the bench: each says what to do next.
#[derive(Debug, thiserror::Error)]
pub enum FlashError {
    #[error("cannot read {path}: {source}{hint}")]
    ReadElf {
        path: String,
        #[source]
        source: std::io::Error,
        hint: &'static str,
    },
    #[error("{0} is not an ELF file")]
    NotElf(String),
    #[error("espflash could not make an image of {path}: {source}")]
    Image {
        path: String,
        #[source]
        source: espflash::Error,
    },
    #[error("not an ESP app image (bad magic)")]
    BadMagic,
    #[error("image is for chip id {found}, expected {chip} ({want})")]
    WrongChipId { found: u16, chip: Chip, want: u16 },
    #[error("the image is {size} bytes, over the {max}-byte budget")]
    OverBudget { size: usize, max: u64 },
    #[error("cannot write {path}: {source}")]
    Write {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot open {port}: {source} (`hil doctor` lists the serial ports)")]
    OpenPort {
        port: String,
        #[source]
        source: serialport::Error,
    },
    #[error("wrong chip on {port}: the board is an {found}, the rig file says {wanted}. Check the rig file's `chip` for this board, or whether the right board is on this port")]
    WrongChip {
        port: String,
        found: String,
        wanted: String,
    },
    #[error("no ESP ROM bootloader answered on {port} ({source}). Is this an ESP32 board? Hold BOOT while pressing RESET, check the cable, or pass --no-flash to use the firmware already on it")]
    NoBootloader {
        port: String,
        #[source]
        source: espflash::Error,
    },
    #[error("flashing {port} failed: {source}")]
    Espflash {
        port: String,
        #[source]
        source: espflash::Error,
    },
    #[error("probe support is not built in: cargo build -p hil --features probe (probe-rs takes a few minutes to build)")]
    ProbeNotBuilt,
    #[error("no debug probe found: plug the board's USB (the ESP32-C3's built-in USB-JTAG is 303a:1001), check its udev permissions, or flash over serial instead (--dut serial)")]
    NoProbe,
    #[error("{0} probes attached: choose one with --probe VID:PID:SERIAL")]
    ManyProbes(usize),
    #[error("the probe backend does not know how to flash {0}")]
    ProbeChip(Chip),
    /// probe-rs reports through several error types; what failed, and its words.
    #[error("{what}: {detail}")]
    Probe { what: String, detail: String },
}

/// A rig file that cannot be used, and what to fix.
#[derive(Debug, thiserror::Error)]
pub enum RigFileError {
    #[error("cannot read rig file {path}: {source}")]
    Read {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("rig file {path}: {source}")]
    Invalid {
        path: String,
        #[source]
        source: Box<RigFileError>,
    },
    #[error("{0}")]
    Toml(#[from] toml::de::Error),
    #[error("no [[board]] entries")]
    NoBoards,
    #[error("board `{0}`: give `port` or `usb_serial`")]
    NoPort(String),
    #[error("board `{board}`: mac {mac}: {reason}")]
    BadMac {
        board: String,
        mac: String,
        reason: String,
    },
    #[error("board `{board}`: unknown chip `{chip}` (e.g. esp32c3)")]
    UnknownChip { board: String, chip: String },
    #[error("two boards named `{0}`")]
    DuplicateBoard(String),
    #[error("no board `{name}` in the rig (boards: {known})")]
    NoSuchBoard { name: String, known: String },
    #[error("the rig has several boards: pick one with --board NAME")]
    WhichBoard,
    #[error("the rig takes Wi-Fi credentials from ${0}, which is not set")]
    WifiEnvUnset(String),
    #[error("board `{board}`: no serial port with USB serial number {serial} (is it plugged in? `hil doctor` lists ports)")]
    PortNotFound { board: String, serial: String },
}
