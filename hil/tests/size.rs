//! `hil size` as a user runs it: the text's worked numbers come out of the
//! binary, and bad input is a usage error (exit 2) that says what to pass.

use std::process::Command;

fn hil(args: &[&str]) -> (i32, String, String) {
    let o = Command::new(env!("CARGO_BIN_EXE_hil"))
        .arg("size")
        .args(args)
        .output()
        .expect("hil runs");
    (
        o.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&o.stdout).into_owned(),
        String::from_utf8_lossy(&o.stderr).into_owned(),
    )
}

#[test]
fn worked_numbers_from_the_command_line() {
    let (rc, out, _) = hil(&["queue", "--devices", "10000", "--offline", "1d"]);
    assert_eq!(rc, 0);
    assert!(
        out.contains("201,600 B") && out.contains("1.88 GiB"),
        "{out}"
    );
    let (rc, out, _) = hil(&["burst"]);
    assert_eq!(rc, 0);
    assert!(out.contains("50,000,000 B"), "{out}");
    let (rc, out, _) = hil(&["storm", "--devices", "200"]);
    assert_eq!(rc, 0);
    assert!(
        out.contains("peak connects with/without jitter: 1/"),
        "{out}"
    );
}

#[test]
fn bad_input_is_a_usage_error() {
    let (rc, _, err) = hil(&["queue", "--offline", "3y"]);
    assert_eq!(rc, 2);
    assert!(err.contains("the unit is ms, s, m, h or d"), "{err}");
    let (rc, _, err) = hil(&["buffer", "--budget", "lots"]);
    assert_eq!(rc, 2);
    assert!(err.contains("expected a number of bytes"), "{err}");
    let (rc, _, err) = hil(&["collision", "--alphabet", "1"]);
    assert_eq!(rc, 2);
    assert!(err.contains("--alphabet must be 2 or more"), "{err}");
}
