//! `hil sim` refuses bad flags at start-up with exit 2 and the reason, and
//! says at boot where each setting came from; `--broker` wins over a broker
//! stored in flash by `!config`, unless `--prefer-flash-settings`.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};

fn sim(extra: &[&str], state: &std::path::Path) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_hil"));
    c.arg("sim")
        .args(["--mac", "24:0a:c4:00:00:09", "--state-dir"])
        .arg(state)
        .args(extra);
    c
}

fn usage_error(extra: &[&str], says: &str) {
    let state = tempfile::tempdir().unwrap();
    let out = sim(extra, state.path())
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{extra:?}: {stderr}");
    assert!(stderr.contains(says), "{extra:?}: {stderr}");
}

#[test]
fn bad_flags_are_usage_errors_with_the_reason() {
    usage_error(&["--broker", "127.0.0.1:0"], "port 0");
    usage_error(
        &["--broker", "127.0.0.1:1883", "--prefix", "a/#"],
        "wildcards",
    );
    usage_error(
        &["--broker", "127.0.0.1:1883", "--prefix", "a/+/b"],
        "wildcards",
    );
    usage_error(
        &["--broker", "127.0.0.1:1883", "--prefix", "a//b"],
        "empty topic level",
    );
    usage_error(
        &["--broker", "127.0.0.1:1883", "--prefix", "$SYS"],
        "reserved",
    );
    usage_error(&["--broker", "no-port"], "--broker no-port");
    usage_error(
        &["--broker", "127.0.0.1:1883", "--keepalive", "0"],
        "keepalive",
    );
}

/// The boot's `config` lines, read until the `boot` line.
fn boot_config(extra: &[&str], state: &std::path::Path) -> Vec<String> {
    let mut child = sim(extra, state)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = Vec::new();
    for line in BufReader::new(child.stdout.take().unwrap()).lines() {
        let line = line.unwrap();
        if line.starts_with("@hil boot ") {
            break;
        }
        lines.push(line);
    }
    let _ = child.kill();
    let _ = child.wait();
    lines
}

#[test]
fn the_flag_wins_over_flash_and_the_boot_says_which() {
    let state = tempfile::tempdir().unwrap();
    let flag = ["--broker", "127.0.0.1:1884"];
    let lines = boot_config(&flag, state.path());
    assert!(
        lines.contains(&"@hil config broker=127.0.0.1:1884 source=flag".to_string()),
        "{lines:?}"
    );
    assert!(
        lines.contains(&"@hil config mqtt=3.1.1 source=flag".to_string()),
        "{lines:?}"
    );
    // A stale broker from an earlier `!config broker=`.
    std::fs::write(state.path().join("settings.txt"), "broker=127.0.0.1:1999\n").unwrap();
    let lines = boot_config(&flag, state.path());
    assert!(
        lines.contains(&"@hil config broker=127.0.0.1:1884 source=flag".to_string()),
        "{lines:?}"
    );
    assert!(
        lines.contains(&"@hil config ignored_flash_broker=127.0.0.1:1999 source=flash".to_string()),
        "{lines:?}"
    );
    let mut prefer = flag.to_vec();
    prefer.push("--prefer-flash-settings");
    let lines = boot_config(&prefer, state.path());
    assert!(
        lines.contains(&"@hil config broker=127.0.0.1:1999 source=flash".to_string()),
        "{lines:?}"
    );
}
