//! `strata up`: the all-in-one control plane. One process runs the API server on the embedded
//! store, every controller, and node agents, all talking to each other through the API like
//! separate processes would: `--sim-hosts` agents with the simulated hypervisor, or one agent
//! running real VMs on this machine's libvirtd (`--driver libvirt`).

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use strata_apis::HostCapacity;
use strata_node_agent::network::{HostNetwork, NetworkConfig};
use strata_node_agent::{Agent, AgentConfig, LibvirtConfig, LibvirtDriver, SimDriver};
use tokio::sync::watch;

use crate::{kubeconfig, pki, Error};

/// Arguments of `strata up`.
#[derive(clap::Args, Clone)]
pub struct UpArgs {
    /// Where the embedded store, the token and the kubeconfig live.
    #[arg(long, default_value = ".strata", env = "STRATA_DATA_DIR")]
    pub data_dir: PathBuf,
    /// Address of the Kubernetes-compatible API (port 0 picks a free port).
    #[arg(long, default_value = "127.0.0.1:6443")]
    pub listen: String,
    /// The hypervisor the agents drive. `libvirt` runs real VMs on this machine's libvirtd
    /// (starting it if needed) as one host; `sim` runs `--sim-hosts` simulated hosts; `auto`
    /// picks libvirt when qemu:///system answers and no `--sim-hosts` were asked for.
    #[arg(long, value_enum, default_value_t = DriverKind::Auto)]
    pub driver: DriverKind,
    /// Name of this machine's Host with the libvirt driver (default: its hostname).
    #[arg(long)]
    pub host_name: Option<String>,
    /// This host's VXLAN tunnel endpoint with the libvirt driver: the local address VXLAN L2
    /// networks send from, and where other hosts reach this one (the Host's
    /// `managementAddress`: VXLAN peers, live migrations). The default keeps VXLAN traffic on
    /// the loopback (a single host).
    #[arg(long, default_value = "127.0.0.1")]
    pub vtep: std::net::Ipv4Addr,
    /// Primary storage directory of the libvirt host (default: `<data-dir>/agent/storage`).
    /// Live migration needs one every host mounts at the same path.
    #[arg(long)]
    pub storage_dir: Option<PathBuf>,
    /// Number of simulated hosts to run (named sim-host-1, sim-host-2, ...); 1 unless given.
    #[arg(long)]
    pub sim_hosts: Option<usize>,
    /// Cluster the simulated hosts join.
    #[arg(long, default_value = "cluster-1")]
    pub sim_cluster: String,
    /// Logical CPUs each simulated host reports.
    #[arg(long, default_value_t = 64)]
    pub sim_host_cpu: i64,
    /// Memory each simulated host reports.
    #[arg(long, default_value = "256Gi")]
    pub sim_host_memory: String,
    /// How often agents renew their host lease.
    #[arg(long, default_value = "10", value_parser = parse_seconds)]
    pub heartbeat_seconds: Duration,
    /// A host whose lease is older than this turns Disconnected.
    #[arg(long, default_value = "40", value_parser = parse_seconds)]
    pub host_lease_timeout_seconds: Duration,
    /// Keep objects in this etcd cluster (comma-separated client URLs, e.g.
    /// http://127.0.0.1:2379) instead of the embedded store under --data-dir.
    #[arg(long, value_delimiter = ',', env = "STRATA_ETCD_ENDPOINTS")]
    pub etcd_endpoints: Vec<String>,
}

/// Which hypervisor driver `strata up` gives its agents.
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum DriverKind {
    Auto,
    Sim,
    Libvirt,
}

impl UpArgs {
    /// Resolves `auto`: simulated hosts asked for by number win, then a libvirtd that answers.
    pub fn driver(&self) -> DriverKind {
        match self.driver {
            DriverKind::Auto if self.sim_hosts.is_some() => DriverKind::Sim,
            DriverKind::Auto if strata_virt_answers() => DriverKind::Libvirt,
            DriverKind::Auto => DriverKind::Sim,
            other => other,
        }
    }

    /// The store backend these arguments select.
    pub fn store(&self) -> strata_apiserver::StoreConfig {
        if self.etcd_endpoints.is_empty() {
            strata_apiserver::StoreConfig::Embedded
        } else {
            strata_apiserver::StoreConfig::Etcd {
                endpoints: self.etcd_endpoints.clone(),
            }
        }
    }
}

fn strata_virt_answers() -> bool {
    strata_node_agent::libvirt_answers()
}

pub(crate) fn parse_seconds(s: &str) -> Result<Duration, String> {
    s.parse::<u64>()
        .map(Duration::from_secs)
        .map_err(|e| format!("{s:?} is not whole seconds: {e}"))
}

/// Runs until SIGINT or SIGTERM, then stops agents and controllers before the API server so
/// nothing writes to a store that is closing.
pub async fn run(args: UpArgs) -> Result<(), Error> {
    let memory = strata_apis::quantity::parse(&args.sim_host_memory)
        .map_err(|e| Error::Memory(args.sim_host_memory.clone(), e))?;
    let driver = args.driver();
    let sim_hosts = match driver {
        DriverKind::Libvirt => 0,
        _ => args.sim_hosts.unwrap_or(1),
    };
    let hosts = (1..=sim_hosts)
        .map(|i| SimHost {
            name: format!("sim-host-{i}"),
            cluster: args.sim_cluster.clone(),
        })
        .collect();
    let libvirt_host = (driver == DriverKind::Libvirt).then(|| LibvirtHost {
        name: args.host_name.clone().unwrap_or_else(machine_hostname),
        cluster: args.sim_cluster.clone(),
        uri: None,
        state_dir: args.data_dir.join("agent"),
        storage_dir: args.storage_dir.clone(),
        vtep: args.vtep,
        host_netns: None,
    });
    let plane = start_with_libvirt(
        ControlPlaneOptions {
            data_dir: args.data_dir.clone(),
            listen: args.listen.clone(),
            hosts,
            host_capacity: HostCapacity {
                cpu: args.sim_host_cpu,
                memory: strata_apis::quantity::format_bytes(memory),
            },
            heartbeat: args.heartbeat_seconds,
            host_lease_timeout: args.host_lease_timeout_seconds,
            store: args.store(),
        },
        libvirt_host.clone(),
    )
    .await?;

    let dial = kubeconfig::dial_addr(plane.addr);
    let token = kubeconfig::load_or_create_token(&args.data_dir)?;
    match &libvirt_host {
        Some(host) => println!(
            "Strata is up: host {} on libvirt (state in {}), API at https://{dial}",
            host.name,
            host.state_dir.display()
        ),
        None => println!("Strata is up: {sim_hosts} simulated host(s), API at https://{dial}"),
    }
    println!(
        "export KUBECONFIG={}",
        absolute(&plane.kubeconfig).display()
    );
    println!("Dashboard: https://{dial}/ui/#token={token}");

    shutdown_signal().await;
    tracing::info!("shutting down");
    plane.stop().await
}

/// A real host on libvirt: this machine in `strata up`, or the host of `strata agent`.
#[derive(Clone, Debug)]
pub struct LibvirtHost {
    pub name: String,
    pub cluster: String,
    /// The host's libvirtd, when not the system one (`qemu:///system`).
    pub uri: Option<String>,
    /// The agent's records, console logs and primary storage; the network driver's dnsmasq
    /// files go to `network/` in it.
    pub state_dir: PathBuf,
    /// Primary storage, when not `<state_dir>/storage`.
    pub storage_dir: Option<PathBuf>,
    /// This host's VXLAN tunnel endpoint, published as its management address.
    pub vtep: std::net::Ipv4Addr,
    /// The network namespace playing the host's root namespace (bridges, taps, security
    /// groups), when not this process's own: the one the host's libvirtd runs in.
    pub host_netns: Option<String>,
}

impl LibvirtHost {
    /// Connects to the host's libvirtd (starting the system one if needed) and opens its
    /// storage.
    pub async fn driver(&self) -> Result<LibvirtDriver, Error> {
        let mut config = LibvirtConfig::new(self.name.clone(), self.state_dir.clone());
        if let Some(uri) = &self.uri {
            config.uri = uri.clone();
        }
        if let Some(dir) = &self.storage_dir {
            config.storage_dir = dir.clone();
        }
        LibvirtDriver::new(config)
            .await
            .map_err(|e| Error::Agent(strata_node_agent::Error::Libvirt(e)))
    }

    /// The host's agent on `driver`, with its networking: bridges, L3 namespaces (scoped by
    /// host name, so several hosts on one machine keep apart), DHCP and metadata for the
    /// instances' NICs.
    pub fn agent(&self, client: kube::Client, driver: LibvirtDriver, heartbeat: Duration) -> Agent {
        let config = AgentConfig {
            host_name: self.name.clone(),
            cluster: self.cluster.clone(),
            capacity: strata_node_agent::host_capacity(),
            heartbeat_interval: heartbeat,
            network: Some(Arc::new(HostNetwork::new(NetworkConfig {
                driver: strata_network::DriverConfig {
                    host_netns: self.host_netns.clone(),
                    scope: self.name.clone(),
                    state_dir: self.state_dir.join("network"),
                },
                vtep: Some(self.vtep),
                vtep_peers: vec![],
                vxlan_underlay: None,
                metadata: true,
            }))),
        };
        Agent::new(client, config, Arc::new(driver))
    }
}

fn machine_hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .ok()
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "host-1".into())
}

/// One simulated host of an in-process control plane.
#[derive(Clone, Debug)]
pub struct SimHost {
    pub name: String,
    pub cluster: String,
}

/// What [`start`] runs: `strata up` and `strata bench` differ only in these.
#[derive(Clone, Debug)]
pub struct ControlPlaneOptions {
    pub data_dir: PathBuf,
    pub listen: String,
    pub hosts: Vec<SimHost>,
    /// What every simulated host reports.
    pub host_capacity: HostCapacity,
    pub heartbeat: Duration,
    pub host_lease_timeout: Duration,
    /// Where the API server keeps objects.
    pub store: strata_apiserver::StoreConfig,
}

/// The API server, the controllers and the simulated agents running in this process.
pub struct ControlPlane {
    /// Where the API listens.
    pub addr: std::net::SocketAddr,
    /// The kubeconfig every in-process component uses, written under the data dir.
    pub kubeconfig: PathBuf,
    stop_tx: watch::Sender<bool>,
    server: tokio::task::JoinHandle<Result<(), strata_apiserver::Error>>,
    workers: tokio::task::JoinSet<()>,
}

/// Starts the API server on the embedded store, every controller and one agent per simulated
/// host, and returns once the server listens; agents register in the background.
pub async fn start(opts: ControlPlaneOptions) -> Result<ControlPlane, Error> {
    start_with_libvirt(opts, None).await
}

/// [`start`], plus an agent for this machine on libvirt when `libvirt` is given.
pub async fn start_with_libvirt(
    opts: ControlPlaneOptions,
    libvirt: Option<LibvirtHost>,
) -> Result<ControlPlane, Error> {
    // Started (and libvirtd with it) before the API server, so a broken libvirt fails `up`.
    let libvirt = match libvirt {
        Some(host) => {
            let driver = host.driver().await?;
            Some((host, driver))
        }
        None => None,
    };
    std::fs::create_dir_all(&opts.data_dir).map_err(|source| Error::Io {
        action: "create",
        path: opts.data_dir.clone(),
        source,
    })?;
    let token = kubeconfig::load_or_create_token(&opts.data_dir)?;

    let listener = tokio::net::TcpListener::bind(&opts.listen)
        .await
        .map_err(|source| Error::Listen {
            addr: opts.listen.clone(),
            source,
        })?;
    let addr = listener.local_addr().map_err(|source| Error::Listen {
        addr: opts.listen.clone(),
        source,
    })?;
    let identity = pki::serving_identity(&opts.data_dir, addr.ip())?;
    let kubeconfig_path = kubeconfig::write(&opts.data_dir, addr, &token, &identity.ca_pem)?;

    // Each component keeps its own registry; the API server's /metrics serves them all, since
    // this process has one port (docs/operations.md, "Metrics").
    let mut controller_registry = prometheus_client::registry::Registry::default();
    let controller_metrics = strata_controllers::Metrics::register(&mut controller_registry);
    let mut agent_registry = prometheus_client::registry::Registry::default();
    let agent_metrics = strata_node_agent::Metrics::register(&mut agent_registry);

    let (stop_tx, stop_rx) = watch::channel(false);
    let server = tokio::spawn(strata_apiserver::serve_tls_with_metrics(
        strata_apiserver::ServeOptions {
            data_dir: opts.data_dir.clone(),
            store: opts.store.clone(),
            bearer_token: Some(token),
            crds: strata_apis::crds(),
        },
        strata_apiserver::TlsIdentity {
            cert_der: identity.cert_der,
            key_der: identity.key_der,
        },
        vec![Arc::new(controller_registry), Arc::new(agent_registry)],
        listener,
        wait_for(stop_rx),
    ));
    tracing::info!(%addr, data_dir = %opts.data_dir.display(), "api server listening");

    let client = client(&kubeconfig_path).await?;
    let mut workers = tokio::task::JoinSet::new();
    let controller_opts = strata_controllers::ControllerOptions {
        host_lease_timeout: opts.host_lease_timeout,
    };
    workers.spawn({
        let client = client.clone();
        async move {
            let run =
                strata_controllers::run_with_metrics(client, controller_opts, controller_metrics);
            if let Err(err) = run.await {
                tracing::error!(error = %crate::error_chain(&err), "controllers stopped");
            }
        }
    });
    for host in opts.hosts {
        let driver = SimDriver::new(&opts.host_capacity).map_err(Error::Agent)?;
        let config = AgentConfig {
            host_name: host.name,
            cluster: host.cluster,
            capacity: opts.host_capacity.clone(),
            heartbeat_interval: opts.heartbeat,
            // Simulated hosts leave the machine's network alone.
            network: None,
        };
        let host = config.host_name.clone();
        let agent = Agent::new(client.clone(), config, Arc::new(driver))
            .with_metrics(agent_metrics.clone());
        workers.spawn(async move {
            if let Err(err) = agent.run().await {
                tracing::error!(%host, error = %crate::error_chain(&err), "agent stopped");
            }
        });
    }

    if let Some((host, driver)) = libvirt {
        let agent = host
            .agent(client.clone(), driver, opts.heartbeat)
            .with_metrics(agent_metrics.clone());
        workers.spawn(async move {
            if let Err(err) = agent.run().await {
                tracing::error!(host = %host.name, error = %crate::error_chain(&err), "agent stopped");
            }
        });
    }

    // Only the workers hold clients from here on, so the server's graceful shutdown is not kept
    // waiting by an idle connection of ours.
    drop(client);

    Ok(ControlPlane {
        addr,
        kubeconfig: kubeconfig_path,
        stop_tx,
        server,
        workers,
    })
}

impl ControlPlane {
    /// Stops agents and controllers before the API server, so nothing writes to a store that
    /// is closing.
    pub async fn stop(mut self) -> Result<(), Error> {
        self.workers.shutdown().await;
        let _ = self.stop_tx.send(true);
        match self.server.await {
            Ok(result) => result.map_err(Error::ApiServer),
            Err(join) => {
                tracing::error!(error = %join, "api server task failed");
                Ok(())
            }
        }
    }
}

/// The in-process components use the same kubeconfig users get, so they exercise the same path.
pub async fn client(kubeconfig_path: &std::path::Path) -> Result<kube::Client, Error> {
    let kubeconfig = kube::config::Kubeconfig::read_from(kubeconfig_path)
        .map_err(|e| Error::Client(kube::Error::InferKubeconfig(e)))?;
    let config = kube::Config::from_custom_kubeconfig(kubeconfig, &Default::default())
        .await
        .map_err(|e| Error::Client(kube::Error::InferKubeconfig(e)))?;
    kube::Client::try_from(config).map_err(Error::Client)
}

async fn wait_for(mut stop: watch::Receiver<bool>) {
    let _ = stop.wait_for(|stopped| *stopped).await;
}

pub(crate) async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate()).expect("SIGTERM handler installs");
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
}

fn absolute(path: &std::path::Path) -> PathBuf {
    std::path::absolute(path).unwrap_or_else(|_| path.to_owned())
}
