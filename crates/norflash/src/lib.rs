//! A NOR flash in a file, with NOR semantics, so the firmware's flash store
//! (sequential-storage) runs on the host against the same rules as on the
//! chip's SPI flash:
//!
//! - **program only 1 → 0:** a write clears bits, never sets them; a write
//!   that would set a bit is refused ([`Misuse::SetsBits`]), since on the
//!   chip it would silently leave a different value than was written;
//! - **erase by page** ([`FileFlash::PAGE`] bytes, to 0xFF), page-aligned;
//! - **word-size writes** ([`FileFlash::WORD`] bytes), aligned;
//! - **on disk as it happens:** each word goes to the file with its own
//!   `pwrite`, no buffering in this process, so a `kill -9` in the middle of
//!   a store write leaves exactly the words written so far: a real power cut
//!   at word granularity (the page cache belongs to the kernel, which
//!   outlives the process).
//!
//! Why by hand: the crates that model NOR flash (embedded-storage's
//! `MockFlash`s, sequential-storage's test `MockFlashBase`) keep it in
//! memory, which a power cut of the process erases along with the test.

use embedded_storage::nor_flash::{
    ErrorType, NorFlash, NorFlashError, NorFlashErrorKind, ReadNorFlash,
};
use std::fs::{File, OpenOptions};
use std::os::unix::fs::FileExt;
use std::path::Path;

/// Why an operation was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Misuse {
    /// Not aligned to a word (write) or a page (erase).
    NotAligned,
    /// Beyond the flash.
    OutOfBounds,
    /// A write that would turn a 0 bit into 1 (only an erase can).
    SetsBits { offset: u32 },
    /// The file could not be read or written.
    Io,
}

impl NorFlashError for Misuse {
    fn kind(&self) -> NorFlashErrorKind {
        match self {
            Misuse::NotAligned => NorFlashErrorKind::NotAligned,
            Misuse::OutOfBounds => NorFlashErrorKind::OutOfBounds,
            Misuse::SetsBits { .. } | Misuse::Io => NorFlashErrorKind::Other,
        }
    }
}

pub struct FileFlash {
    file: File,
    size: u32,
}

impl FileFlash {
    pub const PAGE: usize = 4096;
    pub const WORD: usize = 4;

    /// The flash in `path`, `pages` erase pages long: created erased (all
    /// 0xFF) if the file does not exist, kept as it is if it does (a device
    /// booting on the flash it had).
    pub fn open(path: &Path, pages: u32) -> std::io::Result<FileFlash> {
        let size = pages * Self::PAGE as u32;
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(path)?;
        let len = file.metadata()?.len();
        if len < size as u64 {
            // Whatever is missing is erased flash.
            let pad = vec![0xFF; size as usize - len as usize];
            file.write_all_at(&pad, len)?;
        }
        Ok(FileFlash { file, size })
    }

    fn check(&self, offset: u32, len: usize, align: usize) -> Result<(), Misuse> {
        if offset as usize % align != 0 || len % align != 0 {
            return Err(Misuse::NotAligned);
        }
        if offset as u64 + len as u64 > self.size as u64 {
            return Err(Misuse::OutOfBounds);
        }
        Ok(())
    }
}

impl ErrorType for FileFlash {
    type Error = Misuse;
}

impl ReadNorFlash for FileFlash {
    const READ_SIZE: usize = 1;

    fn read(&mut self, offset: u32, bytes: &mut [u8]) -> Result<(), Misuse> {
        self.check(offset, bytes.len(), 1)?;
        self.file
            .read_exact_at(bytes, offset as u64)
            .map_err(|_| Misuse::Io)
    }

    fn capacity(&self) -> usize {
        self.size as usize
    }
}

impl NorFlash for FileFlash {
    const WRITE_SIZE: usize = Self::WORD;
    const ERASE_SIZE: usize = Self::PAGE;

    fn erase(&mut self, from: u32, to: u32) -> Result<(), Misuse> {
        if to < from {
            return Err(Misuse::OutOfBounds);
        }
        self.check(from, (to - from) as usize, Self::PAGE)?;
        let erased = [0xFFu8; Self::PAGE];
        for page in (from..to).step_by(Self::PAGE) {
            self.file
                .write_all_at(&erased, page as u64)
                .map_err(|_| Misuse::Io)?;
        }
        Ok(())
    }

    fn write(&mut self, offset: u32, bytes: &[u8]) -> Result<(), Misuse> {
        self.check(offset, bytes.len(), Self::WORD)?;
        for (i, word) in bytes.chunks_exact(Self::WORD).enumerate() {
            let at = offset + (i * Self::WORD) as u32;
            let mut old = [0u8; Self::WORD];
            self.file
                .read_exact_at(&mut old, at as u64)
                .map_err(|_| Misuse::Io)?;
            if old.iter().zip(word).any(|(o, n)| n & !o != 0) {
                return Err(Misuse::SetsBits { offset: at });
            }
            // One pwrite per word: a power cut can fall between any two.
            self.file
                .write_all_at(word, at as u64)
                .map_err(|_| Misuse::Io)?;
        }
        Ok(())
    }
}

// sequential-storage takes the async traits; the file is as fast either way.
impl embedded_storage_async::nor_flash::ReadNorFlash for FileFlash {
    const READ_SIZE: usize = 1;

    async fn read(&mut self, offset: u32, bytes: &mut [u8]) -> Result<(), Misuse> {
        ReadNorFlash::read(self, offset, bytes)
    }

    fn capacity(&self) -> usize {
        self.size as usize
    }
}

impl embedded_storage_async::nor_flash::NorFlash for FileFlash {
    const WRITE_SIZE: usize = Self::WORD;
    const ERASE_SIZE: usize = Self::PAGE;

    async fn erase(&mut self, from: u32, to: u32) -> Result<(), Misuse> {
        NorFlash::erase(self, from, to)
    }

    async fn write(&mut self, offset: u32, bytes: &[u8]) -> Result<(), Misuse> {
        NorFlash::write(self, offset, bytes)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn flash(pages: u32) -> (tempfile::TempDir, FileFlash) {
        let dir = tempfile::tempdir().unwrap();
        let f = FileFlash::open(&dir.path().join("flash.bin"), pages).unwrap();
        (dir, f)
    }

    #[test]
    fn a_new_flash_is_erased_and_writes_only_clear_bits() {
        let (_d, mut f) = flash(2);
        let mut b = [0u8; 8];
        ReadNorFlash::read(&mut f, 0, &mut b).unwrap();
        assert_eq!(b, [0xFF; 8]);
        NorFlash::write(&mut f, 0, &[0xF0, 0x0F, 0xAA, 0x55]).unwrap();
        // Clearing more bits of the same word is allowed (1 → 0 only).
        NorFlash::write(&mut f, 0, &[0x00, 0x0F, 0xAA, 0x55]).unwrap();
        // Setting one back is not: only an erase can.
        assert_eq!(
            NorFlash::write(&mut f, 0, &[0xFF, 0x0F, 0xAA, 0x55]),
            Err(Misuse::SetsBits { offset: 0 })
        );
        ReadNorFlash::read(&mut f, 0, &mut b[..4]).unwrap();
        assert_eq!(&b[..4], &[0x00, 0x0F, 0xAA, 0x55]);
        NorFlash::erase(&mut f, 0, 4096).unwrap();
        ReadNorFlash::read(&mut f, 0, &mut b[..4]).unwrap();
        assert_eq!(&b[..4], &[0xFF; 4]);
    }

    #[test]
    fn alignment_and_bounds_are_the_chips() {
        let (_d, mut f) = flash(1);
        assert_eq!(NorFlash::write(&mut f, 2, &[0; 4]), Err(Misuse::NotAligned));
        assert_eq!(NorFlash::write(&mut f, 0, &[0; 3]), Err(Misuse::NotAligned));
        assert_eq!(NorFlash::erase(&mut f, 0, 100), Err(Misuse::NotAligned));
        assert_eq!(
            NorFlash::write(&mut f, 4096, &[0; 4]),
            Err(Misuse::OutOfBounds)
        );
        assert_eq!(NorFlash::erase(&mut f, 0, 8192), Err(Misuse::OutOfBounds));
    }

    #[test]
    fn what_was_written_is_there_after_reopening() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("flash.bin");
        {
            let mut f = FileFlash::open(&path, 2).unwrap();
            NorFlash::write(&mut f, 4096, &[1, 2, 3, 4]).unwrap();
        }
        let mut f = FileFlash::open(&path, 2).unwrap();
        let mut b = [0u8; 4];
        ReadNorFlash::read(&mut f, 4096, &mut b).unwrap();
        assert_eq!(b, [1, 2, 3, 4]);
    }
}
