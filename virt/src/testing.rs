//! Helpers for tests that run real guests on the host's libvirtd (this crate's and the node
//! agent's): start the daemons, build the test image, and remove everything a test created
//! even when it fails (a `Drop` guard that does not need the async runtime).

use std::{
    path::{Path, PathBuf},
    process::Command,
    sync::Mutex,
    time::{Duration, Instant},
};

use crate::{Error, SYSTEM_URI};

/// The repository root (this crate lives in `<root>/virt`).
pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_default()
}

/// The test guest (see `hack/build-test-image.sh` for what it prints).
#[derive(Clone, Debug)]
pub struct TestImage {
    pub kernel: PathBuf,
    pub initrd: PathBuf,
    /// A 64 MiB qcow2 that starts with `STRATA-TEST-IMAGE`.
    pub disk: PathBuf,
    /// Hex sha256 of `disk`.
    pub disk_sha256: String,
}

/// Builds the test image (once; the script skips the work when it is current) and starts
/// libvirtd. Blocking.
pub fn prepare() -> Result<TestImage, Error> {
    static BUILT: Mutex<Option<TestImage>> = Mutex::new(None);
    let mut built = BUILT
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    if let Some(image) = built.as_ref() {
        return Ok(image.clone());
    }
    crate::daemon::ensure_running(SYSTEM_URI)?;
    let script = repo_root().join("hack/build-test-image.sh");
    let out = Command::new(&script)
        .output()
        .map_err(|source| Error::Spawn {
            program: script.display().to_string(),
            source,
        })?;
    if !out.status.success() {
        return Err(Error::Command {
            program: script.display().to_string(),
            status: out.status.to_string(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        });
    }
    let dir = repo_root().join("target/test-image");
    let sum_file = dir.join("disk.qcow2.sha256");
    let sums = std::fs::read_to_string(&sum_file).map_err(crate::error::io("read", &sum_file))?;
    let image = TestImage {
        kernel: dir.join("vmlinuz"),
        initrd: dir.join("initrd.img"),
        disk: dir.join("disk.qcow2"),
        disk_sha256: sums
            .split_whitespace()
            .next()
            .unwrap_or_default()
            .to_string(),
    };
    *built = Some(image.clone());
    Ok(image)
}

/// A name no other test (or test process) uses: `<prefix>-<pid>-<n>`.
pub fn unique_name(prefix: &str) -> String {
    use std::sync::atomic::{AtomicU32, Ordering};
    static N: AtomicU32 = AtomicU32::new(0);
    format!(
        "{prefix}-{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    )
}

/// A Linux interface name (≤ 15 bytes) unique to this process: `<prefix><pid hex><n>`.
pub fn unique_ifname(prefix: &str) -> String {
    use std::sync::atomic::{AtomicU32, Ordering};
    static N: AtomicU32 = AtomicU32::new(0);
    let name = format!(
        "{prefix}{:x}{:x}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    );
    name.chars().take(crate::spec::MAX_IFNAME).collect()
}

/// Removes, on drop, the domains, bridges and directories a test registered, whether the test
/// passed or panicked. Uses `virsh` and `ip` so it works without (or after) the runtime.
#[derive(Default)]
pub struct Cleanup {
    domains: Vec<String>,
    bridges: Vec<String>,
    dirs: Vec<PathBuf>,
}

impl Cleanup {
    pub fn domain(&mut self, name: &str) {
        self.domains.push(name.to_string());
    }

    /// Creates a bridge for the test's NICs (no uplink: nothing leaves it) and removes it later.
    pub fn bridge(&mut self, name: &str) -> std::io::Result<()> {
        self.bridges.push(name.to_string());
        run("ip", &["link", "add", name, "type", "bridge"])?;
        run("ip", &["link", "set", name, "up"])
    }

    pub fn dir(&mut self, path: &Path) {
        self.dirs.push(path.to_path_buf());
    }
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        for d in &self.domains {
            let _ = run("virsh", &["-q", "-c", SYSTEM_URI, "destroy", d]);
            let _ = run(
                "virsh",
                &[
                    "-q",
                    "-c",
                    SYSTEM_URI,
                    "undefine",
                    d,
                    "--snapshots-metadata",
                ],
            );
        }
        for b in &self.bridges {
            let _ = run("ip", &["link", "del", b]);
        }
        for d in &self.dirs {
            let _ = std::fs::remove_dir_all(d);
        }
    }
}

fn run(program: &str, args: &[&str]) -> std::io::Result<()> {
    let out = Command::new(program).args(args).output()?;
    if out.status.success() {
        Ok(())
    } else {
        Err(std::io::Error::other(format!(
            "{program} {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        )))
    }
}

/// A guest's serial console log, read as the guest writes it.
#[derive(Clone, Debug)]
pub struct SerialLog(pub PathBuf);

impl SerialLog {
    /// The log so far, with the console's CRLF line ends made plain.
    pub fn text(&self) -> String {
        std::fs::read_to_string(&self.0)
            .unwrap_or_default()
            .replace('\r', "")
    }

    /// How many lines contain `needle`.
    pub fn count(&self, needle: &str) -> usize {
        self.text().lines().filter(|l| l.contains(needle)).count()
    }

    /// Waits until at least `n` lines contain `needle`; returns the first such line after the
    /// `n-1`th. Panics with the log on timeout, so a failing test shows what the guest said.
    pub async fn wait_for_nth(&self, needle: &str, n: usize, timeout: Duration) -> String {
        let started = Instant::now();
        loop {
            let text = self.text();
            if let Some(line) = text.lines().filter(|l| l.contains(needle)).nth(n - 1) {
                return line.to_string();
            }
            assert!(
                started.elapsed() < timeout,
                "no {n}. {needle:?} in {} after {timeout:?}; the log:\n{text}",
                self.0.display()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// [`SerialLog::wait_for_nth`] for the first occurrence.
    pub async fn wait_for(&self, needle: &str, timeout: Duration) -> String {
        self.wait_for_nth(needle, 1, timeout).await
    }
}

/// A directory the qemu user can reach (tempdirs are 0700 by default), removed by `cleanup`.
pub fn state_dir(cleanup: &mut Cleanup, prefix: &str) -> PathBuf {
    use std::os::unix::fs::PermissionsExt;
    let dir = std::env::temp_dir().join(unique_name(prefix));
    std::fs::create_dir_all(&dir).expect("creates the test's state dir");
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755))
        .expect("makes the state dir traversable");
    cleanup.dir(&dir);
    dir
}
