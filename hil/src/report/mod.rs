//! Reporters: each renders the runner's [`RunEvent`]s one way. The terminal
//! shows progress and the summary table; the transcript writer leaves each
//! scenario's raw and normalised transcript; JUnit goes to CI.

pub mod evidence;
pub mod html;
mod junit;
mod terminal;
mod transcripts;

pub use evidence::FailureEvidence;
pub use html::HtmlReporter;
pub use junit::JunitReporter;
pub use terminal::TerminalReporter;
pub use transcripts::TranscriptWriter;

use crate::runner::RunEvent;
use std::path::PathBuf;

/// A reporter could not write what it renders.
#[derive(Debug, thiserror::Error)]
pub enum ReportError {
    #[error("cannot write {path}: {source}")]
    Write {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("JUnit: {0}")]
    Junit(#[from] quick_junit::SerializeError),
}

pub trait Reporter {
    fn report(&mut self, event: &RunEvent) -> Result<(), ReportError>;
}

/// Sends every event to each reporter; keeps the first error (the run goes on).
pub struct Fanout<'a> {
    pub reporters: Vec<&'a mut dyn Reporter>,
    pub error: Option<ReportError>,
}

impl Fanout<'_> {
    pub fn emit(&mut self, event: &RunEvent) {
        for r in self.reporters.iter_mut() {
            if let Err(e) = r.report(event) {
                self.error.get_or_insert(e);
            }
        }
    }
}
