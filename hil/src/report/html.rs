//! The HTML report: one self-contained file a reviewer opens first (inline
//! CSS, JS and SVG; the run's data as one JSON block; no network). A summary
//! with failures first, then per scenario a timeline in five lanes (device
//! console, wire device -> broker, wire broker -> device, cloud side, runner),
//! faults as shaded spans, the lines that decided the verdict highlighted,
//! charts of backoff waits and telemetry, and the last verdicts of earlier
//! runs from `history.jsonl`.
//!
//! Why a template by hand rather than a templating crate: the page is one
//! static shell that renders a JSON block in the browser; the only thing Rust
//! fills in is that block.

use super::{evidence, ReportError, Reporter};
use crate::runner::{RunEvent, RunPlan, ScenarioResult, Verdict};
use crate::transcript::{Entry, Source};
use serde_json::{json, Value};
use std::path::{Path, PathBuf};
use std::sync::Arc;

const TEMPLATE: &str = include_str!("report.html");
/// Earlier verdicts shown per scenario.
const HISTORY: usize = 10;
/// Lines before the verdict marked as the evidence that decided it.
const EVIDENCE_LINES: usize = 20;

pub struct HtmlReporter {
    path: PathBuf,
    history: PathBuf,
    plan: Option<RunPlan>,
    results: Vec<Arc<ScenarioResult>>,
}

impl HtmlReporter {
    /// Writes `path`; appends the run to `history` (one JSON line per run).
    pub fn new(path: PathBuf, history: PathBuf) -> Self {
        HtmlReporter {
            path,
            history,
            plan: None,
            results: Vec::new(),
        }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

/// The verdict's kind, as the summary counts it.
pub fn kind(v: &Verdict) -> &'static str {
    match v {
        Verdict::Pass => "pass",
        Verdict::Fail(_) => "fail",
        Verdict::Broker { .. } => "broker",
        Verdict::NotApplicable(_) => "n/a",
        Verdict::Error(_) => "error",
    }
}

/// Which lane of the timeline an entry belongs to.
fn lane(e: &Entry) -> u8 {
    match e.source {
        Source::Device => 0,
        Source::Wire
            if e.text.contains("device -> broker")
                || e.text.contains("closed by the device")
                || e.text.contains(" device connect") =>
        {
            1
        }
        Source::Wire if e.text.starts_with("cloud ") || e.text.starts_with("broker -> cloud") => 3,
        Source::Wire
            if e.text.contains("broker -> device") || e.text.contains("closed by the broker") =>
        {
            2
        }
        Source::Cloud => 3,
        _ => 4,
    }
}

/// Faults and outages as (from, to, label) in ms; an open span ends at the end.
fn spans(entries: &[Entry]) -> Vec<(u64, u64, &'static str)> {
    let end = entries.last().map(|e| e.at.as_millis() as u64).unwrap_or(0);
    let mut out = Vec::new();
    let mut open: Vec<(&'static str, u64)> = Vec::new();
    let start = |label: &'static str, at: u64, open: &mut Vec<(&'static str, u64)>| {
        if !open.iter().any(|(l, _)| *l == label) {
            open.push((label, at));
        }
    };
    for e in entries {
        let at = e.at.as_millis() as u64;
        let t = e.text.as_str();
        let stop = |label: &str, open: &mut Vec<(&'static str, u64)>, out: &mut Vec<_>| {
            if let Some(i) = open.iter().position(|(l, _)| *l == label) {
                let (l, from) = open.remove(i);
                out.push((from, at, l));
            }
        };
        match e.source {
            Source::Device if t.starts_with("@hil wifi state=down") => {
                start("Wi-Fi off", at, &mut open)
            }
            Source::Device if t.starts_with("@hil wifi state=up") => {
                stop("Wi-Fi off", &mut open, &mut out)
            }
            Source::Runner if t.starts_with("broker: kill") => start("broker down", at, &mut open),
            Source::Runner if t.starts_with("broker: start again") => {
                stop("broker down", &mut open, &mut out)
            }
            Source::Runner if t.starts_with("power cut") => start("power off", at, &mut open),
            Source::Device if t.starts_with("@hil boot ") => stop("power off", &mut open, &mut out),
            Source::Wire if t == "link blackhole on" => start("link blackholed", at, &mut open),
            Source::Wire if t == "link blackhole off" => {
                stop("link blackholed", &mut open, &mut out)
            }
            // One span for cuts close together (the teardown cuts every link).
            Source::Wire if t.ends_with("cut by the proxy") => match out.last_mut() {
                Some((_, to, "link cut")) if at <= *to => *to = at + 150,
                _ => out.push((at, at + 150, "link cut")),
            },
            _ => {}
        }
    }
    for (l, from) in open {
        out.push((from, end.max(from + 150), l));
    }
    out
}

/// The entries that decided the verdict: the runner's verdict lines, and for
/// anything but a pass the lines before the end of the scenario.
fn evidence_marks(r: &ScenarioResult, entries: &[Entry]) -> Vec<bool> {
    let mut marks: Vec<bool> = entries
        .iter()
        .map(|e| {
            e.source == Source::Runner
                && (e.text.starts_with("verdict") || e.text.starts_with("FAILED"))
        })
        .collect();
    if !matches!(r.verdict, Verdict::Pass) {
        // The lines before the verdict, without the teardown (the proxy
        // cutting every link once the scenario is over decides nothing).
        let last = marks.iter().rposition(|m| *m).unwrap_or(entries.len());
        let teardown = |e: &Entry| e.source == Source::Note || e.text.ends_with("cut by the proxy");
        let mut left = EVIDENCE_LINES;
        for i in (0..last).rev() {
            if left == 0 {
                break;
            }
            if !teardown(&entries[i]) {
                marks[i] = true;
                left -= 1;
            }
        }
    }
    marks
}

/// After the first broker kill: connection attempts per 100 ms, as the proxy
/// saw them (every device of the run connects through it; consoles are not
/// counted, so an attempt is counted once and no device can forge one). A
/// fleet without jitter shows one tall bar; with jitter, a spread.
fn storm_buckets(entries: &[Entry]) -> Option<Vec<u32>> {
    static RE: std::sync::OnceLock<regex::Regex> = std::sync::OnceLock::new();
    let re = RE.get_or_init(|| {
        regex::Regex::new(r"^#\d+ device (connected|connect attempt reset)").unwrap()
    });
    let kill = entries
        .iter()
        .find(|e| e.source == Source::Runner && e.text.starts_with("broker: kill"))?
        .at;
    let mut buckets: Vec<u32> = Vec::new();
    for e in entries
        .iter()
        .filter(|e| e.at >= kill && e.source == Source::Wire && re.is_match(&e.text))
    {
        let b = ((e.at - kill).as_millis() / 100) as usize;
        if buckets.len() <= b {
            buckets.resize(b + 1, 0);
        }
        buckets[b] += 1;
    }
    (buckets.len() >= 2).then_some(buckets)
}

/// The QoS lab's table, from its note: per QoS [qos, sent, delivered, lost,
/// duplicated].
fn qos_table(entries: &[Entry]) -> Option<Vec<[u32; 5]>> {
    let note = entries
        .iter()
        .find(|e| e.source == Source::Note && e.text.starts_with("QoS lab"))?;
    let rows: Vec<[u32; 5]> = note
        .text
        .lines()
        .filter_map(|l| {
            let f: Vec<u32> = l
                .split_whitespace()
                .take(5)
                .map(str::parse)
                .collect::<Result<_, _>>()
                .ok()?;
            <[u32; 5]>::try_from(f).ok()
        })
        .collect();
    (!rows.is_empty()).then_some(rows)
}

/// Whether a run had jitter: its negative controls did not include no-jitter.
fn jittered(bugs: &[&str]) -> bool {
    !bugs.contains(&hil_session::Bug::NoJitter.name())
}

/// The storm of the latest earlier run with the other jitter setting: the
/// no-jitter control beside a normal run, or the normal run beside the
/// control. Null when no such run is on record.
fn storm_control(history: &[Value], name: &str, jitter: bool) -> Value {
    history
        .iter()
        .rev()
        .find_map(|h| {
            let bugs: Vec<&str> = h
                .get("bugs")?
                .as_array()?
                .iter()
                .filter_map(Value::as_str)
                .collect();
            if jittered(&bugs) == jitter {
                return None;
            }
            let buckets = h.get("storm")?.get(name)?;
            Some(json!({ "time": h.get("time"), "jitter": !jitter, "buckets": buckets }))
        })
        .unwrap_or(Value::Null)
}

fn device_version(entries: &[Entry]) -> Option<String> {
    entries.iter().find_map(|e| {
        let rest = e.text.strip_prefix("@hil boot ")?;
        rest.split(' ')
            .find_map(|kv| kv.strip_prefix("version="))
            .map(str::to_owned)
    })
}

/// Where the scenario tests keep this scenario's accepted snapshot, when
/// `hil run` is started from the repository.
const SNAPSHOTS: &str = "hil/tests/snapshots";

/// Client IDs and MACs differ by design between `hil run` and the tests.
fn comparable(text: &str) -> String {
    static RE: std::sync::OnceLock<[regex::Regex; 2]> = std::sync::OnceLock::new();
    let [id, mac] = RE.get_or_init(|| {
        [
            regex::Regex::new(r"esp32c3-[0-9a-f]{12}").unwrap(),
            regex::Regex::new(r"([0-9a-f]{2}:){5}[0-9a-f]{2}").unwrap(),
        ]
    });
    let t = id.replace_all(text, "<ID>");
    mac.replace_all(&t, "<MAC>").into_owned()
}

/// The unified diff of this run's normalised transcript against the accepted
/// snapshot (as `cargo insta review` shows it); None when there is none to
/// compare with (not the sim, negative controls on, or no snapshot file).
fn snapshot_diff(r: &ScenarioResult, plan: Option<&RunPlan>) -> Option<(bool, String)> {
    let plan = plan?;
    if plan.backend != "sim" || !plan.bugs.is_empty() || !matches!(r.verdict, Verdict::Pass) {
        return None;
    }
    let v = if r.mqtt == hil_broker::MqttVersion::V5 {
        "v5"
    } else {
        "v3"
    };
    let file =
        Path::new(SNAPSHOTS).join(format!("scenarios__{}__{}__{v}.snap", r.name, plan.broker));
    let stored = std::fs::read_to_string(file).ok()?;
    // insta's file: a YAML header between two `---` lines, then the snapshot.
    let accepted = stored.splitn(3, "---\n").nth(2)?;
    let now = format!("verdict: pass\n{}", r.transcript.normalized());
    let (a, b) = (comparable(accepted.trim_end()), comparable(now.trim_end()));
    if a == b {
        return Some((true, String::new()));
    }
    let diff = similar::TextDiff::from_lines(&a, &b)
        .unified_diff()
        .header("accepted snapshot", "this run")
        .to_string();
    Some((false, diff))
}

fn scenario_json(r: &ScenarioResult, history: &[Value], plan: Option<&RunPlan>) -> Value {
    let snapshot = snapshot_diff(r, plan);
    let entries = r.transcript.entries();
    let past = past_verdicts(history, r.name);
    let jitter =
        plan.is_none_or(|p| jittered(&p.bugs.iter().map(|b| b.name()).collect::<Vec<_>>()));
    let storm = storm_buckets(&entries);
    let control = match storm {
        Some(_) => storm_control(history, r.name, jitter),
        None => Value::Null,
    };
    let marks = evidence_marks(r, &entries);
    let lines: Vec<Value> = entries
        .iter()
        .zip(&marks)
        .map(|(e, m)| {
            // Extra devices' consoles share the runner's lane: say whose they are.
            let text = match e.source {
                Source::Fleet => format!("fleet: {}", e.text),
                _ => e.text.clone(),
            };
            json!([e.at.as_millis() as u64, lane(e), text, *m as u8])
        })
        .collect();
    let spans: Vec<Value> = spans(&entries)
        .into_iter()
        .map(|(a, b, l)| json!([a, b, l]))
        .collect();
    json!({
        "name": r.name,
        "kind": kind(&r.verdict),
        "verdict": evidence::verdict_text(&r.verdict),
        "promise": r.failure().map(|f| f.promise.to_string()),
        "duration_s": r.duration.as_secs_f64(),
        "mqtt": r.mqtt.to_string(),
        "lines": lines,
        "spans": spans,
        "history": past,
        "storm": storm,
        "storm_jitter": jitter,
        "storm_control": control,
        "qos": qos_table(&entries),
        "snapshot": snapshot.as_ref().map(|(same, _)| if *same { "same" } else { "differs" }),
        "snapshot_diff": snapshot.map(|(_, d)| d),
    })
}

/// Each scenario's verdict kinds in earlier runs, oldest first.
fn read_history(path: &Path) -> Vec<Value> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect()
}

fn past_verdicts(history: &[Value], name: &str) -> Vec<String> {
    let mut v: Vec<String> = history
        .iter()
        .filter_map(|h| h.get("verdicts")?.get(name)?.as_str().map(str::to_owned))
        .collect();
    let skip = v.len().saturating_sub(HISTORY);
    v.drain(..skip);
    v
}

/// The page: the template with the run's JSON in its data block. `</` is
/// escaped so no transcript line can close the script element.
pub fn render(data: &Value) -> String {
    let json = data.to_string().replace("</", "<\\/");
    TEMPLATE.replace("/*HIL-DATA*/null", &json)
}

impl Reporter for HtmlReporter {
    fn report(&mut self, event: &RunEvent) -> Result<(), ReportError> {
        match event {
            RunEvent::Started(plan) => self.plan = Some(plan.clone()),
            RunEvent::ScenarioFinished { result, .. } => self.results.push(result.clone()),
            RunEvent::Finished(summary) => {
                let history = read_history(&self.history);
                let mut counts = serde_json::Map::new();
                for k in ["fail", "broker", "error", "pass", "n/a"] {
                    let n = self
                        .results
                        .iter()
                        .filter(|r| kind(&r.verdict) == k)
                        .count();
                    counts.insert(k.into(), json!(n));
                }
                let version = self
                    .results
                    .iter()
                    .find_map(|r| device_version(&r.transcript.entries()));
                let plan = self.plan.as_ref();
                let scenarios: Vec<Value> = self
                    .results
                    .iter()
                    .map(|r| scenario_json(r, &history, plan))
                    .collect();
                let now = std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map(|d| d.as_secs())
                    .unwrap_or(0);
                let run = json!({
                    "time": now,
                    "backend": plan.map(|p| p.backend),
                    "broker": plan.map(|p| p.broker),
                    "mqtt": plan.map(|p| if p.auto_v5 { format!("{} (5 where needed)", p.mqtt) } else { p.mqtt.to_string() }),
                    "bugs": plan.map(|p| p.bugs.iter().map(|b| b.name()).collect::<Vec<_>>()),
                    "device_version": version,
                    "hil_version": env!("CARGO_PKG_VERSION"),
                    "wall_s": summary.wall.as_secs_f64(),
                    "counts": counts,
                });
                let page = render(&json!({ "run": run, "scenarios": &scenarios }));
                let write = |path: &Path, text: &str, append: bool| {
                    use std::io::Write;
                    if let Some(dir) = path.parent() {
                        let _ = std::fs::create_dir_all(dir);
                    }
                    let file = std::fs::OpenOptions::new()
                        .create(true)
                        .append(append)
                        .write(true)
                        .truncate(!append)
                        .open(path);
                    file.and_then(|mut f| f.write_all(text.as_bytes()))
                        .map_err(|source| ReportError::Write {
                            path: path.into(),
                            source,
                        })
                };
                write(&self.path, &page, false)?;
                let verdicts: serde_json::Map<String, Value> = self
                    .results
                    .iter()
                    .map(|r| (r.name.to_string(), json!(kind(&r.verdict))))
                    .collect();
                let line = json!({
                    "time": now,
                    "backend": run["backend"],
                    "broker": run["broker"],
                    "mqtt": run["mqtt"],
                    "bugs": run["bugs"],
                    "version": run["device_version"],
                    "verdicts": verdicts,
                });
                let mut line = line;
                let storms: serde_json::Map<String, Value> = scenarios
                    .iter()
                    .filter(|s| !s["storm"].is_null())
                    .map(|s| {
                        (
                            s["name"].as_str().unwrap_or("").to_string(),
                            s["storm"].clone(),
                        )
                    })
                    .collect();
                if !storms.is_empty() {
                    line["storm"] = Value::Object(storms);
                }
                write(&self.history, &format!("{line}\n"), true)?;
            }
            _ => {}
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn entry(ms: u64, source: Source, text: &str) -> Entry {
        Entry {
            at: Duration::from_millis(ms),
            source,
            text: text.into(),
        }
    }

    #[test]
    fn faults_become_spans_and_lines_find_their_lanes() {
        let e = vec![
            entry(0, Source::Device, "@hil wifi state=up"),
            entry(100, Source::Device, "@hil wifi state=down"),
            entry(200, Source::Runner, "broker: kill -9"),
            entry(300, Source::Device, "@hil wifi state=up"),
            entry(400, Source::Wire, "#2 cut by the proxy"),
            entry(900, Source::Runner, "broker: start again"),
        ];
        assert_eq!(
            spans(&e),
            vec![
                (100, 300, "Wi-Fi off"),
                (400, 550, "link cut"),
                (200, 900, "broker down")
            ]
        );
        assert_eq!(
            lane(&entry(0, Source::Wire, "#1 device -> broker CONNECT x")),
            1
        );
        assert_eq!(
            lane(&entry(0, Source::Wire, "#1 broker -> device CONNACK")),
            2
        );
        assert_eq!(
            lane(&entry(0, Source::Wire, "broker -> cloud c PUBLISH t")),
            3
        );
        assert_eq!(lane(&entry(0, Source::Runner, "verdict: ok")), 4);
        assert_eq!(lane(&entry(0, Source::Wire, "#3 device connected")), 1);
        assert_eq!(
            lane(&entry(
                0,
                Source::Wire,
                "#4 device connect attempt reset (broker unreachable)"
            )),
            1
        );
    }

    #[test]
    fn the_storm_is_counted_from_the_kill_and_the_control_comes_from_history() {
        let e = vec![
            entry(50, Source::Wire, "#1 device connected"),
            entry(1000, Source::Runner, "broker: kill -9"),
            entry(
                1050,
                Source::Wire,
                "#7 device connect attempt reset (broker unreachable)",
            ),
            entry(1060, Source::Device, "@hil mqtt.connect attempt=2"),
            entry(
                1080,
                Source::Wire,
                "#8 device connect attempt reset (broker unreachable)",
            ),
            entry(1320, Source::Wire, "#9 device connected"),
        ];
        assert_eq!(
            storm_buckets(&e),
            Some(vec![2, 0, 0, 1]),
            "attempts from the proxy only, from the kill on"
        );
        assert_eq!(storm_buckets(&e[..2]), None, "no attempts: no chart");
        let history = vec![
            json!({"time": 1, "bugs": ["no-jitter"], "storm": {"reconnect_storm": [9, 1]}}),
            json!({"time": 2, "bugs": [], "storm": {"reconnect_storm": [2, 2]}}),
            json!({"time": 3, "bugs": ["no-dedupe"]}),
        ];
        let c = storm_control(&history, "reconnect_storm", true);
        assert_eq!(
            c["buckets"],
            json!([9, 1]),
            "a jittered run is shown beside the no-jitter control"
        );
        assert_eq!(c["jitter"], json!(false));
        let c = storm_control(&history, "reconnect_storm", false);
        assert_eq!(
            c["buckets"],
            json!([2, 2]),
            "the control is shown beside the latest jittered run"
        );
        assert!(storm_control(&history[..1], "reconnect_storm", false).is_null());
    }

    #[test]
    fn the_qos_lab_table_is_read_from_its_note() {
        let note = "QoS lab, 20 % of messages hit by a link cut (seeded):\n\
                    qos  sent  delivered  lost  duplicated  duplicates-with-DUP\n  \
                    0   100         80    20           0  0/0\n  \
                    1   100        100     0           5  5/5\n";
        let e = vec![entry(0, Source::Note, note)];
        assert_eq!(
            qos_table(&e),
            Some(vec![[0, 100, 80, 20, 0], [1, 100, 100, 0, 5]])
        );
        assert_eq!(qos_table(&[entry(0, Source::Note, "other")]), None);
    }

    #[test]
    fn no_transcript_line_can_end_the_data_block() {
        let page = render(&json!({"x": "</script><script>alert(1)</script>"}));
        assert!(!page.contains("</script><script>alert(1)"));
        assert!(page.contains("<\\/script>"));
    }
}
