//! JUnit XML for CI: a failed promise is a `<failure>`, a rig error an
//! `<error>` (the device was not judged), n/a a `<skipped>` with its reason.

use super::{ReportError, Reporter};
use crate::runner::{RunEvent, Verdict};
use quick_junit::{NonSuccessKind, Report, TestCase, TestCaseStatus, TestSuite};
use std::path::PathBuf;

pub struct JunitReporter {
    path: PathBuf,
    suite: Option<TestSuite>,
}

impl JunitReporter {
    pub fn new(path: PathBuf) -> Self {
        JunitReporter { path, suite: None }
    }
}

impl Reporter for JunitReporter {
    fn report(&mut self, event: &RunEvent) -> Result<(), ReportError> {
        match event {
            RunEvent::Started(plan) => {
                self.suite = Some(TestSuite::new(format!(
                    "{}/{}/mqtt-{}",
                    plan.backend, plan.broker, plan.mqtt
                )));
            }
            RunEvent::ScenarioFinished { result: r, .. } => {
                let status = match &r.verdict {
                    Verdict::Pass => TestCaseStatus::success(),
                    Verdict::Fail(f) => {
                        // The promise as the message; the lines that decided
                        // it as the text, so a CI that renders JUnit shows why.
                        let mut st = TestCaseStatus::non_success(NonSuccessKind::Failure);
                        st.set_message(f.to_string());
                        st.set_description(super::evidence::summary(r));
                        st
                    }
                    Verdict::Error(e) => {
                        let mut st = TestCaseStatus::non_success(NonSuccessKind::Error);
                        st.set_message(format!("rig error: {e}"));
                        st
                    }
                    Verdict::Broker { deviations, .. } => {
                        let mut st = TestCaseStatus::skipped();
                        st.set_message(super::terminal::broker_text(deviations));
                        st
                    }
                    Verdict::NotApplicable(why) => {
                        let mut st = TestCaseStatus::skipped();
                        st.set_message(format!("not applicable: {why}"));
                        st
                    }
                };
                let mut tc = TestCase::new(r.name, status);
                tc.set_time(r.duration);
                // The normalised transcript: what the snapshot holds, short
                // enough to read in a CI's test view (raw.txt has every line).
                tc.set_system_out(r.transcript.normalized());
                if let Some(suite) = &mut self.suite {
                    suite.add_test_case(tc);
                }
            }
            RunEvent::Finished(_) => {
                let mut report = Report::new("hil");
                if let Some(suite) = self.suite.take() {
                    report.add_test_suite(suite);
                }
                let xml = report.to_string()?;
                std::fs::write(&self.path, xml).map_err(|source| ReportError::Write {
                    path: self.path.clone(),
                    source,
                })?;
            }
            _ => {}
        }
        Ok(())
    }
}
