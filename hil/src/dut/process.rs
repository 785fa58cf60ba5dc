//! A device that is a host process (the sim, the firmware on the host): its
//! power switch. kill -9 is its power cut (it stops at once, flushes nothing);
//! a new process on the same flash is its power coming back.

use super::{Console, DutError, Power};
use std::process::Child;

/// How a backend starts its device process and opens its console.
pub(crate) trait Launch: Send {
    fn spawn(&self) -> Result<(Child, Console), DutError>;
}

pub(crate) struct ProcessPower<L: Launch> {
    child: Option<Child>,
    launch: L,
}

impl<L: Launch> ProcessPower<L> {
    /// Starts the first process: its console, and the switch that owns it.
    pub(crate) fn start(launch: L) -> Result<(Console, Self), DutError> {
        let (child, console) = launch.spawn()?;
        Ok((
            console,
            ProcessPower {
                child: Some(child),
                launch,
            },
        ))
    }
}

impl<L: Launch> Power for ProcessPower<L> {
    fn off(&mut self) -> Result<(), DutError> {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        Ok(())
    }

    fn on(&mut self) -> Result<Console, DutError> {
        self.off()?;
        let (child, console) = self.launch.spawn()?;
        self.child = Some(child);
        Ok(console)
    }
}

impl<L: Launch> Drop for ProcessPower<L> {
    fn drop(&mut self) {
        let _ = self.off();
    }
}
