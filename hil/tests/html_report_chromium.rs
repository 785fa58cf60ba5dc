//! The HTML report in a real browser (ci profile; `.ci/run` installs Debian's
//! chromium; the default profile leaves this test out so a fresh clone needs
//! only cargo). A real `hil run` of one passing scenario and one negative
//! control that fails it, rendered with headless Chromium: the DOM after the
//! scripts ran must hold every scenario with its verdict, the broken promise,
//! populated timeline lanes, evidence rows, and no script errors. A
//! screenshot is kept at target/hil/report-screenshot.png for CI to archive.

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
        .arg(format!("file://{}", page.display()))
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
