//! Flash: the session's records and the settings in a sequential-storage map
//! (wear-levelled, power-fail safe) over a range of any async NOR flash: on
//! the ESP32-C3 the `nvs` range of the default partition table (0x9000,
//! 24 KiB: six 4 KiB pages), on the host a file that keeps NOR semantics.

use crate::settings::Settings;
use alloc::vec::Vec;
use core::ops::Range;
use embedded_storage_async::nor_flash::NorFlash;
use hil_session::persist::{Record, RecordKey};
use sequential_storage::cache::NoCache;
use sequential_storage::map::{fetch_item, store_item};

const SETTINGS_KEY: u8 = 100;
/// Readings kept while offline: the outbox snapshot must fit one flash page.
pub const OUTBOX_CAPACITY: usize = 32;

pub struct Store<F> {
    flash: F,
    range: Range<u32>,
    buf: [u8; 4096],
}

fn key_of(k: RecordKey) -> u8 {
    match k {
        RecordKey::Boot => 1,
        RecordKey::Outbox => 2,
        RecordKey::Inbox => 3,
        RecordKey::Subscription => 4,
        RecordKey::SeqMark => 5,
    }
}

/// Where the first unreadable copy of a record is kept: the next write of
/// that record must not destroy the evidence (0x80 | key, never overwritten).
fn corrupt_key_of(k: RecordKey) -> u8 {
    0x80 | key_of(k)
}

impl<F: NorFlash> Store<F> {
    /// The store in `range` of `flash` (whole erase pages).
    pub fn new(flash: F, range: Range<u32>) -> Self {
        Store {
            flash,
            range,
            buf: [0; 4096],
        }
    }

    async fn fetch(&mut self, key: u8) -> Option<Vec<u8>> {
        match fetch_item::<u8, &[u8], _>(
            &mut self.flash,
            self.range.clone(),
            &mut NoCache::new(),
            &mut self.buf,
            &key,
        )
        .await
        {
            Ok(Some(v)) => Some(v.to_vec()),
            _ => None,
        }
    }

    /// Every readable record, and for each that was not: its name and where
    /// its bytes are kept.
    pub async fn load_records(&mut self) -> (Vec<Record>, Vec<(&'static str, &'static str)>) {
        let mut records = Vec::new();
        let mut corrupt = Vec::new();
        for k in RecordKey::ALL {
            if let Some(bytes) = self.fetch(key_of(k)).await {
                match Record::decode(&bytes) {
                    Ok(r) if r.key() == k => records.push(r),
                    _ => {
                        let kept = if self.fetch(corrupt_key_of(k)).await.is_some() {
                            "an earlier corrupt copy is kept; this one is not"
                        } else if self.put(corrupt_key_of(k), &bytes).await.is_ok() {
                            "kept under key 0x80|key"
                        } else {
                            "could not be kept"
                        };
                        corrupt.push((k.name(), kept));
                    }
                }
            }
        }
        (records, corrupt)
    }

    async fn put(&mut self, key: u8, bytes: &[u8]) -> Result<(), &'static str> {
        store_item(
            &mut self.flash,
            self.range.clone(),
            &mut NoCache::new(),
            &mut self.buf,
            &key,
            &bytes,
        )
        .await
        .map_err(|_| "flash write failed")
    }

    /// Every write goes through [`Store::put`]: one copy of
    /// sequential-storage's write in the image, not one per caller (400 B).
    pub async fn save(&mut self, r: &Record) -> Result<(), &'static str> {
        self.put(key_of(r.key()), &r.encode()).await
    }

    pub async fn load_settings(&mut self) -> Settings {
        self.fetch(SETTINGS_KEY)
            .await
            .map(|b| Settings::decode(&b))
            .unwrap_or_default()
    }

    pub async fn save_settings(&mut self, s: &Settings) {
        let _ = self.put(SETTINGS_KEY, &s.encode()).await;
    }
}
