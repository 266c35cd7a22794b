//! The metadata service: `http://169.254.169.254/latest/user-data` inside an L3 namespace returns
//! the calling VM's user data, found by the connection's source address.
//!
//! No extra daemon: the agent binds a listener *inside* the namespace from a short-lived thread
//! that `setns`-es into it (a socket stays in the namespace it was created in, whatever thread later
//! uses it) and serves it with axum on the agent's own tokio runtime. Restarting the agent rebinds.

use std::collections::HashMap;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::{Arc, RwLock};

use axum::extract::{ConnectInfo, State};
use axum::http::StatusCode;
use axum::routing::get;
use axum::Router;
use nix::sched::CloneFlags;

use crate::error::{Error, Result};
use crate::l3::METADATA_IP;

/// What the metadata service knows about one VM.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct InstanceMetadata {
    pub user_data: String,
    pub hostname: Option<String>,
    pub instance_id: Option<String>,
}

type Table = Arc<RwLock<HashMap<Ipv4Addr, InstanceMetadata>>>;

/// A running metadata service for one L3 namespace; stops when dropped.
pub struct MetadataServer {
    netns: String,
    /// Identity of the namespace the socket lives in (device, inode of `/run/netns/<name>`).
    netns_id: Option<(u64, u64)>,
    table: Table,
    task: tokio::task::JoinHandle<()>,
}

impl MetadataServer {
    /// Binds `169.254.169.254:80` in `netns` (which must hold that address, see
    /// [`crate::NetworkDriver::ensure_l3`]) and starts serving. Must be called within a tokio runtime.
    pub fn start(netns: &str) -> Result<Self> {
        Self::start_on(netns, SocketAddr::from((METADATA_IP, 80)))
    }

    /// As [`MetadataServer::start`], on another address (tests).
    pub fn start_on(netns: &str, addr: SocketAddr) -> Result<Self> {
        let netns_id = netns_identity(netns);
        let listener = bind_in_netns(netns, addr)?;
        let listener = tokio::net::TcpListener::from_std(listener).map_err(|source| Error::Io {
            path: format!("/run/netns/{netns}").into(),
            source,
        })?;
        let table: Table = Arc::default();
        let app = Router::new()
            .route("/latest/user-data", get(user_data))
            .route("/openstack/latest/user_data", get(user_data))
            .route("/latest/meta-data/hostname", get(hostname))
            .route("/latest/meta-data/instance-id", get(instance_id))
            .with_state(table.clone());
        let task = tokio::spawn(async move {
            let svc = app.into_make_service_with_connect_info::<SocketAddr>();
            if let Err(e) = axum::serve(listener, svc).await {
                tracing::warn!(error = %e, "metadata service stopped");
            }
        });
        Ok(MetadataServer {
            netns: netns.to_string(),
            netns_id,
            table,
            task,
        })
    }

    /// The namespace it serves.
    pub fn netns(&self) -> &str {
        &self.netns
    }

    /// Whether the namespace it listens in is still the one named `netns` (a namespace deleted
    /// and recreated takes a new server: the old socket serves the dead namespace).
    pub fn is_current(&self) -> bool {
        self.netns_id.is_some() && netns_identity(&self.netns) == self.netns_id
    }

    /// Replaces the whole table (the agent's desired state for this L3 on this host).
    pub fn set_all(&self, entries: HashMap<Ipv4Addr, InstanceMetadata>) {
        *self.table.write().unwrap_or_else(|e| e.into_inner()) = entries;
    }

    /// Sets one VM's metadata.
    pub fn set(&self, ip: Ipv4Addr, md: InstanceMetadata) {
        self.table
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .insert(ip, md);
    }

    /// Forgets one VM.
    pub fn remove(&self, ip: Ipv4Addr) {
        self.table
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&ip);
    }
}

impl Drop for MetadataServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn netns_identity(netns: &str) -> Option<(u64, u64)> {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata(format!("/run/netns/{netns}"))
        .ok()
        .map(|m| (m.dev(), m.ino()))
}

fn lookup(table: &Table, peer: SocketAddr) -> Option<InstanceMetadata> {
    let SocketAddr::V4(v4) = peer else {
        return None;
    };
    table
        .read()
        .unwrap_or_else(|e| e.into_inner())
        .get(v4.ip())
        .cloned()
}

async fn user_data(
    State(t): State<Table>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
) -> (StatusCode, String) {
    match lookup(&t, peer) {
        Some(md) => (StatusCode::OK, md.user_data),
        None => (
            StatusCode::NOT_FOUND,
            format!("no instance with address {}\n", peer.ip()),
        ),
    }
}

async fn hostname(
    State(t): State<Table>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
) -> (StatusCode, String) {
    match lookup(&t, peer).and_then(|m| m.hostname) {
        Some(h) => (StatusCode::OK, h),
        None => (StatusCode::NOT_FOUND, String::new()),
    }
}

async fn instance_id(
    State(t): State<Table>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
) -> (StatusCode, String) {
    match lookup(&t, peer).and_then(|m| m.instance_id) {
        Some(h) => (StatusCode::OK, h),
        None => (StatusCode::NOT_FOUND, String::new()),
    }
}

/// Creates a listening socket inside a named namespace. `setns` only changes the calling thread's
/// namespace, so it runs on a scoped thread that ends right after the bind.
pub fn bind_in_netns(netns: &str, addr: SocketAddr) -> Result<std::net::TcpListener> {
    let path = format!("/run/netns/{netns}");
    std::thread::scope(|s| {
        s.spawn(|| {
            let f = std::fs::File::open(&path).map_err(|source| Error::Io {
                path: path.clone().into(),
                source,
            })?;
            nix::sched::setns(&f, CloneFlags::CLONE_NEWNET).map_err(|source| Error::Setns {
                netns: netns.to_string(),
                source,
            })?;
            let l = std::net::TcpListener::bind(addr).map_err(|source| Error::Io {
                path: format!("{path} ({addr})").into(),
                source,
            })?;
            l.set_nonblocking(true).map_err(|source| Error::Io {
                path: path.clone().into(),
                source,
            })?;
            Ok(l)
        })
        .join()
        .unwrap_or_else(|_| Err(Error::Invalid("metadata bind thread panicked".into())))
    })
}
