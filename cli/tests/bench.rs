//! `strata bench` at tiny sizes: the harness runs every phase end to end (one real VM on this
//! machine's libvirtd included) and writes a result file whose figures are plausible. The real figures are in docs/benchmarks.md; this only
//! guards the harness.

use std::process::Command;

use serde_json::Value;

#[test]
fn a_tiny_bench_measures_every_phase() {
    let dir = tempfile::tempdir().expect("tempdir");
    let out = dir.path().join("results.json");
    let repo = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let image = Command::new(repo.join("hack/build-test-image.sh"))
        .output()
        .expect("the test guest's build runs");
    assert!(
        image.status.success(),
        "{}",
        String::from_utf8_lossy(&image.stderr)
    );
    let output = Command::new(env!("CARGO_BIN_EXE_strata"))
        .args(["bench", "--hosts", "2", "--zones", "1", "--clusters", "2"])
        .args([
            "--vms",
            "1,5",
            "--clients",
            "5",
            "--api-ops",
            "20",
            "--no-etcd",
        ])
        .args(["--watchers", "3", "--watch-events", "10"])
        .args([
            "--store-hosts",
            "10",
            "--store-vms",
            "40",
            "--list-sizes",
            "20,40",
        ])
        .args(["--libvirt", "--libvirt-runs", "1", "--libvirt-image"])
        .arg(repo.join("target/test-image"))
        .args(["--timeout-seconds", "60"])
        .arg("--out")
        .arg(&out)
        .env("TMPDIR", dir.path())
        .output()
        .expect("strata bench runs");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "strata bench failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(
        stdout.contains("all Running"),
        "no table printed:\n{stdout}"
    );

    let results: Value =
        serde_json::from_str(&std::fs::read_to_string(&out).expect("results.json written"))
            .expect("results.json is JSON");
    let measured = |phase: &str| {
        let value = &results[phase];
        assert_eq!(value["status"], "measured", "{phase}: {value:#}");
        value
    };

    let vm = measured("vm_phase");
    assert_eq!(vm["topology"]["hosts"], 2);
    let rounds = vm["rounds"].as_array().expect("rounds");
    assert_eq!(rounds.len(), 2);
    for (round, n) in rounds.iter().zip([1, 5]) {
        assert_eq!(round["vms"], n);
        for direction in ["create", "delete"] {
            let d = &round[direction];
            let wall = number(&d["wall_seconds"]);
            assert!(wall > 0.0 && wall < 60.0, "{direction} of {n}: {d:#}");
            assert_eq!(d["to_goal"]["count"], n, "every VM reached its goal");
            assert_eq!(d["api_latency"]["count"], n);
            let p50 = number(&d["to_goal"]["p50_ms"]);
            let p99 = number(&d["to_goal"]["p99_ms"]);
            assert!(
                0.0 < p50 && p50 <= p99 && p99 <= wall * 1000.0 + 1.0,
                "{d:#}"
            );
        }
    }
    assert!(number(&vm["process_memory"]["rss_bytes"]) > 0.0);

    let create = measured("create_path");
    let api = create["api"].as_array().expect("api runs");
    assert_eq!(
        api.iter().map(|r| r["clients"].clone()).collect::<Vec<_>>(),
        [1, 5]
    );
    assert!(api.iter().all(|r| number(&r["per_second"]) > 0.0));
    assert_eq!(create["etcd"]["status"], "skipped");
    let gets = create["gets"].as_array().expect("get runs");
    assert_eq!(
        gets.iter()
            .map(|r| r["clients"].clone())
            .collect::<Vec<_>>(),
        [1, 5]
    );
    assert!(gets.iter().all(|r| number(&r["per_second"]) > 0.0));
    assert!(number(&create["payload_bytes"]) > 100.0);

    let fanout = measured("watch_fanout");
    assert_eq!(
        fanout["delivered"], 30,
        "3 watchers × 10 events: {fanout:#}"
    );

    let scale = measured("scale");
    let lists: Vec<_> = scale["lists"]
        .as_array()
        .expect("lists")
        .iter()
        .map(|l| l["objects"].clone())
        .collect();
    assert_eq!(lists, [20, 40]);
    let empty = number(&scale["memory_empty"]["rss_bytes"]);
    let full = number(&scale["memory_full"]["rss_bytes"]);
    assert!(empty > 0.0 && full > 0.0, "{scale:#}");

    let libvirt = measured("libvirt");
    assert_eq!(libvirt["runs"], 1);
    let strata = number(&libvirt["strata"]["p50_ms"]);
    let raw = number(&libvirt["raw_virsh"]["p50_ms"]);
    assert!(strata > 0.0 && raw > 0.0, "{libvirt:#}");
    assert!(
        (number(&libvirt["ratio_p50"]) - strata / raw).abs() < 1e-9,
        "{libvirt:#}"
    );
    assert!(
        ["qemu", "kvm"].contains(&libvirt["domain_type"].as_str().unwrap_or_default()),
        "{libvirt:#}"
    );
}

fn number(value: &Value) -> f64 {
    value
        .as_f64()
        .unwrap_or_else(|| panic!("{value} is not a number"))
}
