//! No secret reaches what a run writes: a run over TLS with a login, whose
//! device prints its password (the `echo-secrets` control), leaves no
//! password and no private key in any transcript, report or JUnit file:
//! the transcript redacts the password (and the scenario fails on it), and
//! the keys of the test PKI (the broker's TLS listener, the runner's and
//! the device's client certificates) live only in the run's temp dirs.

use std::path::Path;
use std::process::Command;

fn files(dir: &Path, out: &mut Vec<std::path::PathBuf>) {
    for e in std::fs::read_dir(dir).unwrap().flatten() {
        let p = e.path();
        if p.is_dir() {
            files(&p, out);
        } else {
            out.push(p);
        }
    }
}

#[test]
fn mosquitto_a_leaky_device_leaves_no_password_or_key_in_the_outputs() {
    let out = tempfile::tempdir().unwrap();
    let run = Command::new(env!("CARGO_BIN_EXE_hil"))
        .args([
            "run",
            "--tls",
            "--broker",
            "mosquitto",
            "--sim-bug",
            "echo-secrets",
        ])
        .args(["--scenario", "auth_rejected", "--scenario", "tls_connect"])
        .args(["--scenario", "acl_denied", "--scenario", "tls_client_cert"])
        .arg("--out")
        .arg(out.path())
        .arg("--junit")
        .arg(out.path().join("junit.xml"))
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&run.stdout);
    assert!(
        stdout.contains("auth_rejected") && stdout.contains("FAIL"),
        "the leaky device must fail auth_rejected:\n{stdout}"
    );
    let password = regex::Regex::new(r"pw[0-9a-f]{32}").unwrap();
    let mut all = Vec::new();
    files(out.path(), &mut all);
    assert!(all.len() >= 3, "transcripts, report and JUnit: {all:?}");
    let mut redacted = 0;
    for f in &all {
        let text = String::from_utf8_lossy(&std::fs::read(f).unwrap()).into_owned();
        assert!(
            !text.contains("PRIVATE KEY"),
            "{} holds a private key",
            f.display()
        );
        assert!(
            !password.is_match(&text),
            "{} holds a password",
            f.display()
        );
        redacted += text.matches("<redacted>").count();
    }
    for text in [&stdout, &String::from_utf8_lossy(&run.stderr)] {
        assert!(
            !password.is_match(text),
            "the console output holds a password"
        );
    }
    // Not vacuous: the device did print it, and it was redacted.
    assert!(
        redacted > 0,
        "the echo-secrets device's line was not found redacted"
    );
}
