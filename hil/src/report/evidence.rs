//! Evidence of a failure, kept where CI can archive it: for each scenario
//! that failed or hit a rig error, `<dir>/<name>/` gets `raw.txt` (every
//! line), `wire.txt` (the tap's packets alone), `normalized.txt`, and
//! `verdict.txt` (the broken promise, then the last lines before it).

use super::{ReportError, Reporter};
use crate::runner::{RunEvent, ScenarioResult, Verdict};
use crate::transcript::Source;
use std::path::{Path, PathBuf};

/// How many lines before the verdict `verdict.txt` quotes.
const LAST_LINES: usize = 20;

pub struct FailureEvidence {
    dir: PathBuf,
}

impl FailureEvidence {
    pub fn new(dir: &Path) -> Self {
        FailureEvidence { dir: dir.into() }
    }
}

/// The verdict and the lines that decided it, for a person to read first.
pub fn summary(r: &ScenarioResult) -> String {
    let entries = r.transcript.entries();
    let start = entries.len().saturating_sub(LAST_LINES);
    let mut out = format!("{}: {}\n\nlast lines:\n", r.name, verdict_text(&r.verdict));
    out.extend(entries[start..].iter().map(|e| e.line()));
    out
}

pub fn verdict_text(v: &Verdict) -> String {
    match v {
        Verdict::Pass => "pass".into(),
        Verdict::Fail(f) => f.to_string(),
        Verdict::NotApplicable(why) => format!("not applicable: {why}"),
        Verdict::Error(e) => format!("rig error: {e}"),
        Verdict::Broker { deviations, device } => format!(
            "{}{}",
            super::terminal::broker_text(deviations),
            device
                .as_ref()
                .map(|f| format!(" (and {f})"))
                .unwrap_or_default()
        ),
    }
}

/// Writes the evidence of `r` under `dir/<name>/`; returns that folder.
pub fn write(dir: &Path, name: &str, r: &ScenarioResult) -> Result<PathBuf, ReportError> {
    let folder = dir.join(name);
    let w = |file: &str, text: String| {
        let path = folder.join(file);
        std::fs::write(&path, text).map_err(|source| ReportError::Write { path, source })
    };
    std::fs::create_dir_all(&folder).map_err(|source| ReportError::Write {
        path: folder.clone(),
        source,
    })?;
    w("raw.txt", r.transcript.raw())?;
    w("normalized.txt", r.transcript.normalized())?;
    let wire: String = r
        .transcript
        .entries()
        .iter()
        .filter(|e| e.source == Source::Wire)
        .map(|e| {
            format!(
                "[{:>4}.{:03}] {}\n",
                e.at.as_secs(),
                e.at.subsec_millis(),
                e.text
            )
        })
        .collect();
    w("wire.txt", wire)?;
    w("verdict.txt", summary(r))?;
    Ok(folder)
}

impl Reporter for FailureEvidence {
    fn report(&mut self, event: &RunEvent) -> Result<(), ReportError> {
        if let RunEvent::ScenarioFinished { result, .. } = event {
            if matches!(
                result.verdict,
                Verdict::Fail(_) | Verdict::Error(_) | Verdict::Broker { .. }
            ) {
                write(&self.dir, result.name, result)?;
            }
        }
        Ok(())
    }
}
