//! The probe backend's flasher: probe-rs as a library over the C3's built-in
//! USB-JTAG. The image (bootloader, partition table, app) is made by espflash,
//! exactly as for serial flashing, and written region by region with
//! probe-rs's flash loader; then the core is reset. The console stays on the
//! serial port (USB-Serial-JTAG shares the same USB cable).

use std::path::Path;

/// The probes probe-rs sees, as `VID:PID[:SERIAL]` selectors.
pub fn list() -> Result<Vec<String>, String> {
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
    Err(not_built())
}

#[cfg(not(feature = "probe"))]
fn not_built() -> String {
    "probe support is not built in: cargo build -p hil --features probe (probe-rs takes a few minutes to build)".into()
}

/// Flashes `elf` through the probe chosen by `selector` (VID:PID[:SERIAL];
/// None = the only probe attached) and resets the chip.
pub fn flash(
    selector: Option<&str>,
    elf: &Path,
    chip: espflash::target::Chip,
) -> Result<(), String> {
    #[cfg(feature = "probe")]
    {
        use probe_rs::flashing::DownloadOptions;
        use probe_rs::Permissions;

        let elf_data =
            std::fs::read(elf).map_err(|e| format!("cannot read {}: {e}", elf.display()))?;
        let lister = probe_rs::probe::list::Lister::new();
        let probes = lister.list_all();
        let probe = match selector {
            Some(sel) => {
                let sel: probe_rs::probe::DebugProbeSelector =
                    sel.parse().map_err(|e| format!("probe selector `{sel}`: {e} (expected VID:PID[:SERIAL], e.g. 303a:1001)"))?;
                lister.open(sel).map_err(|e| format!("cannot open probe {}: {e} (`hil doctor` lists the probes)", selector.unwrap_or_default()))?
            }
            None => match probes.as_slice() {
                [] => {
                    return Err(
                        "no debug probe found: plug the board's USB (the ESP32-C3's built-in USB-JTAG is 303a:1001), \
                         check its udev permissions, or flash over serial instead (--dut serial)"
                            .into(),
                    )
                }
                [only] => only.open().map_err(|e| format!("cannot open probe {}: {e}", only.identifier))?,
                _ => return Err(format!("{} probes attached: choose one with --probe VID:PID:SERIAL", probes.len())),
            },
        };
        let target = match chip {
            espflash::target::Chip::Esp32c3 => "esp32c3",
            espflash::target::Chip::Esp32c6 => "esp32c6",
            other => {
                return Err(format!(
                    "the probe backend does not know how to flash {other}"
                ))
            }
        };
        let mut session = probe.attach(target, Permissions::default()).map_err(|e| {
            format!(
                "cannot attach to the {target}: {e} (wrong chip, or the board is held in reset?)"
            )
        })?;
        let image = crate::firmware::idf_image(&elf_data, elf, chip)?;
        let mut loader = session.target().flash_loader();
        for segment in image.flash_segments() {
            loader
                .add_data(segment.addr as u64, &segment.data)
                .map_err(|e| format!("flash region at {:#x}: {e}", segment.addr))?;
        }
        loader
            .commit(&mut session, DownloadOptions::default())
            .map_err(|e| format!("flashing through the probe failed: {e}"))?;
        session
            .core(0)
            .and_then(|mut c| c.reset())
            .map_err(|e| format!("reset through the probe failed: {e}"))?;
        Ok(())
    }
    #[cfg(not(feature = "probe"))]
    {
        let _ = (selector, elf, chip);
        Err(not_built())
    }
}
