//! What several test files need alike: the sim device as a child process
//! (`hil sim --console stdio`), its console read by the runner's own Console.

use hil::dut::Console;
use hil::transcript::{Source, Transcript};
use std::process::{Child, Command, Stdio};

/// Starts `hil sim` with `args` on a stdio console.
pub fn spawn_sim(args: &hil_sim::Args) -> (Child, Console, Transcript) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_hil"))
        .arg("sim")
        .args(args.to_argv())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("hil sim starts");
    let transcript = Transcript::new();
    let console = Console::new(
        Box::new(child.stdout.take().unwrap()),
        Box::new(child.stdin.take().unwrap()),
        &transcript,
        Source::Device,
    );
    (child, console, transcript)
}

/// A running sim device with its flash dir; killed when dropped.
pub struct Sim {
    pub child: Child,
    pub console: Console,
    pub transcript: Transcript,
    pub _state: tempfile::TempDir,
}

impl Sim {
    /// `hil sim` with `args`, its flash in `state` (kept as long as the device).
    pub fn spawn(args: &hil_sim::Args, state: tempfile::TempDir) -> Sim {
        let (child, console, transcript) = spawn_sim(args);
        Sim {
            child,
            console,
            transcript,
            _state: state,
        }
    }
}

impl Drop for Sim {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
