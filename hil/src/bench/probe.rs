//! The probe backend's flasher: probe-rs as a library over the C3's built-in
//! USB-JTAG. The image (bootloader, partition table, app) is made by espflash,
//! exactly as for serial flashing, and written region by region with
//! probe-rs's flash loader; then the core is reset. The console stays on the
//! serial port (USB-Serial-JTAG shares the same USB cable).

use super::FlashError;
use std::path::Path;

/// The probes probe-rs sees, as `VID:PID[:SERIAL]` selectors.
pub fn list() -> Result<Vec<String>, FlashError> {
    #[cfg(feature = "probe")]
    {
        let lister = probe_rs::probe::list::Lister::new();
        Ok(lister
            .list_all()
            .into_iter()
            .map(|p| {
                let sn = p
                    .serial_number
                    .clone()
                    .map(|s| format!(":{s}"))
                    .unwrap_or_default();
                format!(
                    "{:04x}:{:04x}{sn} ({})",
                    p.vendor_id, p.product_id, p.identifier
                )
            })
            .collect())
    }
    #[cfg(not(feature = "probe"))]
    Err(FlashError::ProbeNotBuilt)
}

/// Flashes `elf` through the probe chosen by `selector` (VID:PID[:SERIAL];
/// None = the only probe attached) and resets the chip.
pub fn flash(
    selector: Option<&str>,
    elf: &Path,
    chip: espflash::target::Chip,
) -> Result<(), FlashError> {
    #[cfg(feature = "probe")]
    {
        use probe_rs::flashing::DownloadOptions;
        use probe_rs::Permissions;

        let elf_data = std::fs::read(elf).map_err(|source| FlashError::ReadElf {
            path: elf.display().to_string(),
            source,
            hint: "",
        })?;
        let probe_err = |what: String| {
            move |e: &dyn std::fmt::Display| FlashError::Probe {
                what: what.clone(),
                detail: e.to_string(),
            }
        };
        let lister = probe_rs::probe::list::Lister::new();
        let probes = lister.list_all();
        let probe = match selector {
            Some(sel) => {
                let sel: probe_rs::probe::DebugProbeSelector = sel.parse().map_err(|e| {
                    probe_err(format!(
                        "probe selector `{sel}` (expected VID:PID[:SERIAL], e.g. 303a:1001)"
                    ))(&e)
                })?;
                lister.open(sel).map_err(|e| {
                    probe_err(format!(
                        "cannot open probe {} (`hil doctor` lists the probes)",
                        selector.unwrap_or_default()
                    ))(&e)
                })?
            }
            None => match probes.as_slice() {
                [] => return Err(FlashError::NoProbe),
                [only] => only
                    .open()
                    .map_err(|e| probe_err(format!("cannot open probe {}", only.identifier))(&e))?,
                _ => return Err(FlashError::ManyProbes(probes.len())),
            },
        };
        let target = match chip {
            espflash::target::Chip::Esp32c3 => "esp32c3",
            espflash::target::Chip::Esp32c6 => "esp32c6",
            other => return Err(FlashError::ProbeChip(other)),
        };
        let mut session = probe.attach(target, Permissions::default()).map_err(|e| {
            probe_err(format!(
                "cannot attach to the {target} (wrong chip, or the board is held in reset?)"
            ))(&e)
        })?;
        let image = super::firmware::idf_image(&elf_data, elf, chip)?;
        let mut loader = session.target().flash_loader();
        for segment in image.flash_segments() {
            loader
                .add_data(segment.addr as u64, &segment.data)
                .map_err(|e| probe_err(format!("flash region at {:#x}", segment.addr))(&e))?;
        }
        loader
            .commit(&mut session, DownloadOptions::default())
            .map_err(|e| probe_err("flashing through the probe failed".into())(&e))?;
        session
            .core(0)
            .and_then(|mut c| c.reset())
            .map_err(|e| probe_err("reset through the probe failed".into())(&e))?;
        Ok(())
    }
    #[cfg(not(feature = "probe"))]
    {
        let _ = (selector, elf, chip);
        Err(FlashError::ProbeNotBuilt)
    }
}
