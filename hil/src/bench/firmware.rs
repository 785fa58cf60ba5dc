//! Firmware images: the ELF the firmware build produces turned into the app
//! image a board boots, with espflash as a library (byte-identical to
//! `espflash save-image`).

use super::FlashError;
use espflash::flasher::{FlashData, FlashSettings};
use espflash::image_format::idf::IdfBootloaderFormat;
use espflash::target::{Chip, XtalFrequency};
use std::path::Path;

/// ESP image header magic.
const MAGIC: u8 = 0xE9;

#[derive(Debug, Clone)]
pub struct AppImage {
    pub bytes: Vec<u8>,
    pub chip: Chip,
    /// The app partition the image goes into (default partition table).
    pub partition_size: u64,
}

/// The chip id an ESP image header records at offset 12.
pub fn chip_id(chip: Chip) -> Option<u16> {
    Some(match chip {
        Chip::Esp32 => 0,
        Chip::Esp32s2 => 2,
        Chip::Esp32c3 => 5,
        Chip::Esp32s3 => 9,
        Chip::Esp32c2 => 12,
        Chip::Esp32c6 => 13,
        Chip::Esp32h2 => 16,
        _ => return None,
    })
}

pub fn app_image(elf_path: &Path, chip: Chip) -> Result<AppImage, FlashError> {
    let elf = std::fs::read(elf_path).map_err(|source| FlashError::ReadElf {
        path: elf_path.display().to_string(),
        source,
        hint: " (build the firmware first: cd firmware && cargo build --release)",
    })?;
    if elf.get(..4) != Some(b"\x7fELF") {
        return Err(FlashError::NotElf(elf_path.display().to_string()));
    }
    let image = idf_image(&elf, elf_path, chip)?;
    let partition_size = image
        .partition_table()
        .partitions()
        .iter()
        .find(|p| p.name() == "factory")
        .map(|p| p.size() as u64)
        .unwrap_or(0);
    let bytes: Vec<u8> = image
        .ota_segments()
        .next()
        .map(|s| s.data.into_owned())
        .unwrap_or_default();
    check(&bytes, chip)?;
    Ok(AppImage {
        bytes,
        chip,
        partition_size,
    })
}

/// The ESP-IDF image (bootloader, partition table, app) of an ELF, as
/// espflash makes it; shared by `hil firmware image`, serial and probe flashing.
pub fn idf_image<'a>(
    elf: &'a [u8],
    elf_path: &Path,
    chip: Chip,
) -> Result<IdfBootloaderFormat<'a>, FlashError> {
    let flash_data = FlashData::new(
        FlashSettings::default(),
        0,
        None,
        chip,
        XtalFrequency::_40Mhz,
    );
    IdfBootloaderFormat::new(elf, &flash_data, None, None, None, None).map_err(|source| {
        FlashError::Image {
            path: elf_path.display().to_string(),
            source,
        }
    })
}

/// Checks the header of an app image: magic and chip id.
pub fn check(image: &[u8], chip: Chip) -> Result<(), FlashError> {
    if image.len() < 24 || image[0] != MAGIC {
        return Err(FlashError::BadMagic);
    }
    let id = u16::from_le_bytes([image[12], image[13]]);
    match chip_id(chip) {
        Some(want) if want != id => Err(FlashError::WrongChipId {
            found: id,
            chip,
            want,
        }),
        _ => Ok(()),
    }
}

/// SHA-256 of an image, as flashed (to skip re-flashing the same image).
pub fn digest(image: &[u8]) -> String {
    use sha2::{Digest, Sha256};
    let d = Sha256::digest(image);
    d.iter().map(|b| format!("{b:02x}")).collect()
}
