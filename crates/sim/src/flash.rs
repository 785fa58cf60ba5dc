//! Flash in files: one file per record key under the state dir, replaced
//! atomically (write a temporary file, fsync, rename over, fsync the dir), so a
//! kill -9 at any instant leaves either the old or the new record, never a torn one.

use hil_session::persist::{Record, RecordKey};
use std::fs::{self, File};
use std::io::{self, Write};
use std::path::{Path, PathBuf};

pub struct FileFlash {
    dir: PathBuf,
}

/// A record file that could not be read back.
#[derive(Debug)]
pub struct Corrupt {
    pub path: PathBuf,
    pub why: String,
    /// Where the unreadable bytes were moved (`<key>.rec.corrupt-<n>`): the
    /// next write must not destroy the evidence.
    pub moved_to: Option<PathBuf>,
}

/// Moves an unreadable record aside under the first free `.corrupt-<n>` name.
fn move_aside(path: &Path) -> Option<PathBuf> {
    (1..1000).find_map(|n| {
        let to = PathBuf::from(format!("{}.corrupt-{n}", path.display()));
        if to.exists() {
            return None;
        }
        fs::rename(path, &to).ok().map(|_| to)
    })
}

impl FileFlash {
    /// Creates the dir if needed and proves it is writable now, not at the
    /// first acknowledged command.
    pub fn open(dir: &Path) -> Result<Self, crate::SimError> {
        fs::create_dir_all(dir).map_err(|source| crate::SimError::StateDir {
            path: dir.into(),
            source,
        })?;
        let probe = dir.join(".write-probe");
        File::create(&probe)
            .and_then(|mut f| f.write_all(b"ok"))
            .and_then(|_| fs::remove_file(&probe))
            .map_err(|source| crate::SimError::NotWritable {
                path: dir.into(),
                source,
            })?;
        Ok(FileFlash {
            dir: dir.to_owned(),
        })
    }

    fn path(&self, key: RecordKey) -> PathBuf {
        self.dir.join(format!("{}.rec", key.name()))
    }

    /// Every readable record, and a note for each that is not (it is skipped:
    /// the device boots with that component empty rather than not at all).
    pub fn load(&self) -> (Vec<Record>, Vec<Corrupt>) {
        let mut records = Vec::new();
        let mut corrupt = Vec::new();
        for key in RecordKey::ALL {
            let path = self.path(key);
            match fs::read(&path) {
                Ok(bytes) => match Record::decode(&bytes) {
                    Ok(r) if r.key() == key => records.push(r),
                    Ok(_) => corrupt.push(Corrupt {
                        moved_to: move_aside(&path),
                        path,
                        why: "record stored under the wrong key".into(),
                    }),
                    Err(e) => corrupt.push(Corrupt {
                        moved_to: move_aside(&path),
                        path,
                        why: e.to_string(),
                    }),
                },
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => corrupt.push(Corrupt {
                    path,
                    why: e.to_string(),
                    moved_to: None,
                }),
            }
        }
        (records, corrupt)
    }

    pub fn store(&self, record: &Record) -> io::Result<()> {
        let path = self.path(record.key());
        let tmp = path.with_extension("tmp");
        {
            let mut f = File::create(&tmp)?;
            f.write_all(&record.encode())?;
            f.sync_all()?;
        }
        fs::rename(&tmp, &path)?;
        File::open(&self.dir)?.sync_all()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use hil_session::inbox::InboxSnapshot;

    #[test]
    fn store_load_and_corruption() {
        let dir = tempfile::tempdir().unwrap();
        let flash = FileFlash::open(dir.path()).unwrap();
        assert!(flash.load().0.is_empty());
        let r = Record::Inbox(InboxSnapshot {
            ids: vec!["a".into()],
        });
        flash.store(&r).unwrap();
        flash.store(&Record::Boot { count: 3 }).unwrap();
        let (records, corrupt) = flash.load();
        assert!(corrupt.is_empty());
        assert!(records.contains(&r) && records.contains(&Record::Boot { count: 3 }));
        fs::write(dir.path().join("inbox.rec"), b"\x01garbage\xff").unwrap();
        let (records, corrupt) = flash.load();
        assert_eq!(records, vec![Record::Boot { count: 3 }]);
        assert_eq!(corrupt.len(), 1);
        assert!(corrupt[0].path.ends_with("inbox.rec"));
        // Moved aside, never overwritten: the next write leaves the evidence.
        let kept = corrupt[0].moved_to.clone().expect("moved aside");
        assert!(kept.ends_with("inbox.rec.corrupt-1"), "{kept:?}");
        flash.store(&r).unwrap();
        assert_eq!(fs::read(&kept).unwrap(), b"\x01garbage\xff");
        fs::write(dir.path().join("inbox.rec"), b"\x02").unwrap();
        let (_, corrupt) = flash.load();
        assert!(corrupt[0]
            .moved_to
            .as_ref()
            .unwrap()
            .ends_with("inbox.rec.corrupt-2"));
        assert!(kept.exists());
    }

    #[test]
    fn unwritable_dir_is_a_clear_error() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("a-file");
        fs::write(&file, b"x").unwrap();
        let err = FileFlash::open(&file.join("sub")).err().unwrap();
        assert!(matches!(err, crate::SimError::StateDir { .. }), "{err}");
        assert!(err.to_string().contains("cannot create state dir"), "{err}");
    }
}
