//! The floor for the API's write path: a real etcd (Debian's `etcd-server`), started on
//! loopback ports of its own in the run's temp dir, written with the etcd-client crate.

use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use tokio::process::{Child, Command};

use super::Error;

/// A running etcd, killed when dropped.
pub struct Etcd {
    _child: Child,
    pub endpoint: String,
    /// What the server reports, e.g. `3.4.23`.
    pub version: String,
}

/// The `etcd` binary, if one is installed.
pub fn binary() -> Option<std::path::PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join("etcd"))
        .find(|candidate| candidate.is_file())
}

impl Etcd {
    /// Starts a single-member etcd with its data under `dir` and waits until it answers.
    pub async fn start(binary: &Path, dir: &Path) -> Result<Etcd, Error> {
        let client_port = free_port()?;
        let peer_port = free_port()?;
        let client_url = format!("http://127.0.0.1:{client_port}");
        let peer_url = format!("http://127.0.0.1:{peer_port}");
        let log = std::fs::File::create(dir.join("etcd.log")).map_err(Error::Child)?;
        let child = Command::new(binary)
            .arg("--name=bench")
            .arg(format!("--data-dir={}", dir.join("etcd").display()))
            .arg(format!("--listen-client-urls={client_url}"))
            .arg(format!("--advertise-client-urls={client_url}"))
            .arg(format!("--listen-peer-urls={peer_url}"))
            .arg(format!("--initial-advertise-peer-urls={peer_url}"))
            .arg(format!("--initial-cluster=bench={peer_url}"))
            .arg("--initial-cluster-state=new")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .kill_on_drop(true)
            .spawn()
            .map_err(Error::Child)?;
        let mut etcd = Etcd {
            _child: child,
            endpoint: client_url,
            version: String::new(),
        };
        etcd.version = etcd.wait_healthy().await?;
        Ok(etcd)
    }

    /// etcd takes one to two seconds to elect itself leader; until then requests fail.
    /// Returns the version it reports.
    async fn wait_healthy(&self) -> Result<String, Error> {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        loop {
            let answer = match self.client().await {
                Ok(mut client) => client.status().await,
                Err(e) => Err(e),
            };
            match answer {
                Ok(status) => return Ok(status.version().to_owned()),
                Err(_) if tokio::time::Instant::now() < deadline => {
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                Err(source) => return Err(Error::Etcd(source)),
            }
        }
    }

    /// A new client with its own connection.
    pub async fn client(&self) -> Result<etcd_client::Client, etcd_client::Error> {
        etcd_client::Client::connect([self.endpoint.as_str()], None).await
    }
}

/// A loopback port nobody listens on right now. etcd binds it a moment later; on a machine
/// where something else grabs it in between, etcd fails to start and the bench says so.
fn free_port() -> Result<u16, Error> {
    let socket = std::net::TcpListener::bind("127.0.0.1:0").map_err(Error::Child)?;
    Ok(socket.local_addr().map_err(Error::Child)?.port())
}
