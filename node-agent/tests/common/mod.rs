//! What the node agent's real-kernel tests share: running a command, and removing the
//! namespaces and processes a test made even when it fails.

use std::process::Command;

/// Runs a command; its stdout, or the command line and stderr when it fails.
pub fn sh(args: &[&str]) -> Result<String, String> {
    let out = Command::new(args[0])
        .args(&args[1..])
        .output()
        .map_err(|e| e.to_string())?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(format!(
            "{}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr)
        ))
    }
}

/// Deletes the test's namespaces (and kills what runs in them) even when the test fails.
pub struct Cleanup(pub Vec<String>, pub std::path::PathBuf);

impl Drop for Cleanup {
    fn drop(&mut self) {
        let dir = self.1.display().to_string();
        for entry in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
            let cmdline = std::fs::read(entry.path().join("cmdline")).unwrap_or_default();
            if String::from_utf8_lossy(&cmdline).contains(&dir) {
                let _ = sh(&["kill", "-9", &entry.file_name().to_string_lossy()]);
            }
        }
        for ns in &self.0 {
            let _ = sh(&["ip", "netns", "del", ns]);
        }
        let _ = std::fs::remove_dir_all(&self.1);
    }
}
