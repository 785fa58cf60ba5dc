//! Flashing a board over its serial port with espflash as a library.
//! espflash compares each region's MD5 with what the chip holds and skips
//! what is already there, so re-running on a flashed board costs seconds
//! (what pytest-embedded does with its SHA-256 check).

use espflash::connection::{Connection, ResetAfterOperation, ResetBeforeOperation};
use espflash::flasher::Flasher;
use espflash::image_format::ImageFormat;
use espflash::target::{Chip, DefaultProgressCallback};
use std::path::Path;

/// Why flashing failed, worded for the person at the bench.
pub fn explain(port: &str, e: &espflash::Error) -> String {
    if let espflash::Error::ChipMismatch(wanted, found) = e {
        return format!(
            "wrong chip on {port}: the board is an {found}, the rig file says {wanted}. \
             Check the rig file's `chip` for this board, or whether the right board is on this port"
        );
    }
    let text = e.to_string();
    let lower = text.to_lowercase();
    if lower.contains("timed out") || lower.contains("timeout") || lower.contains("connect") {
        format!(
            "no ESP ROM bootloader answered on {port} ({text}). Is this an ESP32 board? Hold BOOT while pressing RESET, \
             check the cable, or pass --no-flash to use the firmware already on it"
        )
    } else {
        format!("flashing {port} failed: {text}")
    }
}

/// Flashes `elf` to the board on `port_path`, expecting `chip`; resets it
/// into the ROM bootloader with DTR/RTS first.
pub fn flash(port_path: &str, elf: &Path, chip: Chip) -> Result<(), String> {
    flash_with(port_path, elf, chip, ResetBeforeOperation::DefaultReset)
}

/// As [`flash`], with espflash's choice of reset before connecting
/// (`NoReset` for a board already held in download mode).
pub fn flash_with(
    port_path: &str,
    elf: &Path,
    chip: Chip,
    before: ResetBeforeOperation,
) -> Result<(), String> {
    let elf_data = std::fs::read(elf).map_err(|e| format!("cannot read {}: {e}", elf.display()))?;
    let port = serialport::new(port_path, 115_200)
        .timeout(std::time::Duration::from_secs(3))
        .open_native()
        .map_err(|e| {
            format!("cannot open {port_path}: {e} (`hil doctor` lists the serial ports)")
        })?;
    let info = serialport::UsbPortInfo {
        vid: 0x303a,
        pid: 0x1001,
        serial_number: None,
        manufacturer: None,
        product: None,
        interface: None,
    };
    let connection = Connection::new(port, info, ResetAfterOperation::HardReset, before, 115_200);
    let mut flasher = Flasher::connect(connection, true, true, true, Some(chip), None)
        .map_err(|e| explain(port_path, &e))?;
    if flasher.chip() != chip {
        return Err(format!(
            "wrong chip on {port_path}: found {}, the rig says {chip}",
            flasher.chip()
        ));
    }
    let image = crate::firmware::idf_image(&elf_data, elf, chip)?;
    flasher
        .load_image_to_flash(&mut DefaultProgressCallback, ImageFormat::EspIdf(image))
        .map_err(|e| explain(port_path, &e))
}
