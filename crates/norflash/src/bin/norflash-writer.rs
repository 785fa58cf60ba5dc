//! The power-cut test's device: the firmware's store (sequential-storage's
//! map over the 24 KiB `nvs` range, six pages) on a [`FileFlash`], writing
//! records without end. After each write returns it prints `stored KEY N`:
//! from then on the record is acknowledged, and a power cut (the test's
//! `kill -9`) must not lose it.
//!
//! Usage: `norflash-writer FLASH_FILE FIRST_N [--control buffered]`.
//! The control keeps the flash in memory and never writes it back (a
//! write-back cache with no flush): the test must catch it. Record N goes to key
//! N % 16 (so newer records replace older ones, as the firmware's outbox
//! and settings do) and holds N, padded to a length that varies with N.

use embassy_futures::block_on;
use embedded_storage_async::nor_flash::NorFlash;
use hil_norflash::FileFlash;
use sequential_storage::cache::NoCache;
use sequential_storage::map::store_item;
use std::io::Write;

/// The negative control: the flash's contents in memory only.
struct Buffered {
    bytes: Vec<u8>,
}

impl embedded_storage_async::nor_flash::ErrorType for Buffered {
    type Error = hil_norflash::Misuse;
}

impl embedded_storage_async::nor_flash::ReadNorFlash for Buffered {
    const READ_SIZE: usize = 1;
    async fn read(&mut self, offset: u32, bytes: &mut [u8]) -> Result<(), Self::Error> {
        let o = offset as usize;
        bytes.copy_from_slice(&self.bytes[o..o + bytes.len()]);
        Ok(())
    }
    fn capacity(&self) -> usize {
        self.bytes.len()
    }
}

impl NorFlash for Buffered {
    const WRITE_SIZE: usize = FileFlash::WORD;
    const ERASE_SIZE: usize = FileFlash::PAGE;
    async fn erase(&mut self, from: u32, to: u32) -> Result<(), Self::Error> {
        self.bytes[from as usize..to as usize].fill(0xFF);
        Ok(())
    }
    async fn write(&mut self, offset: u32, bytes: &[u8]) -> Result<(), Self::Error> {
        let o = offset as usize;
        for (d, s) in self.bytes[o..o + bytes.len()].iter_mut().zip(bytes) {
            *d &= s;
        }
        Ok(())
    }
}

/// The firmware's store: six 4 KiB pages.
pub const PAGES: u32 = 6;
pub const KEYS: u32 = 16;

fn value(n: u32) -> Vec<u8> {
    let mut v = n.to_le_bytes().to_vec();
    v.resize(8 + (n % 97) as usize, (n % 251) as u8);
    v
}

fn main() {
    let mut args = std::env::args().skip(1);
    let (Some(path), Some(first)) = (args.next(), args.next()) else {
        eprintln!("usage: norflash-writer FLASH_FILE FIRST_N");
        std::process::exit(2);
    };
    let first: u32 = first.parse().expect("FIRST_N is a number");
    let buffered =
        args.next().as_deref() == Some("--control") && args.next().as_deref() == Some("buffered");
    let flash = FileFlash::open(path.as_ref(), PAGES).expect("open the flash file");
    if buffered {
        let mut bytes = vec![0u8; PAGES as usize * FileFlash::PAGE];
        embedded_storage::nor_flash::ReadNorFlash::read(&mut { flash }, 0, &mut bytes)
            .expect("read the flash file");
        write_forever(Buffered { bytes }, first)
    } else {
        write_forever(flash, first)
    }
}

fn write_forever(mut flash: impl NorFlash, first: u32) {
    let range = 0..PAGES * FileFlash::PAGE as u32;
    let mut buf = [0u8; 512];
    let mut out = std::io::stdout().lock();
    for n in first.. {
        let key = (n % KEYS) as u8;
        let v = value(n);
        let stored = block_on(store_item(
            &mut flash,
            range.clone(),
            &mut NoCache::new(),
            &mut buf,
            &key,
            &v.as_slice(),
        ));
        if let Err(e) = stored {
            eprintln!("store failed at {n}: {e:?}");
            std::process::exit(1);
        }
        // Acknowledged: the record is on the flash.
        if writeln!(out, "stored {key} {n}")
            .and_then(|_| out.flush())
            .is_err()
        {
            return;
        }
    }
}
