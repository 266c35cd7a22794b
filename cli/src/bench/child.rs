//! The API server alone, in a child process (`strata bench --serve-api-only DIR`), so its
//! resident memory is the API server's own and no controller reacts to the objects the API
//! phases write. The child stops when its stdin closes, so it never outlives the bench.

use std::path::{Path, PathBuf};
use std::process::Stdio;

use tokio::io::{AsyncBufReadExt, AsyncReadExt, BufReader};
use tokio::process::{Child, ChildStdin, Command};

use super::machine::{self, Memory};
use super::Error;
use crate::{kubeconfig, pki};

/// What the child prints on stdout once it serves: this prefix, then its kubeconfig's path.
const READY: &str = "strata-bench-api-ready ";

/// The parent's handle on the child.
pub struct ApiServer {
    child: Child,
    pid: u32,
    /// Closing it asks the child to shut down.
    stdin: Option<ChildStdin>,
    pub kubeconfig: PathBuf,
}

impl ApiServer {
    /// Starts `strata bench --serve-api-only <dir>` (on etcd at `etcd` if given) and waits
    /// until it serves.
    pub async fn spawn(dir: &Path, etcd: Option<&str>) -> Result<ApiServer, Error> {
        let exe = std::env::current_exe().map_err(Error::Child)?;
        let mut command = Command::new(exe);
        command.arg("bench").arg("--serve-api-only").arg(dir);
        if let Some(endpoint) = etcd {
            command.arg("--child-etcd-endpoint").arg(endpoint);
        }
        let mut child = command
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .kill_on_drop(true)
            .spawn()
            .map_err(Error::Child)?;
        let pid = child.id().ok_or(Error::ChildExited)?;
        let stdout = child.stdout.take().ok_or(Error::ChildExited)?;
        let mut lines = BufReader::new(stdout).lines();
        let kubeconfig = loop {
            match lines.next_line().await.map_err(Error::Child)? {
                Some(line) => {
                    if let Some(path) = line.strip_prefix(READY) {
                        break PathBuf::from(path);
                    }
                }
                None => return Err(Error::ChildExited),
            }
        };
        Ok(ApiServer {
            stdin: child.stdin.take(),
            child,
            pid,
            kubeconfig,
        })
    }

    pub fn memory(&self) -> Memory {
        machine::memory(Some(self.pid))
    }

    /// Asks the child to stop and waits for it.
    pub async fn stop(mut self) -> Result<(), Error> {
        drop(self.stdin.take());
        self.child.wait().await.map_err(Error::Child)?;
        Ok(())
    }
}

/// The child's side: serve the API over HTTPS on a free loopback port, with its own token and
/// certificate under `dir`, until stdin closes.
pub async fn serve(dir: PathBuf, store: strata_apiserver::StoreConfig) -> Result<(), Error> {
    std::fs::create_dir_all(&dir).map_err(Error::Child)?;
    let token = kubeconfig::load_or_create_token(&dir).map_err(Error::Start)?;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .map_err(Error::Child)?;
    let addr = listener.local_addr().map_err(Error::Child)?;
    let identity = pki::serving_identity(&dir, addr.ip()).map_err(Error::Start)?;
    let kubeconfig =
        kubeconfig::write(&dir, addr, &token, &identity.ca_pem).map_err(Error::Start)?;
    let server = tokio::spawn(strata_apiserver::serve_tls(
        strata_apiserver::ServeOptions {
            data_dir: dir,
            store,
            bearer_token: Some(token),
            crds: strata_apis::crds(),
        },
        strata_apiserver::TlsIdentity {
            cert_der: identity.cert_der,
            key_der: identity.key_der,
        },
        listener,
        stdin_closed(),
    ));
    wait_until_serving(&kubeconfig).await?;
    println!("{READY}{}", kubeconfig.display());
    server
        .await
        .map_err(Error::Task)?
        .map_err(|e| Error::Start(crate::Error::ApiServer(e)))
}

/// The CRDs are installed before the server accepts connections, but the port is bound first:
/// the parent may only start once discovery answers.
async fn wait_until_serving(kubeconfig: &Path) -> Result<(), Error> {
    let client = crate::up::client(kubeconfig).await.map_err(Error::Start)?;
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(30);
    loop {
        match client.apiserver_version().await {
            Ok(_) => return Ok(()),
            Err(_) if tokio::time::Instant::now() < deadline => {
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            }
            Err(source) => {
                return Err(Error::Api {
                    action: "reach the API server".into(),
                    source,
                })
            }
        }
    }
}

async fn stdin_closed() {
    let mut stdin = tokio::io::stdin();
    let mut buf = [0u8; 64];
    while matches!(stdin.read(&mut buf).await, Ok(n) if n > 0) {}
}
