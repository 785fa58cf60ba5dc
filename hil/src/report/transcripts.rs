//! Each scenario's transcripts: `NAME.raw.txt` (every line, with its time)
//! and `NAME.txt` (normalised: what the insta snapshots review).

use super::{ReportError, Reporter};
use crate::runner::RunEvent;
use std::path::{Path, PathBuf};

pub struct TranscriptWriter {
    dir: PathBuf,
}

impl TranscriptWriter {
    /// Creates `dir` (and its parents).
    pub fn new(dir: &Path) -> Result<Self, ReportError> {
        std::fs::create_dir_all(dir).map_err(|source| ReportError::Write {
            path: dir.into(),
            source,
        })?;
        Ok(TranscriptWriter { dir: dir.into() })
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }
}

fn write(path: PathBuf, text: String) -> Result<(), ReportError> {
    std::fs::write(&path, text).map_err(|source| ReportError::Write { path, source })
}

impl Reporter for TranscriptWriter {
    fn report(&mut self, event: &RunEvent) -> Result<(), ReportError> {
        if let RunEvent::ScenarioFinished { result, .. } = event {
            let base = self.dir.join(result.name);
            write(base.with_extension("raw.txt"), result.transcript.raw())?;
            write(base.with_extension("txt"), result.transcript.normalized())?;
        }
        Ok(())
    }
}
