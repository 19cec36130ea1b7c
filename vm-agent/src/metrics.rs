//! Host metrics for heartbeats, from sysinfo. Only platform figures: memory, load, uptime and
//! the root disk's free space; nothing about the customer's processes or files. Only the parts
//! reported are refreshed, so sampling stays cheap in time and memory.

use control_api::agent::HostMetrics;
use sysinfo::System;

/// Samples host metrics; reports zeros for what the platform cannot tell.
#[derive(Debug, Default)]
pub struct Host {
    system: Option<System>,
}

impl Host {
    pub fn new() -> Self {
        Self {
            system: System::new().ok(),
        }
    }

    pub fn sample(&mut self) -> HostMetrics {
        let (total, available) = match self.system.as_mut() {
            Some(system) => {
                system.refresh_memory();
                (system.total_memory(), system.available_memory())
            }
            None => (0, 0),
        };
        let load = System::load_average().ok();
        let centi = |value: f64| {
            let scaled = (value * 100.0).round();
            if scaled.is_finite() && scaled >= 0.0 && scaled <= f64::from(u32::MAX) {
                // In range and whole: the conversion is exact.
                #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
                let whole = scaled as u32;
                whole
            } else {
                0
            }
        };
        HostMetrics {
            cpus: std::thread::available_parallelism()
                .map_or(1, |n| u32::try_from(n.get()).unwrap_or(u32::MAX)),
            load_centi: load.map_or([0; 3], |l| [centi(l.one), centi(l.five), centi(l.fifteen)]),
            memory_total_bytes: total,
            memory_available_bytes: available,
            // fsblkcnt_t is not u64 on every platform.
            #[allow(clippy::useless_conversion)]
            root_free_bytes: nix::sys::statvfs::statvfs("/").map_or(0, |s| {
                u64::from(s.blocks_available()).saturating_mul(u64::from(s.fragment_size()))
            }),
            uptime_s: System::uptime().unwrap_or(0),
        }
    }
}

/// The kernel's id of this boot; a new one means the VM rebooted.
pub fn boot_id() -> String {
    std::fs::read_to_string("/proc/sys/kernel/random/boot_id")
        .map_or_else(|_| "unknown".to_owned(), |id| id.trim().to_owned())
}
