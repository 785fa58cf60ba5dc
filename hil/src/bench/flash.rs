//! Flashing a board over its serial port with espflash as a library.
//! espflash compares each region's MD5 with what the chip holds and skips
//! what is already there, so re-running on a flashed board costs seconds
//! (what pytest-embedded does with its SHA-256 check).

use super::FlashError;
use espflash::connection::{Connection, ResetAfterOperation, ResetBeforeOperation};
use espflash::flasher::Flasher;
use espflash::image_format::ImageFormat;
use espflash::target::{Chip, DefaultProgressCallback};
use std::path::Path;

/// Why flashing failed, worded for the person at the bench.
pub fn explain(port: &str, e: espflash::Error) -> FlashError {
    if let espflash::Error::ChipMismatch(wanted, found) = &e {
        return FlashError::WrongChip {
            port: port.into(),
            found: found.clone(),
            wanted: wanted.clone(),
        };
    }
    // espflash words a silent port in several ways; all mean "no bootloader here".
    let lower = e.to_string().to_lowercase();
    if lower.contains("timed out") || lower.contains("timeout") || lower.contains("connect") {
        FlashError::NoBootloader {
            port: port.into(),
            source: e,
        }
    } else {
        FlashError::Espflash {
            port: port.into(),
            source: e,
        }
    }
}

/// Flashes `elf` to the board on `port_path`, expecting `chip`; resets it
/// into the ROM bootloader with DTR/RTS first.
pub fn flash(port_path: &str, elf: &Path, chip: Chip) -> Result<(), FlashError> {
    flash_with(port_path, elf, chip, ResetBeforeOperation::DefaultReset)
}

/// As [`flash`], with espflash's choice of reset before connecting
/// (`NoReset` for a board already held in download mode).
pub fn flash_with(
    port_path: &str,
    elf: &Path,
    chip: Chip,
    before: ResetBeforeOperation,
) -> Result<(), FlashError> {
    let elf_data = std::fs::read(elf).map_err(|source| FlashError::ReadElf {
        path: elf.display().to_string(),
        source,
        hint: "",
    })?;
    let port = serialport::new(port_path, 115_200)
        .timeout(std::time::Duration::from_secs(3))
        .open_native()
        .map_err(|source| FlashError::OpenPort {
            port: port_path.into(),
            source,
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
        .map_err(|e| explain(port_path, e))?;
    if flasher.chip() != chip {
        return Err(FlashError::WrongChip {
            port: port_path.into(),
            found: flasher.chip().to_string(),
            wanted: chip.to_string(),
        });
    }
    let image = super::firmware::idf_image(&elf_data, elf, chip)?;
    flasher
        .load_image_to_flash(&mut DefaultProgressCallback, ImageFormat::EspIdf(image))
        .map_err(|e| explain(port_path, e))
}
