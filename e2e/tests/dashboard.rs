//! The operator console in a real browser: headless Chromium (Debian's) driven by Playwright
//! (`e2e/ui/dashboard.mjs`) against `strata up`, with kubectl making and checking changes, and an
//! image the script serves slowly on 127.0.0.1 to watch a progress bar move.
//! Screenshots land in `target/e2e-screenshots/`.

mod support;

use std::process::Command;

use support::{repo_file, Strata};

#[test]
fn dashboard_shows_the_datacenter_live_and_stops_a_vm() {
    let ui = repo_file("e2e/ui");
    assert!(
        ui.join("node_modules/playwright-core").exists()
            && std::path::Path::new("/usr/bin/chromium").exists(),
        "chromium or playwright-core is missing: run hack/install-deps.sh"
    );
    let dir = tempfile::tempdir().expect("tempdir");
    let strata = Strata::start(dir.path(), &["--sim-hosts", "2"]);
    let quickstart = repo_file("manifests/examples/quickstart.yaml");
    strata.ok(&["apply", "-f", quickstart.to_str().unwrap()]);
    strata.ok(&[
        "wait",
        "--for=jsonpath={.status.phase}=Running",
        "vm/demo",
        "--timeout=60s",
    ]);

    let out = Command::new("node")
        .arg(ui.join("dashboard.mjs"))
        .env("STRATA_URL", strata.server_url())
        .env("STRATA_TOKEN", strata.token())
        .env("KUBECONFIG", strata.kubeconfig())
        .env("EXPECT_HOSTS", "2")
        .env("SCREENSHOTS", repo_file("target/e2e-screenshots"))
        .env("IMAGE_STORE", dir.path().join("backup-storage"))
        .output()
        .expect("node runs");
    assert!(
        out.status.success(),
        "dashboard checks failed:\n{}\n{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
        strata.log_tail()
    );
    strata.stop();
}
