//! The manifests a user starts from, applied with the real kubectl to `strata up`: every example
//! is accepted as written, and every manifest in `manifests/examples/invalid/` (one per
//! validation rule) is refused with a message naming its field, leaving nothing behind.

mod support;

use std::path::{Path, PathBuf};

use support::{repo_file, Strata};

fn yaml_files(dir: &Path) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("{} is readable: {e}", dir.display()))
        .map(|entry| entry.expect("directory entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
        .collect();
    files.sort();
    files
}

fn path_str(path: &Path) -> &str {
    path.to_str().expect("UTF-8 path")
}

#[test]
fn every_example_applies_without_error() {
    let dir = tempfile::tempdir().expect("tempdir");
    let strata = Strata::start(dir.path(), &["--sim-hosts", "1"]);
    let examples = yaml_files(&repo_file("manifests/examples"));
    assert!(examples.len() >= 2, "quickstart and datacenter at least");
    for example in &examples {
        strata.ok(&["apply", "-f", path_str(example)]);
        // Everything the file declares was stored, under the name it was given.
        let stored = strata.ok(&["get", "-f", path_str(example), "-o", "name"]);
        let text = std::fs::read_to_string(example).expect("example readable");
        let declared = text.lines().filter(|l| l.starts_with("kind:")).count();
        assert_eq!(
            stored.lines().count(),
            declared,
            "{}: {stored}",
            example.display()
        );
    }
    let vms = strata.ok(&["get", "vm", "-n", "tenant-a", "-o", "name"]);
    assert_eq!(vms.lines().count(), 4, "{vms}");
    strata.stop();
}

/// The `# key: value` header line of an invalid manifest.
fn header(text: &str, key: &str) -> String {
    let prefix = format!("# {key}:");
    text.lines()
        .find_map(|l| l.strip_prefix(&prefix))
        .map(|v| v.trim().to_string())
        .unwrap_or_else(|| panic!("no `{prefix}` line in\n{text}"))
}

#[test]
fn invalid_manifests_are_refused_naming_the_field_and_leave_nothing() {
    let dir = tempfile::tempdir().expect("tempdir");
    let strata = Strata::start(dir.path(), &["--sim-hosts", "0"]);
    let ns = "e2e-invalid";
    // Applied from YAML: `kubectl create namespace` speaks protobuf, which the server does not.
    let namespace = dir.path().join("namespace.yaml");
    std::fs::write(
        &namespace,
        format!(
            "apiVersion: v1\nkind: Namespace\nmetadata:\n  name: {ns}\n  \
             labels: {{strata.io/e2e: manifests}}\n"
        ),
    )
    .expect("manifest written");
    strata.ok(&["apply", "-f", path_str(&namespace)]);
    let fixtures = yaml_files(&repo_file("manifests/examples/invalid"));
    assert!(fixtures.len() >= 40, "one manifest per rule");
    let mut wrong = Vec::new();
    for fixture in &fixtures {
        let text = std::fs::read_to_string(fixture).expect("fixture readable");
        let (field, message) = (header(&text, "field"), header(&text, "message"));
        // Two documents are an update: the first is stored, the change to the second refused.
        let docs: Vec<&str> = text.split("\n---\n").collect();
        let refused = dir.path().join("refused.yaml");
        std::fs::write(&refused, docs[docs.len() - 1]).expect("manifest written");
        let refused = path_str(&refused);
        if let [stored, _] = docs.as_slice() {
            let first = dir.path().join("stored.yaml");
            std::fs::write(&first, stored).expect("manifest written");
            strata.ok(&["apply", "-n", ns, "-f", path_str(&first)]);
        }
        let out = strata.kubectl(&["apply", "-n", ns, "-f", refused]);
        let stderr = String::from_utf8_lossy(&out.stderr);
        let named = stderr
            .lines()
            .any(|l| l.contains(&field) && l.contains(&message));
        if out.status.success() || !named {
            wrong.push(format!(
                "{}: want {field}: {message}; kubectl said: {}{stderr}",
                fixture.display(),
                String::from_utf8_lossy(&out.stdout)
            ));
            continue;
        }
        let after = strata.kubectl(&["get", "-n", ns, "-f", refused, "-o", "json"]);
        if docs.len() == 2 {
            // The stored object is as it was: generation 1, no change kept.
            let object: serde_json::Value =
                serde_json::from_slice(&after.stdout).expect("stored object is JSON");
            if object["metadata"]["generation"] != 1 {
                wrong.push(format!(
                    "{}: the refused change was stored",
                    fixture.display()
                ));
            }
        } else if after.status.success() {
            wrong.push(format!(
                "{}: the refused object was stored",
                fixture.display()
            ));
        }
    }
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
    strata.stop();
}
