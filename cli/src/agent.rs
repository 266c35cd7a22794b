//! `strata agent`: one node agent with the libvirt driver, joining a control plane that runs
//! elsewhere (`strata up` on another machine, or on this one for a second host). It registers
//! its Host, heartbeats and runs the instances placed on it, like the agent inside `strata up`.

use std::path::PathBuf;
use std::time::Duration;

use crate::up::{self, LibvirtHost};
use crate::Error;

/// Arguments of `strata agent`.
#[derive(clap::Args, Clone)]
pub struct AgentArgs {
    /// The control plane's kubeconfig (`strata up` writes one in its data dir).
    #[arg(long, env = "KUBECONFIG")]
    pub kubeconfig: PathBuf,
    /// Name of this Host.
    #[arg(long)]
    pub host_name: String,
    /// Cluster a newly registered Host joins.
    #[arg(long, default_value = "cluster-1")]
    pub cluster: String,
    /// The host's libvirtd (default `qemu:///system`, started if it does not answer).
    #[arg(long)]
    pub libvirt_uri: Option<String>,
    /// The agent's records, console logs, network state and (by default) primary storage.
    #[arg(long)]
    pub data_dir: PathBuf,
    /// Primary storage directory (default: `<data-dir>/storage`). Live migration needs one
    /// every host mounts at the same path.
    #[arg(long)]
    pub storage_dir: Option<PathBuf>,
    /// This host's VXLAN tunnel endpoint, published as its management address: where other
    /// hosts send VXLAN traffic and live migrations.
    #[arg(long)]
    pub vtep: std::net::Ipv4Addr,
    /// The network namespace that plays this host's root namespace (bridges, taps, security
    /// groups): the one its libvirtd runs in, when that is not this process's.
    #[arg(long)]
    pub host_netns: Option<String>,
    /// How often the agent renews its host lease.
    #[arg(long, default_value = "10", value_parser = up::parse_seconds)]
    pub heartbeat_seconds: Duration,
}

/// Runs the agent until SIGINT or SIGTERM.
pub async fn run(args: AgentArgs) -> Result<(), Error> {
    let host = LibvirtHost {
        name: args.host_name,
        cluster: args.cluster,
        uri: args.libvirt_uri,
        state_dir: args.data_dir,
        storage_dir: args.storage_dir,
        vtep: args.vtep,
        host_netns: args.host_netns,
    };
    let driver = host.driver().await?;
    let client = up::client(&args.kubeconfig).await?;
    let agent = host.agent(client, driver, args.heartbeat_seconds);
    println!("Strata agent of host {} is up", host.name);
    tokio::select! {
        result = agent.run() => result.map_err(Error::Agent),
        () = up::shutdown_signal() => Ok(()),
    }
}
