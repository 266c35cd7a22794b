//! Smoke test with the real kubectl binaries against the in-process server.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

const SDK: &str = "/usr/lib/google-cloud-sdk/bin";

fn find_kubectl(version: Option<&str>) -> Option<PathBuf> {
    let candidates: Vec<PathBuf> = match version {
        Some(v) => vec![PathBuf::from(format!("{SDK}/kubectl.{v}"))],
        None => {
            let mut c = vec![PathBuf::from(format!("{SDK}/kubectl.1.33"))];
            if let Some(path) = std::env::var_os("PATH") {
                c.extend(std::env::split_paths(&path).map(|d| d.join("kubectl")));
            }
            c
        }
    };
    candidates.into_iter().find(|p| p.is_file())
}

struct Kubectl {
    bin: PathBuf,
    kubeconfig: PathBuf,
    cache: PathBuf,
    dir: PathBuf,
}

impl Kubectl {
    fn new(bin: PathBuf, url: &str, dir: &Path, name: &str) -> Kubectl {
        let kubeconfig = dir.join(format!("{name}.kubeconfig"));
        // The self-signed test certificate is not worth a CA; the token still travels over TLS.
        let insecure = if url.starts_with("https") {
            "    insecure-skip-tls-verify: true\n"
        } else {
            ""
        };
        let cfg = format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: strata\n  cluster:\n    server: {url}\n{insecure}users:\n- name: admin\n  user:\n    token: {}\ncontexts:\n- name: strata\n  context:\n    cluster: strata\n    user: admin\n    namespace: default\ncurrent-context: strata\n",
            common::TOKEN
        );
        std::fs::write(&kubeconfig, cfg).expect("write kubeconfig");
        Kubectl {
            bin,
            kubeconfig,
            cache: dir.join(format!("{name}-cache")),
            dir: dir.to_path_buf(),
        }
    }

    /// Runs kubectl off the async runtime; returns (success, stdout, stderr).
    async fn run(&self, args: &[&str]) -> (bool, String, String) {
        let mut cmd = Command::new(&self.bin);
        cmd.arg("--kubeconfig")
            .arg(&self.kubeconfig)
            .arg("--cache-dir")
            .arg(&self.cache)
            .args(args)
            .current_dir(&self.dir);
        let out = tokio::task::spawn_blocking(move || cmd.output())
            .await
            .expect("join")
            .expect("run kubectl");
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    }

    async fn ok(&self, args: &[&str]) -> String {
        let (ok, out, err) = self.run(args).await;
        if !ok {
            // Re-run verbosely so the failure shows the HTTP exchange.
            let mut verbose = args.to_vec();
            verbose.push("-v=8");
            let (_, _, trace) = self.run(&verbose).await;
            panic!("kubectl {args:?} failed:\nstdout: {out}\nstderr: {err}\ntrace:\n{trace}");
        }
        out
    }

    fn write(&self, name: &str, content: &str) -> String {
        let p = self.dir.join(name);
        std::fs::write(&p, content).expect("write manifest");
        p.to_string_lossy().into_owned()
    }
}

const VM: &str = "apiVersion: strata.io/v1alpha1
kind: VirtualMachine
metadata:
  name: vm1
  labels:
    app: web
spec:
  instanceOffering: small
  image: cirros
  nics:
  - l3Network: flat
";

/// The kubectl versions users run against Strata; each runs the whole script below.
fn versioned(version: &str) -> PathBuf {
    let bin = PathBuf::from(format!("{SDK}/kubectl.{version}"));
    assert!(
        bin.is_file(),
        "kubectl {version} is expected at {}",
        bin.display()
    );
    bin
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubectl_1_27() {
    everyday_commands("1.27").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubectl_1_29() {
    everyday_commands("1.29").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubectl_1_33() {
    everyday_commands("1.33").await;
}

/// What a kubectl user does day to day, with one kubectl version, against a fresh server.
async fn everyday_commands(version: &str) {
    let dir = tempfile::tempdir().expect("tempdir");
    let srv = common::start_open(&dir.path().join("data")).await;
    let k = Kubectl::new(versioned(version), &srv.url, dir.path(), version);

    // A built-in kind: kubectl 1.33 sends it as protobuf.
    assert!(k
        .ok(&["create", "namespace", "team-a"])
        .await
        .contains("namespace/team-a created"));
    assert!(k.ok(&["get", "ns"]).await.contains("team-a"));

    let vm = k.write("vm.yaml", VM);
    assert!(k
        .ok(&["apply", "-f", &vm])
        .await
        .contains("virtualmachine.strata.io/vm1 created"));
    reads(&k).await;
    writes(&k, &vm).await;
    watches_and_waits(&k).await;

    // Discovery and OpenAPI consumers.
    let resources = k.ok(&["api-resources"]).await;
    assert!(
        resources.contains("virtualmachines") && resources.contains("namespaces"),
        "{resources}"
    );
    let explain = k.ok(&["explain", "vm.spec"]).await;
    assert!(explain.contains("Name of the Image"), "{explain}");

    client_side_to_server_side(&k).await;
    cascading_deletes(&k).await;
    prune(&k).await;

    assert!(k.ok(&["delete", "vm", "vm1"]).await.contains("deleted"));
    let (ok, _, err) = k.run(&["get", "vm", "vm1"]).await;
    assert!(!ok && err.contains("not found"), "{err}");
    srv.stop().await;
}

async fn reads(k: &Kubectl) {
    let table = k.ok(&["get", "vm"]).await;
    for header in ["NAME", "PHASE", "HOST", "IP", "AGE"] {
        assert!(table.contains(header), "missing {header} in:\n{table}");
    }
    assert!(table.contains("vm1"));
    assert!(
        !table.contains("OFFERING"),
        "priority columns only with -o wide:\n{table}"
    );
    let wide = k.ok(&["get", "vms", "-o", "wide"]).await;
    assert!(
        wide.contains("OFFERING") && wide.contains("small"),
        "{wide}"
    );
    let yaml = k.ok(&["get", "vm", "vm1", "-o", "yaml"]).await;
    assert!(yaml.contains("kind: VirtualMachine"), "{yaml}");
    assert!(yaml.contains("image: cirros"), "{yaml}");
    let json: serde_json::Value =
        serde_json::from_str(&k.ok(&["get", "vm", "vm1", "-o", "json"]).await).expect("json");
    assert_eq!(json["metadata"]["labels"]["app"], "web");
    let columns = k
        .ok(&[
            "get",
            "vm",
            "-o",
            "custom-columns=NAME:.metadata.name,IMAGE:.spec.image",
        ])
        .await;
    let row: Vec<&str> = columns
        .lines()
        .nth(1)
        .unwrap_or_default()
        .split_whitespace()
        .collect();
    assert_eq!(row, ["vm1", "cirros"], "{columns}");
}

async fn writes(k: &Kubectl, vm: &str) {
    // Re-applying a changed file patches it (client-side 3-way merge patch).
    let changed = k.write("vm2.yaml", &VM.replace("image: cirros", "image: debian"));
    assert!(k
        .ok(&["apply", "-f", &changed])
        .await
        .contains("configured"));
    assert_eq!(
        k.ok(&["get", "vm", "vm1", "-o", "jsonpath={.spec.image}"])
            .await,
        "debian"
    );
    assert!(k.ok(&["apply", "-f", &changed]).await.contains("unchanged"));

    // diff is a server-side dry run: it shows the change, exits 1 and stores nothing.
    let next = k.write("vm3.yaml", &VM.replace("image: cirros", "image: ubuntu"));
    let (same, out, err) = k.run(&["diff", "-f", &next]).await;
    assert!(
        !same && out.contains("-  image: debian") && out.contains("+  image: ubuntu"),
        "diff: {out}\n{err}"
    );
    assert_eq!(
        k.ok(&["get", "vm", "vm1", "-o", "jsonpath={.spec.image}"])
            .await,
        "debian"
    );

    // Server-side apply of a value the client-side apply set: a conflict, as upstream, until
    // forced.
    let (ok, _, err) = k.run(&["apply", "--server-side", "-f", vm]).await;
    assert!(
        !ok && err
            .contains("Apply failed with 1 conflict: conflict with \"kubectl-client-side-apply\"")
            && err.contains(".spec.image"),
        "{err}"
    );
    k.ok(&["apply", "--server-side", "--force-conflicts", "-f", vm])
        .await;

    k.ok(&[
        "patch",
        "vm",
        "vm1",
        "--type",
        "merge",
        "-p",
        r#"{"spec":{"runStrategy":"Halted"}}"#,
    ])
    .await;
    k.ok(&[
        "patch",
        "vm",
        "vm1",
        "--type",
        "json",
        "-p",
        r#"[{"op":"replace","path":"/spec/image","value":"alpine"}]"#,
    ])
    .await;
    let spec = k
        .ok(&[
            "get",
            "vm",
            "vm1",
            "-o",
            "jsonpath={.spec.runStrategy} {.spec.image}",
        ])
        .await;
    assert_eq!(spec, "Halted alpine");
    let (ok, _, err) = k
        .run(&["patch", "vm", "vm1", "-p", r#"{"spec":{"image":"x"}}"#])
        .await;
    assert!(
        !ok && err.contains("unknown format"),
        "strategic merge patch is refused: {err}"
    );

    k.ok(&["label", "vm", "vm1", "tier=front"]).await;
    k.ok(&["annotate", "vm", "vm1", "owner=ops"]).await;
    assert!(k
        .ok(&["get", "vm", "-l", "tier=front,app in (web)", "-o", "name"])
        .await
        .contains("virtualmachine.strata.io/vm1"));
    assert_eq!(
        k.ok(&[
            "get",
            "vm",
            "vm1",
            "-o",
            "jsonpath={.metadata.annotations.owner}"
        ])
        .await,
        "ops"
    );
    assert!(k
        .ok(&["get", "vm", "-l", "tier!=front", "-o", "name"])
        .await
        .is_empty());

    // Strict validation of unknown fields, as kubectl asks for it.
    let bad = k.write(
        "bad.yaml",
        &VM.replace("name: vm1", "name: vm9")
            .replace("image: cirros", "image: cirros\n  foo: 1"),
    );
    let (ok, _, err) = k.run(&["apply", "-f", &bad]).await;
    assert!(!ok && err.contains("unknown field \"spec.foo\""), "{err}");
}

async fn watches_and_waits(k: &Kubectl) {
    // `get -w` prints the current state, then every change as it happens.
    let mut watch = std::process::Command::new(&k.bin)
        .arg("--kubeconfig")
        .arg(&k.kubeconfig)
        .args([
            "get",
            "vm",
            "vm1",
            "-w",
            "--no-headers",
            "-o",
            "custom-columns=NAME:.metadata.name,IMAGE:.spec.image",
        ])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("kubectl get -w");
    let (lines_tx, mut lines) = tokio::sync::mpsc::unbounded_channel();
    let stdout = watch.stdout.take().expect("stdout");
    std::thread::spawn(move || {
        use std::io::BufRead;
        for line in std::io::BufReader::new(stdout)
            .lines()
            .map_while(Result::ok)
        {
            let _ = lines_tx.send(line);
        }
    });
    let mut next_line = async || {
        tokio::time::timeout(std::time::Duration::from_secs(20), lines.recv())
            .await
            .expect("a line from kubectl get -w within 20 s")
            .expect("kubectl get -w ended")
    };
    assert!(next_line().await.contains("alpine"));
    k.ok(&[
        "patch",
        "vm",
        "vm1",
        "--type",
        "merge",
        "-p",
        r#"{"spec":{"image":"busybox"}}"#,
    ])
    .await;
    assert!(next_line().await.contains("busybox"));
    watch.kill().expect("kill kubectl get -w");
    let _ = watch.wait();

    // wait on a field and on a condition written through the status subresource.
    k.ok(&[
        "wait",
        "--for=jsonpath={.spec.image}=busybox",
        "vm/vm1",
        "--timeout=20s",
    ])
    .await;
    k.ok(&[
        "patch",
        "vm",
        "vm1",
        "--subresource=status",
        "--type=merge",
        "-p",
        r#"{"status":{"conditions":[{"type":"Ready","status":"True","reason":"Test","message":"","lastTransitionTime":"2026-01-01T00:00:00Z"}]}}"#,
    ])
    .await;
    k.ok(&["wait", "--for=condition=Ready", "vm/vm1", "--timeout=20s"])
        .await;
}

/// An owner VM with one owned instance, for the cascade policies.
async fn owner_with_dependent(k: &Kubectl, name: &str) {
    let owner = k.write(
        &format!("{name}.yaml"),
        &VM.replace("name: vm1", &format!("name: {name}")),
    );
    k.ok(&["apply", "-f", &owner]).await;
    let uid = k
        .ok(&["get", "vm", name, "-o", "jsonpath={.metadata.uid}"])
        .await;
    let dependent = serde_json::json!({
        "apiVersion": "strata.io/v1alpha1",
        "kind": "VirtualMachineInstance",
        "metadata": {
            "name": name,
            "ownerReferences": [{
                "apiVersion": "strata.io/v1alpha1", "kind": "VirtualMachine",
                "name": name, "uid": uid, "controller": true, "blockOwnerDeletion": true,
            }],
        },
        "spec": {"host": "h1", "cpu": 1, "memory": "64Mi", "image": "cirros", "imageUrl": "http://example/cirros.img"},
    });
    let file = k.write(&format!("{name}-vmi.json"), &dependent.to_string());
    k.ok(&["create", "-f", &file]).await;
}

/// The managers of `vm`, as `manager/operation`.
async fn managers(k: &Kubectl, vm: &str) -> Vec<String> {
    k.ok(&[
        "get",
        "vm",
        vm,
        "-o",
        "jsonpath={range .metadata.managedFields[*]}{.manager}/{.operation} {end}",
    ])
    .await
    .split_whitespace()
    .map(str::to_string)
    .collect()
}

/// A file managed with client-side apply moves to server-side apply: kubectl migrates the
/// ownership (a JSON patch of managedFields), after which a field removed from the file is
/// removed from the object. A replace (no managedFields sent) keeps everyone's ownership.
async fn client_side_to_server_side(k: &Kubectl) {
    let labelled = VM
        .replace("name: vm1", "name: vm-csa")
        .replace("    app: web", "    app: web\n    tier: front");
    let file = k.write("csa.yaml", &labelled);
    k.ok(&["apply", "-f", &file]).await;
    assert_eq!(
        managers(k, "vm-csa").await,
        ["kubectl-client-side-apply/Update"]
    );
    k.ok(&["apply", "--server-side", "-f", &file]).await;
    // kubectl keeps the last-applied annotation under a manager of its own, as upstream.
    assert_eq!(
        managers(k, "vm-csa").await,
        ["kubectl-last-applied/Apply", "kubectl/Apply"]
    );
    let fewer = k.write("ssa.yaml", &labelled.replace("\n    tier: front", ""));
    k.ok(&["apply", "--server-side", "-f", &fewer]).await;
    assert_eq!(
        k.ok(&["get", "vm", "vm-csa", "-o", "jsonpath={.metadata.labels}"])
            .await,
        r#"{"app":"web"}"#,
        "the label left the file, so it left the object"
    );
    let replaced = k.write(
        "replace.yaml",
        &VM.replace("name: vm1", "name: vm-csa")
            .replace("cirros", "alpine"),
    );
    k.ok(&["replace", "-f", &replaced]).await;
    let after = managers(k, "vm-csa").await;
    assert!(
        after.contains(&"kubectl/Apply".to_string())
            && after.contains(&"kubectl-replace/Update".to_string()),
        "{after:?}"
    );
    k.ok(&["delete", "vm", "vm-csa"]).await;
}

async fn cascading_deletes(k: &Kubectl) {
    owner_with_dependent(k, "orphaner").await;
    k.ok(&["delete", "vm", "orphaner", "--cascade=orphan"])
        .await;
    let owners = k
        .ok(&[
            "get",
            "vmi",
            "orphaner",
            "-o",
            "jsonpath={.metadata.ownerReferences}",
        ])
        .await;
    assert!(
        owners.is_empty(),
        "an orphaned dependent stays, without its owner: {owners}"
    );
    k.ok(&["delete", "vmi", "orphaner"]).await;

    for cascade in ["background", "foreground"] {
        owner_with_dependent(k, cascade).await;
        k.ok(&["delete", "vm", cascade, &format!("--cascade={cascade}")])
            .await;
        k.ok(&[
            "wait",
            "--for=delete",
            &format!("vmi/{cascade}"),
            "--timeout=20s",
        ])
        .await;
        let (ok, _, err) = k.run(&["get", "vm", cascade]).await;
        assert!(!ok && err.contains("not found"), "{cascade}: {err}");
    }
}

async fn prune(k: &Kubectl) {
    let set = k.dir.join("set");
    std::fs::create_dir_all(&set).expect("mkdir");
    for name in ["keep", "drop"] {
        let manifest = VM
            .replace("name: vm1", &format!("name: {name}"))
            .replace("app: web", "app: pruned");
        std::fs::write(set.join(format!("{name}.yaml")), manifest).expect("write");
    }
    let dir = set.to_string_lossy().into_owned();
    let allow = "--prune-allowlist=strata.io/v1alpha1/VirtualMachine";
    k.ok(&["apply", "-f", &dir, "-l", "app=pruned", "--prune", allow])
        .await;
    std::fs::remove_file(set.join("drop.yaml")).expect("rm");
    let out = k
        .ok(&["apply", "-f", &dir, "-l", "app=pruned", "--prune", allow])
        .await;
    assert!(
        out.contains("virtualmachine.strata.io/drop pruned"),
        "{out}"
    );
    let left = k.ok(&["get", "vm", "-l", "app=pruned", "-o", "name"]).await;
    assert_eq!(left.trim(), "virtualmachine.strata.io/keep");
    k.ok(&["delete", "vm", "keep"]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubectl_installs_a_crd_and_waits_for_it() {
    let Some(bin) = find_kubectl(None) else {
        eprintln!("SKIPPED: no kubectl binary found in {SDK} or on PATH");
        return;
    };
    let dir = tempfile::tempdir().expect("tempdir");
    let srv = common::start_open(&dir.path().join("data")).await;
    let k = Kubectl::new(bin, &srv.url, dir.path(), "crd");
    let crd = k.write(
        "crd.yaml",
        "apiVersion: apiextensions.k8s.io/v1
kind: CustomResourceDefinition
metadata:
  name: widgets.example.com
spec:
  group: example.com
  scope: Namespaced
  names: {kind: Widget, plural: widgets, singular: widget, shortNames: [wd]}
  versions:
  - name: v1
    served: true
    storage: true
    additionalPrinterColumns:
    - {name: Size, type: integer, jsonPath: .spec.size}
    schema:
      openAPIV3Schema:
        type: object
        properties:
          spec:
            type: object
            properties:
              size: {type: integer, minimum: 1}
",
    );
    k.ok(&["apply", "-f", &crd]).await;
    k.ok(&[
        "wait",
        "--for",
        "condition=established",
        "crd/widgets.example.com",
        "--timeout=20s",
    ])
    .await;
    let w = k.write(
        "w.yaml",
        "apiVersion: example.com/v1\nkind: Widget\nmetadata: {name: w1}\nspec: {size: 3}\n",
    );
    k.ok(&["apply", "-f", &w]).await;
    let table = k.ok(&["get", "wd"]).await;
    assert!(table.contains("SIZE") && table.contains('3'), "{table}");
    let bad = k.write(
        "bad.yaml",
        "apiVersion: example.com/v1\nkind: Widget\nmetadata: {name: w2}\nspec: {size: 0}\n",
    );
    let (ok, _, err) = k.run(&["apply", "-f", &bad]).await;
    assert!(!ok && err.contains("spec.size"), "{err}");
    srv.stop().await;
}

/// A self-signed certificate for 127.0.0.1: (cert DER, PKCS#8 key DER).
fn self_signed() -> (Vec<u8>, Vec<u8>) {
    let key = rcgen::KeyPair::generate().expect("key pair");
    let params = rcgen::CertificateParams::new(vec!["127.0.0.1".to_string()]).expect("params");
    let cert = params.self_signed(&key).expect("self-signed certificate");
    (cert.der().to_vec(), key.serialize_der())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubectl_sends_the_token_over_tls() {
    let Some(bin) = find_kubectl(None) else {
        eprintln!("SKIPPED: no kubectl binary found in {SDK} or on PATH");
        return;
    };
    let dir = tempfile::tempdir().expect("tempdir");
    let (cert_der, key_der) = self_signed();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let url = format!("https://{}", listener.local_addr().expect("addr"));
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let opts = strata_apiserver::ServeOptions {
        data_dir: dir.path().join("data"),
        store: strata_apiserver::StoreConfig::Embedded,
        bearer_token: Some(common::TOKEN.to_string()),
        crds: strata_apis::crds(),
    };
    let server = tokio::spawn(strata_apiserver::serve_tls(
        opts,
        strata_apiserver::TlsIdentity { cert_der, key_der },
        listener,
        async {
            let _ = stopped.await;
        },
    ));
    let k = Kubectl::new(bin, &url, dir.path(), "tls");
    let vm = k.write("vm.yaml", VM);
    assert!(k.ok(&["apply", "-f", &vm]).await.contains("created"));
    assert!(k.ok(&["get", "vm"]).await.contains("vm1"));

    // The same server refuses a client without the token.
    std::fs::write(
        dir.path().join("tls.kubeconfig"),
        std::fs::read_to_string(&k.kubeconfig)
            .expect("read")
            .replace(common::TOKEN, "wrong"),
    )
    .expect("rewrite");
    let (ok, _, err) = k.run(&["get", "vm"]).await;
    assert!(
        !ok && (err.contains("Unauthorized") || err.contains("credentials")),
        "{err}"
    );

    let _ = stop.send(());
    tokio::time::timeout(std::time::Duration::from_secs(20), server)
        .await
        .expect("stops")
        .expect("task")
        .expect("serve_tls returns Ok");
}
