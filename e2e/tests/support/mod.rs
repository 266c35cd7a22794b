//! Runs `strata up` as a child process and the real `kubectl` against it.
//!
//! The strata binary is taken from `$STRATA_BIN`, else `target/debug/strata` (hack/test.sh builds
//! it first); kubectl from `$KUBECTL`, else `kubectl` on PATH.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

pub fn strata_bin() -> PathBuf {
    if let Some(bin) = std::env::var_os("STRATA_BIN") {
        return bin.into();
    }
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../target"));
    let bin = target.join("debug/strata");
    assert!(
        bin.exists(),
        "{} is missing: run `cargo build -p strata-cli` first",
        bin.display()
    );
    bin
}

pub fn repo_file(rel: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..").join(rel)
}

/// A running `strata up` on a data dir that outlives it, so a test can restart it.
pub struct Strata {
    pub data_dir: PathBuf,
    child: Option<Child>,
    kubectl: String,
    cache_dir: tempfile::TempDir,
}

impl Strata {
    /// Starts `strata up` and waits until kubectl can read the `default` namespace.
    pub fn start(data_dir: &Path, extra_args: &[&str]) -> Strata {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(data_dir.join("strata.log"))
            .expect("log file opens");
        let _ = std::fs::remove_file(data_dir.join("kubeconfig"));
        let child = Command::new(strata_bin())
            .args(["up", "--data-dir"])
            .arg(data_dir)
            .args(["--listen", "127.0.0.1:0"])
            .args(extra_args)
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("strata starts");
        let strata = Strata {
            data_dir: data_dir.to_owned(),
            child: Some(child),
            kubectl: std::env::var("KUBECTL").unwrap_or_else(|_| "kubectl".into()),
            cache_dir: tempfile::tempdir().expect("tempdir"),
        };
        strata.eventually("the API answers", Duration::from_secs(60), || {
            strata.data_dir.join("kubeconfig").exists()
                && strata
                    .kubectl(&["get", "namespace", "default"])
                    .status
                    .success()
        });
        strata
    }

    pub fn kubeconfig(&self) -> PathBuf {
        self.data_dir.join("kubeconfig")
    }

    /// The API's base URL, as written in the kubeconfig.
    #[allow(dead_code)] // not every test binary that includes this module needs it
    pub fn server_url(&self) -> String {
        let kubeconfig = std::fs::read_to_string(self.kubeconfig()).expect("kubeconfig readable");
        kubeconfig
            .lines()
            .find_map(|l| l.trim().strip_prefix("server: "))
            .expect("kubeconfig names a server")
            .to_owned()
    }

    /// The bearer token `strata up` accepts.
    #[allow(dead_code)] // not every test binary that includes this module needs it
    pub fn token(&self) -> String {
        std::fs::read_to_string(self.data_dir.join("token"))
            .expect("token readable")
            .trim()
            .to_owned()
    }

    /// Runs `kubectl` (or another kubectl binary) against this server.
    pub fn kubectl_with(&self, kubectl: &str, args: &[&str]) -> Output {
        Command::new(kubectl)
            .env("KUBECONFIG", self.kubeconfig())
            .arg("--cache-dir")
            .arg(self.cache_dir.path())
            .args(args)
            .output()
            .unwrap_or_else(|e| panic!("{kubectl} runs: {e}"))
    }

    pub fn kubectl(&self, args: &[&str]) -> Output {
        self.kubectl_with(&self.kubectl, args)
    }

    /// Runs kubectl and returns stdout, failing the test with stderr when it fails.
    pub fn ok(&self, args: &[&str]) -> String {
        let out = self.kubectl(args);
        assert!(
            out.status.success(),
            "kubectl {} failed: {}\n{}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr),
            self.log_tail()
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Polls `check` until it holds, failing with the server log when `timeout` passes.
    pub fn eventually(&self, what: &str, timeout: Duration, mut check: impl FnMut() -> bool) {
        let deadline = Instant::now() + timeout;
        while !check() {
            assert!(
                Instant::now() < deadline,
                "timed out waiting for {what}\n{}",
                self.log_tail()
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// Sends SIGTERM and waits for a clean exit.
    pub fn stop(mut self) {
        let mut child = self.child.take().expect("running");
        let killed = Command::new("kill")
            .args(["-TERM", &child.id().to_string()])
            .status();
        assert!(
            killed.map(|s| s.success()).unwrap_or(false),
            "kill -TERM works"
        );
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(status) = child.try_wait().expect("wait works") {
                assert!(
                    status.success(),
                    "strata exited with {status}\n{}",
                    self.log_tail()
                );
                return;
            }
            assert!(
                Instant::now() < deadline,
                "strata ignored SIGTERM\n{}",
                self.log_tail()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    pub fn log_tail(&self) -> String {
        let log = std::fs::read_to_string(self.data_dir.join("strata.log")).unwrap_or_default();
        let lines: Vec<&str> = log.lines().collect();
        let tail = lines[lines.len().saturating_sub(60)..].join("\n");
        format!("--- last lines of strata.log ---\n{tail}")
    }
}

impl Drop for Strata {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            if std::thread::panicking() {
                let state = self.kubectl(&["get", "strata", "-A", "-o", "wide"]);
                eprintln!("--- state ---\n{}", String::from_utf8_lossy(&state.stdout));
                eprintln!("{}", self.log_tail());
            }
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}
