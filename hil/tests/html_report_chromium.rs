//! The HTML report in a real browser (ci profile; `.ci/run` installs Debian's
//! chromium; the default profile leaves this test out so a fresh clone needs
//! only cargo). A real `hil run` of one passing scenario and one negative
//! control that fails it, rendered with headless Chromium: the DOM after the
//! scripts ran must hold every scenario with its verdict, the broken promise,
//! populated timeline lanes, evidence rows, and no script errors. A
//! screenshot is kept at target/hil/report-screenshot.png for CI to archive.
//! A second test: the charts people look at rather than read (the storm
//! beside its no-jitter control from the history, the QoS lab's bars), from
//! real runs on mosquitto.

use std::path::{Path, PathBuf};
use std::process::Command;

fn chromium() -> PathBuf {
    ["chromium", "chromium-browser", "google-chrome"]
        .iter()
        .map(PathBuf::from)
        .find(|p| {
            Command::new(p)
                .arg("--version")
                .output()
                .is_ok_and(|o| o.status.success())
        })
        .expect("chromium on PATH (apt-get install chromium; .ci/run installs it)")
}

fn headless(page: &Path, extra: &[&str]) -> std::process::Output {
    headless_url(&format!("file://{}", page.display()), extra)
}

fn headless_url(url: &str, extra: &[&str]) -> std::process::Output {
    Command::new(chromium())
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--no-first-run",
            "--disable-dev-shm-usage",
            "--virtual-time-budget=5000",
        ])
        .args(extra)
        .arg(url)
        .output()
        .expect("chromium runs")
}

#[test]
fn a_real_run_renders_in_chromium() {
    // Under target/, not a temp dir: when this test fails, the run's
    // transcripts and failure evidence stay for CI to archive.
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/hil/report-test");
    let _ = std::fs::remove_dir_all(&dir);
    let out = dir.join("run");
    let status = Command::new(env!("CARGO_BIN_EXE_hil"))
        .args([
            "run",
            "--scenario",
            "boot_identity",
            "--scenario",
            "duplicate_command",
        ])
        .args(["--sim-bug", "no-dedupe", "--out"])
        .arg(&out)
        .status()
        .unwrap();
    assert_eq!(
        status.code(),
        Some(1),
        "the negative control fails its scenario"
    );
    let page = out.join("report.html");
    let size = std::fs::metadata(&page).unwrap().len();
    assert!(size < 2 * 1024 * 1024, "report is {size} B");
    let history = std::fs::read_to_string(dir.join("history.jsonl")).unwrap();
    assert!(
        history.contains("\"duplicate_command\":\"fail\""),
        "{history}"
    );

    let dom = headless(&page, &["--dump-dom"]);
    let dom = String::from_utf8_lossy(&dom.stdout);
    assert!(
        dom.contains("data-ready=\"1\""),
        "the script finished:\n{dom:.2000}"
    );
    assert!(dom.contains("data-errors=\"0\""), "no script errors");
    assert!(
        dom.contains("data-name=\"boot_identity\" data-kind=\"pass\""),
        "passing scenario listed"
    );
    assert!(
        dom.contains("data-name=\"duplicate_command\" data-kind=\"fail\""),
        "failure listed"
    );
    assert!(
        dom.contains("a redelivered command is executed once"),
        "the broken promise is visible"
    );
    for lane in 0..5 {
        assert!(
            dom.contains(&format!("<tr data-lane=\"{lane}\"")),
            "lane {lane} has rows"
        );
    }
    assert!(dom.contains("class=\"ev\""), "the evidence rows are marked");
    assert!(
        dom.contains("0.1.0"),
        "the device's version from its boot line"
    );
    let load = dom
        .split("data-load-ms=\"")
        .nth(1)
        .and_then(|r| r.split('"').next())
        .unwrap_or("?");
    eprintln!("report: {size} B, script ran in {load} ms");

    let shot = Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/hil/report-screenshot.png");
    std::fs::create_dir_all(shot.parent().unwrap()).unwrap();
    let s = headless(
        &page,
        &[
            &format!("--screenshot={}", shot.display()),
            "--window-size=1400,1000",
        ],
    );
    assert!(s.status.success() && shot.exists(), "screenshot taken");
}

/// `hil run` into `out`; its exit code.
fn hil_run(out: &Path, args: &[&str]) -> Option<i32> {
    Command::new(env!("CARGO_BIN_EXE_hil"))
        .arg("run")
        .args(args)
        .arg("--out")
        .arg(out)
        .status()
        .unwrap()
        .code()
}

#[test]
fn the_storm_is_drawn_beside_its_no_jitter_control_and_the_qos_lab_as_bars_on_mosquitto() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/hil/report-charts-test");
    let _ = std::fs::remove_dir_all(&dir);
    // The control first: its storm goes into history.jsonl beside both runs.
    let control = [
        "--broker",
        "mosquitto",
        "--scenario",
        "reconnect_storm",
        "--sim-bug",
        "no-jitter",
    ];
    assert_eq!(
        hil_run(&dir.join("control"), &control),
        Some(1),
        "no-jitter fails the storm"
    );
    let normal = [
        "--broker",
        "mosquitto",
        "--scenario",
        "reconnect_storm",
        "--scenario",
        "qos_lab",
    ];
    assert_eq!(hil_run(&dir.join("run"), &normal), Some(0));
    let page = dir.join("run/report.html");
    // `#all` opens passing scenarios too.
    let dom = headless_url(&format!("file://{}#all", page.display()), &["--dump-dom"]);
    let dom = String::from_utf8_lossy(&dom.stdout);
    assert!(
        dom.contains("data-ready=\"1\""),
        "the script finished:\n{dom:.2000}"
    );
    assert!(dom.contains("data-errors=\"0\""), "no script errors");
    assert!(
        dom.contains("beside the no-jitter control"),
        "the storm chart is there"
    );
    assert!(dom.contains("this run (jitter): peak"), "this run's storm");
    assert!(
        dom.contains("no-jitter control, run of"),
        "the control's storm, from history"
    );
    assert!(
        dom.matches("class=\"storm-bar\"").count() > 10,
        "storm bars drawn"
    );
    assert_eq!(
        dom.matches("class=\"qos-bar\"").count(),
        9,
        "delivered, lost, duplicated for QoS 0, 1, 2"
    );
    assert!(
        dom.contains("QoS 1: 100 delivered of 100 sent"),
        "the QoS 1 bar says what it counts"
    );
}
