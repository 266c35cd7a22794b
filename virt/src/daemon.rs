//! Starts virtlogd and libvirtd on hosts without systemd (no socket activation).
//!
//! Idempotent and safe when several processes race (test binaries run in parallel): a file
//! lock serialises the starts, and whoever gets it second finds the daemon answering. The first
//! start takes ~8 s while libvirtd probes QEMU's capabilities; later ones ~0.2 s.

use std::{
    fs::File,
    path::Path,
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use crate::Error;

/// Where the lock and pid files live.
pub const RUN_DIR: &str = "/run/strata-libvirt";
const START_TIMEOUT: Duration = Duration::from_secs(60);

/// True when a client can talk to the daemon at `uri`.
pub fn answers(uri: &str) -> bool {
    virt::error::clear_error_callback();
    virt::connect::Connect::open(Some(uri)).is_ok()
}

/// Makes sure libvirtd (and virtlogd, which writes serial console logs) answer at `uri`,
/// starting them if needed. Blocking: call it from a blocking context.
pub fn ensure_running(uri: &str) -> Result<(), Error> {
    if answers(uri) {
        return Ok(());
    }
    std::fs::create_dir_all(RUN_DIR).map_err(crate::error::io("create", RUN_DIR))?;
    let lock_path = Path::new(RUN_DIR).join("lock");
    let lock = File::create(&lock_path).map_err(crate::error::io("create", &lock_path))?;
    lock.lock().map_err(crate::error::io("lock", &lock_path))?;
    if answers(uri) {
        return Ok(());
    }
    for daemon in ["virtlogd", "libvirtd"] {
        if !running(daemon) {
            let pid = Path::new(RUN_DIR).join(format!("{daemon}.pid"));
            let status = Command::new(daemon)
                .arg("-d")
                .arg("-p")
                .arg(&pid)
                .stdin(Stdio::null())
                .status()
                .map_err(|source| Error::Spawn {
                    program: daemon.into(),
                    source,
                })?;
            if !status.success() {
                return Err(Error::Command {
                    program: daemon.into(),
                    status: status.to_string(),
                    stderr: String::new(),
                });
            }
        }
    }
    let started = Instant::now();
    while started.elapsed() < START_TIMEOUT {
        if answers(uri) {
            tracing::info!(%uri, after = ?started.elapsed(), "libvirtd started");
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    Err(Error::DaemonStart {
        uri: uri.into(),
        seconds: START_TIMEOUT.as_secs(),
    })
}

/// Whether a process with this exact name runs (pgrep without the dependency).
fn running(name: &str) -> bool {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return false;
    };
    entries.flatten().any(|e| {
        std::fs::read_to_string(e.path().join("comm")).is_ok_and(|comm| comm.trim_end() == name)
    })
}
