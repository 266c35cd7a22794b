//! The official Python `kubernetes` client (dynamic client, installed by hack/install-deps.sh)
//! drives a VM through its life against `strata up`; the steps are in e2e/python/dynamic_client.py.

mod support;

use std::process::Command;

use support::{repo_file, Strata};

#[test]
fn python_dynamic_client_creates_watches_patches_applies_and_deletes() {
    let dir = tempfile::tempdir().expect("tempdir");
    let strata = Strata::start(dir.path(), &["--sim-hosts", "1"]);
    let quickstart = repo_file("manifests/examples/quickstart.yaml");
    strata.ok(&["apply", "-f", quickstart.to_str().unwrap()]);

    let script = repo_file("e2e/python/dynamic_client.py");
    let out = Command::new("python3")
        .arg(&script)
        .arg(strata.kubeconfig())
        .output()
        .expect("run python3");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "the Python client failed:\n{stdout}\n{stderr}\nserver log:\n{}",
        strata.log_tail()
    );
    let steps: Vec<&str> = stdout
        .lines()
        .filter_map(|l| l.strip_prefix("ok "))
        .collect();
    assert_eq!(
        steps,
        [
            "discovery",
            "create",
            "list by label",
            "watch until Running",
            "merge patch",
            "server-side apply",
            "conflict on stale write",
            "delete",
        ],
        "{stdout}"
    );
    strata.stop();
}
