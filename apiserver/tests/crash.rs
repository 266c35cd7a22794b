//! Crash safety: the server is killed with SIGKILL while 100 clients create objects; after a
//! restart on the same store, every create the server acknowledged is there.
//!
//! The server must run in a process of its own to be killed, so this test binary re-runs
//! itself: [`child_server`] is an ordinary test that does nothing unless the parent set
//! `STRATA_CRASH_CHILD_DIR`, in which case it serves until killed.

mod common;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use k8s_openapi::api::coordination::v1::Lease;
use kube::api::{ListParams, PostParams};
use kube::Api;
use strata_apiserver::testkit::Etcd;
use strata_apiserver::{ServeOptions, StoreConfig};
use tokio::sync::Notify;

const CHILD_DIR: &str = "STRATA_CRASH_CHILD_DIR";
const CHILD_ETCD: &str = "STRATA_CRASH_CHILD_ETCD";
const CLIENTS: usize = 100;
/// Kill once this many creates were acknowledged, so the kill lands in the middle of the load.
const KILL_AFTER: usize = 400;

/// The child process: serves on the data dir (or etcd) the parent chose and writes its address
/// to `<dir>/addr` once it listens.
#[test]
fn child_server() {
    let Ok(dir) = std::env::var(CHILD_DIR) else {
        return;
    };
    let dir = PathBuf::from(dir);
    let store = match std::env::var(CHILD_ETCD) {
        Ok(endpoint) => StoreConfig::Etcd {
            endpoints: vec![endpoint],
        },
        Err(_) => StoreConfig::Embedded,
    };
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    rt.block_on(async move {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        // Written atomically (rename) so the parent never reads half an address.
        std::fs::write(dir.join("addr.tmp"), addr.to_string()).expect("write addr");
        std::fs::rename(dir.join("addr.tmp"), dir.join("addr")).expect("publish addr");
        let opts = ServeOptions {
            data_dir: dir.join("data"),
            store,
            bearer_token: Some(common::TOKEN.to_string()),
            crds: vec![],
        };
        strata_apiserver::serve(opts, listener, std::future::pending())
            .await
            .expect("serve");
    });
}

struct ChildServer {
    child: Child,
    url: String,
}

impl Drop for ChildServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn spawn_child(dir: &Path, etcd: Option<&str>) -> ChildServer {
    let mut cmd = Command::new(std::env::current_exe().expect("test binary"));
    cmd.args(["child_server", "--exact", "--nocapture"])
        .env(CHILD_DIR, dir)
        .stdin(Stdio::null())
        .stdout(Stdio::null());
    if let Some(endpoint) = etcd {
        cmd.env(CHILD_ETCD, endpoint);
    }
    let mut child = cmd.spawn().expect("spawn the child server");
    let addr_file = dir.join("addr");
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if let Ok(addr) = std::fs::read_to_string(&addr_file) {
            return ChildServer {
                child,
                url: format!("http://{addr}"),
            };
        }
        if let Ok(Some(status)) = child.try_wait() {
            panic!("child server exited early: {status}");
        }
        assert!(Instant::now() < deadline, "child server did not start");
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn lease(name: &str) -> Lease {
    serde_json::from_value(serde_json::json!({
        "metadata": {"name": name, "namespace": "default"},
        "spec": {"holderIdentity": name},
    }))
    .expect("lease")
}

/// Runs the load, kills the child mid-way, and returns the names whose create was acknowledged.
async fn load_and_kill(mut server: ChildServer) -> BTreeSet<String> {
    let client = common::client(&server.url, Some(common::TOKEN));
    // The child answers once start-up is done.
    let deadline = Instant::now() + Duration::from_secs(60);
    while client.apiserver_version().await.is_err() {
        assert!(Instant::now() < deadline, "child server never answered");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let acked = Arc::new(Mutex::new(BTreeSet::new()));
    let enough = Arc::new(Notify::new());
    let mut clients = tokio::task::JoinSet::new();
    for c in 0..CLIENTS {
        let api: Api<Lease> = Api::namespaced(client.clone(), "default");
        let (acked, enough) = (acked.clone(), enough.clone());
        clients.spawn(async move {
            for i in 0.. {
                let name = format!("c{c}-{i}");
                // Any error ends this client: after the kill every request fails.
                if api
                    .create(&PostParams::default(), &lease(&name))
                    .await
                    .is_err()
                {
                    return;
                }
                let mut acked = acked.lock().expect("acked");
                acked.insert(name);
                if acked.len() >= KILL_AFTER {
                    enough.notify_one();
                }
            }
        });
    }
    tokio::time::timeout(Duration::from_secs(120), enough.notified())
        .await
        .expect("the load reaches the kill point");
    // SIGKILL: no shutdown path runs, whatever is not durable is lost.
    server.child.kill().expect("SIGKILL the server");
    server.child.wait().expect("reap the server");
    tokio::time::timeout(Duration::from_secs(60), async {
        while clients.join_next().await.is_some() {}
    })
    .await
    .expect("clients notice the server is gone");
    let acked = acked.lock().expect("acked").clone();
    assert!(acked.len() >= KILL_AFTER);
    acked
}

async fn assert_all_present(dir: &Path, store: StoreConfig, acked: &BTreeSet<String>) {
    let server = common::start_on(&dir.join("data"), store).await;
    let api: Api<Lease> = Api::namespaced(server.client.clone(), "default");
    let present: BTreeSet<String> = api
        .list(&ListParams::default())
        .await
        .expect("list after restart")
        .items
        .into_iter()
        .filter_map(|l| l.metadata.name)
        .collect();
    let lost: Vec<&String> = acked.difference(&present).collect();
    assert!(
        lost.is_empty(),
        "{} acknowledged creates lost (of {}): {:?}",
        lost.len(),
        acked.len(),
        &lost[..lost.len().min(10)]
    );
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledged_creates_survive_sigkill_on_the_embedded_store() {
    let dir = tempfile::tempdir().expect("tempdir");
    let acked = load_and_kill(spawn_child(dir.path(), None)).await;
    assert_all_present(dir.path(), StoreConfig::Embedded, &acked).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledged_creates_survive_sigkill_on_etcd() {
    let etcd = Etcd::start();
    let dir = tempfile::tempdir().expect("tempdir");
    let acked = load_and_kill(spawn_child(dir.path(), Some(&etcd.endpoint))).await;
    let store = StoreConfig::Etcd {
        endpoints: vec![etcd.endpoint.clone()],
    };
    assert_all_present(dir.path(), store, &acked).await;
}
