//! The terminal: a spinner per scenario while it runs, a line per verdict,
//! then the summary table and the run's verdict.

use super::{ReportError, Reporter};
use crate::runner::{RunEvent, Summary, Verdict};
use crate::scenarios::name_width;
use indicatif::{ProgressBar, ProgressStyle};
use std::path::PathBuf;
use std::time::Duration;

pub struct TerminalReporter {
    progress: bool,
    bar: Option<ProgressBar>,
    total: usize,
    /// Printed under the table.
    pub transcripts: Option<PathBuf>,
}

impl TerminalReporter {
    pub fn new(progress: bool, transcripts: Option<PathBuf>) -> Self {
        TerminalReporter {
            progress,
            bar: None,
            total: 0,
            transcripts,
        }
    }
}

fn short(v: &Verdict) -> (&'static str, String) {
    match v {
        Verdict::Pass => ("pass", String::new()),
        Verdict::Fail(f) => ("FAIL", f.to_string()),
        Verdict::NotApplicable(why) => ("n/a", why.clone()),
        Verdict::Error(e) => ("ERROR", format!("rig error: {e}")),
        Verdict::Broker { deviations, .. } => ("broker", broker_text(deviations)),
    }
}

/// The rules a broker broke, for one line.
pub fn broker_text(deviations: &[crate::testbed::monitor::Deviation]) -> String {
    let rules: Vec<String> = deviations.iter().map(|d| d.to_string()).collect();
    format!(
        "the broker broke a rule, the device was not judged: {}",
        rules.join("; ")
    )
}

fn table(s: &Summary, transcripts: Option<&PathBuf>) {
    let w = name_width();
    println!("\n{:<w$} {:<7} {:>8}  detail", "scenario", "result", "time");
    for r in &s.results {
        let (res, detail) = short(&r.verdict);
        let line = format!(
            "{:<w$} {:<7} {:>7.2}s  {}",
            r.name,
            res,
            r.duration.as_secs_f64(),
            detail
        );
        println!("{}", line.trim_end());
    }
    if let Some(dir) = transcripts {
        println!("\ntranscripts: {}", dir.display());
    }
    let verdict = match s.exit_code() {
        0 => "PASS",
        1 => "FAIL",
        3 => "ERROR (rig)",
        _ => "NOTHING JUDGED",
    };
    println!(
        "verdict: {verdict} ({} passed, {} failed, {} not applicable, {} broker, {} rig errors) in {:.1}s",
        s.passed(),
        s.failed(),
        s.not_applicable(),
        s.broker(),
        s.errors(),
        s.wall.as_secs_f64()
    );
}

impl Reporter for TerminalReporter {
    fn report(&mut self, event: &RunEvent) -> Result<(), ReportError> {
        match event {
            RunEvent::Started(plan) => {
                self.total = plan.scenarios.len();
                let bugs: Vec<&str> = plan.bugs.iter().map(|b| b.name()).collect();
                eprintln!(
                    "hil: {} scenario(s) on {} device, broker {}, MQTT {}{}{}",
                    plan.scenarios.len(),
                    plan.backend,
                    plan.broker,
                    plan.mqtt,
                    if plan.auto_v5 {
                        " (5 where a scenario needs it)"
                    } else {
                        ""
                    },
                    if bugs.is_empty() {
                        String::new()
                    } else {
                        format!(", negative controls: {}", bugs.join(","))
                    }
                );
            }
            RunEvent::ScenarioStarted { index, name } => {
                let bar = if self.progress {
                    ProgressBar::new_spinner()
                } else {
                    ProgressBar::hidden()
                };
                if let Ok(style) = ProgressStyle::with_template("{spinner} {msg} {elapsed}") {
                    bar.set_style(style);
                }
                bar.set_message(format!("[{}/{}] {name}", index + 1, self.total));
                bar.enable_steady_tick(Duration::from_millis(100));
                self.bar = Some(bar);
            }
            RunEvent::Line { .. } => {}
            RunEvent::ScenarioFinished { result: r, .. } => {
                if let Some(bar) = self.bar.take() {
                    bar.finish_and_clear();
                }
                let status = match &r.verdict {
                    Verdict::Pass => "PASS ",
                    Verdict::Fail(_) => "FAIL ",
                    Verdict::NotApplicable(_) => "N/A  ",
                    Verdict::Error(_) => "ERROR",
                    Verdict::Broker { .. } => "BROKR",
                };
                eprintln!(
                    "  {status} {:<w$} {:>6.2}s",
                    r.name,
                    r.duration.as_secs_f64(),
                    w = name_width()
                );
                match &r.verdict {
                    Verdict::Fail(f) => eprintln!("        {f}"),
                    Verdict::NotApplicable(why) => eprintln!("        not applicable: {why}"),
                    Verdict::Error(e) => eprintln!("        rig error: {e}"),
                    Verdict::Broker { deviations, device } => {
                        eprintln!("        {}", broker_text(deviations));
                        if let Some(f) = device {
                            eprintln!("        (and the scenario failed: {f})");
                        }
                    }
                    Verdict::Pass => {}
                }
            }
            RunEvent::Finished(summary) => table(summary, self.transcripts.as_ref()),
        }
        Ok(())
    }
}
