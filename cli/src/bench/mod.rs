//! `strata bench`: ZStack's VM-creation table, the API's cost against a raw etcd put, list and
//! watch at scale, and the API server's memory, measured in one run; written as JSON
//! (`--out`) and printed as a table. docs/benchmarks.md has the figures and what limits them.
//!
//! Phases, in order:
//! 1. VMs ([`vms`]): an in-process control plane (embedded store, `--hosts` simulated hosts over
//!    zones and clusters); each `--vms` size is created through the API by `--clients` clients,
//!    watched until every VM is Running, then deleted and watched until every VM is gone.
//! 2. The API server alone, in a child process ([`child`]): the create path against raw etcd
//!    puts ([`api`], [`etcd`]), watch fan-out ([`fanout`]), and filling the store with
//!    `--store-hosts` and `--store-vms`, listing at each `--list-sizes` and reading its resident
//!    memory ([`store`]).
//! 3. Real VMs against raw virsh (`--libvirt`, [`libvirt`]): a VM applied through the API on
//!    this machine's libvirt host against `virsh define` + `virsh start` of its domain XML.
//!
//! A size of 0 skips its phase. Everything listens on 127.0.0.1 and lives in a temp dir.

mod api;
mod child;
mod etcd;
mod fanout;
mod fixture;
mod libvirt;
mod load;
mod machine;
mod progress;
mod report;
mod stats;
mod store;
mod vms;

use std::path::PathBuf;
use std::time::{Duration, Instant};

use futures::StreamExt;
use kube::api::DynamicObject;
use kube::runtime::watcher;
use kube::{Api, Client};

use crate::up::{self, ControlPlaneOptions};
use fixture::Topology;
use progress::Progress;
use report::{Outcome, Results, VmPhase};

/// Arguments of `strata bench`.
#[derive(clap::Args, Clone, Debug)]
pub struct BenchArgs {
    /// Where the API server keeps objects: its embedded store, or an etcd the bench starts.
    #[arg(long, value_enum, default_value_t = StoreKind::Embedded)]
    pub store: StoreKind,
    /// Simulated hosts of the all-in-one control plane (0 skips the VM phase).
    #[arg(long, default_value_t = 1000)]
    pub hosts: usize,
    /// Zones the clusters are spread over.
    #[arg(long, default_value_t = 2)]
    pub zones: usize,
    /// Clusters the hosts are spread over.
    #[arg(long, default_value_t = 10)]
    pub clusters: usize,
    /// VM counts to create and delete, one round each.
    #[arg(long, value_delimiter = ',', default_value = "1,10,100,1000,10000")]
    pub vms: Vec<usize>,
    /// Concurrent API clients (ZStack used 100 threads).
    #[arg(long, default_value_t = 100)]
    pub clients: usize,
    /// How often simulated agents renew their host lease.
    #[arg(long, default_value_t = 10)]
    pub heartbeat_seconds: u64,
    /// VM creates timed on the API server alone, then as raw etcd puts (0 skips).
    #[arg(long, default_value_t = 10_000)]
    pub api_ops: usize,
    /// Skip the raw etcd comparison even when etcd is installed.
    #[arg(long)]
    pub no_etcd: bool,
    /// Clients that each watch every event of the fan-out phase (0 skips).
    #[arg(long, default_value_t = 100)]
    pub watchers: usize,
    /// Objects created while the watchers watch.
    #[arg(long, default_value_t = 1000)]
    pub watch_events: usize,
    /// Hosts stored for the memory figure.
    #[arg(long, default_value_t = 10_000)]
    pub store_hosts: usize,
    /// VMs stored for the memory figure (0 with --store-hosts 0 skips the phase).
    #[arg(long, default_value_t = 100_000)]
    pub store_vms: usize,
    /// Stored-VM counts at which a full list is timed.
    #[arg(long, value_delimiter = ',', default_value = "10000,100000")]
    pub list_sizes: Vec<usize>,
    /// Compare real VMs on this machine's libvirtd against raw `virsh define` + `virsh start`
    /// of the same domain (needs libvirt and QEMU installed, and the test guest).
    #[arg(long)]
    pub libvirt: bool,
    /// Real VMs timed with `--libvirt`, after a warm-up VM.
    #[arg(long, default_value_t = 5)]
    pub libvirt_runs: usize,
    /// The test guest `hack/build-test-image.sh` builds (disk.qcow2 and its .sha256, vmlinuz,
    /// initrd.img).
    #[arg(long, default_value_os_t = libvirt::default_image())]
    pub libvirt_image: PathBuf,
    /// How long any one wait (all Running, all gone, all delivered) may take.
    #[arg(long, default_value_t = 1800)]
    pub timeout_seconds: u64,
    /// Write the results here as JSON.
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Internal: run only the API server on this data dir (the child of the API phases).
    #[arg(long, hide = true)]
    pub serve_api_only: Option<PathBuf>,
    /// Internal: the etcd the child API server stores in.
    #[arg(long, hide = true)]
    pub child_etcd_endpoint: Option<String>,
}

#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum StoreKind {
    Embedded,
    Etcd,
}

/// Failures of a bench run.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("failed to start the control plane")]
    Start(#[source] crate::Error),
    #[error("failed to {action}")]
    Api {
        action: String,
        #[source]
        source: kube::Error,
    },
    #[error("timed out waiting for {phase}: {done} of {total}")]
    Timeout {
        phase: String,
        done: usize,
        total: usize,
    },
    #[error("a watch ended before the phase finished")]
    WatchEnded,
    #[error("a bench task failed")]
    Task(#[source] tokio::task::JoinError),
    #[error("failed to run a child process")]
    Child(#[source] std::io::Error),
    #[error("the API server child exited before it served")]
    ChildExited,
    #[error("failed to talk to etcd")]
    Etcd(#[source] etcd_client::Error),
    #[error("failed to build a request")]
    Request(#[source] http::Error),
    #[error("failed to render the results")]
    Json(#[source] serde_json::Error),
    #[error("failed to write {path}")]
    Write {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("failed to create a temp dir")]
    TempDir(#[source] std::io::Error),
    #[error("--store etcd needs etcd installed (Debian: apt-get install etcd-server)")]
    NoEtcd,
    #[error("raw libvirt step failed: {what}: {why}")]
    Raw { what: String, why: String },
}

pub async fn run(args: BenchArgs) -> Result<(), Error> {
    if let Some(dir) = args.serve_api_only {
        return child::serve(dir, store_config(args.child_etcd_endpoint.as_deref())).await;
    }
    let progress = Progress::new();
    let mut machine = machine::Machine::probe();
    let work = tempfile::Builder::new()
        .prefix("strata-bench-")
        .tempdir()
        .map_err(Error::TempDir)?;
    let timeout = Duration::from_secs(args.timeout_seconds);
    let etcd = start_etcd(&args, work.path()).await?;
    let store_etcd = match (args.store, &etcd) {
        (StoreKind::Embedded, _) => None,
        (StoreKind::Etcd, Ok(etcd)) => Some(etcd.endpoint.clone()),
        (StoreKind::Etcd, Err(_)) => return Err(Error::NoEtcd),
    };
    let store_name = match (&store_etcd, &etcd) {
        (Some(_), Ok(etcd)) => format!("etcd {}", etcd.version),
        _ => "embedded (redb)".to_owned(),
    };

    let vm_phase = if args.hosts == 0 || args.vms.iter().all(|&n| n == 0) {
        Outcome::skipped("--hosts 0 or no --vms")
    } else {
        let data_dir = work.path().join("plane");
        let store = store_config(store_etcd.as_deref());
        Outcome::Measured(vm_phase(&args, data_dir, store, timeout, &progress).await?)
    };

    let phases = ApiPhasesIn {
        work: work.path(),
        store_etcd: store_etcd.as_deref(),
        timeout,
        progress: &progress,
    };
    let (create_path, watch_fanout, scale) = phases.run(&args, etcd.as_ref()).await?;

    let libvirt = if !args.libvirt {
        Outcome::skipped("not requested (--libvirt)")
    } else if !args.libvirt_image.join("disk.qcow2").exists() {
        Outcome::skipped(format!(
            "no test guest in {} (hack/build-test-image.sh builds it)",
            args.libvirt_image.display()
        ))
    } else {
        let runs = args.libvirt_runs.max(1);
        Outcome::Measured(
            libvirt::run(work.path(), &args.libvirt_image, runs, timeout, &progress).await?,
        )
    };

    machine.load_average_end = machine::load_average();
    let results = Results {
        schema: "strata-bench/1",
        command: std::env::args().collect::<Vec<_>>().join(" "),
        machine,
        store: store_name,
        vm_phase,
        create_path,
        watch_fanout,
        scale,
        libvirt,
    };
    if let Some(path) = &args.out {
        results.write_json(path)?;
    }
    println!("{}", results.table());
    Ok(())
}

async fn vm_phase(
    args: &BenchArgs,
    data_dir: PathBuf,
    store: strata_apiserver::StoreConfig,
    timeout: Duration,
    progress: &Progress,
) -> Result<VmPhase, Error> {
    let topology = Topology {
        zones: args.zones.max(1),
        clusters: args.clusters.max(1),
        hosts: args.hosts,
    };
    let largest = args.vms.iter().copied().max().unwrap_or(0);
    // Room for four times an even share, so the scheduler's choices never run out of space.
    let cpu = (4 * largest.div_ceil(args.hosts)).max(64) as i64;
    let heartbeat = Duration::from_secs(args.heartbeat_seconds.max(1));
    let started = Instant::now();
    let plane = up::start(ControlPlaneOptions {
        data_dir,
        listen: "127.0.0.1:0".into(),
        hosts: topology.sim_hosts(),
        host_capacity: strata_apis::HostCapacity {
            cpu,
            memory: strata_apis::quantity::format_bytes(cpu as u64 * (2 << 30)),
        },
        heartbeat,
        host_lease_timeout: heartbeat * 4,
        store,
    })
    .await
    .map_err(Error::Start)?;

    let result = async {
        let admin = up::client(&plane.kubeconfig).await.map_err(Error::Start)?;
        let networks = fixture::networks_for(largest);
        fixture::install(&admin, topology, networks).await?;
        fixture::namespace(&admin, vms::NAMESPACE).await?;
        hosts_connected(&admin, args.hosts, timeout, progress).await?;
        let hosts_ready_seconds = started.elapsed().as_secs_f64();
        progress.note(format!(
            "{} simulated hosts Connected in {hosts_ready_seconds:.1} s",
            args.hosts
        ));

        let clients = clients(&plane.kubeconfig, args.clients).await?;
        let rounds = vms::Rounds {
            clients: &clients,
            watch_client: admin,
            networks,
            timeout,
            progress,
        };
        let mut results = Vec::new();
        for (round, &n) in args.vms.iter().enumerate().filter(|(_, &n)| n > 0) {
            let r = rounds.run(round, n).await?;
            progress.note(format!(
                "{n} VMs: all gone in {:.3} s",
                r.delete.wall_seconds
            ));
            results.push(r);
        }
        Ok(VmPhase {
            topology,
            host_capacity_cpu: cpu,
            hosts_ready_seconds,
            vm_shape: "1 NIC with an IP from an L3 network, and a root Volume",
            rounds: results,
            process_memory: machine::memory(None),
        })
    }
    .await;
    plane.stop().await.map_err(Error::Start)?;
    result
}

/// Waits, on a watch, until `n` hosts report `Connected`.
async fn hosts_connected(
    client: &Client,
    n: usize,
    timeout: Duration,
    progress: &Progress,
) -> Result<(), Error> {
    let bar = progress.bar(n, "hosts Connected");
    let api: Api<DynamicObject> = Api::all_with(client.clone(), &fixture::host_kind());
    let mut connected = std::collections::HashSet::new();
    let wait = async {
        let mut events = std::pin::pin!(watcher(api, watcher::Config::default()));
        while connected.len() < n {
            match events.next().await {
                Some(Ok(watcher::Event::Apply(host) | watcher::Event::InitApply(host))) => {
                    let state = host.data.pointer("/status/state").and_then(|s| s.as_str());
                    if state == Some("Connected") && connected.insert(host.metadata.name) {
                        bar.set_position(connected.len() as u64);
                    }
                }
                Some(Ok(_)) => {}
                Some(Err(error)) => tracing::warn!(error = %error, "bench host watch failed"),
                None => return Err(Error::WatchEnded),
            }
        }
        Ok(())
    };
    let waited = tokio::time::timeout(timeout, wait).await;
    progress.done(bar);
    waited.map_err(|_| Error::Timeout {
        phase: "hosts Connected".into(),
        done: connected.len(),
        total: n,
    })?
}

type ApiPhases = (
    Outcome<api::CreatePath>,
    Outcome<fanout::Fanout>,
    Outcome<store::Store>,
);

/// Where the phases on the API server alone run.
struct ApiPhasesIn<'a> {
    work: &'a std::path::Path,
    store_etcd: Option<&'a str>,
    timeout: Duration,
    progress: &'a Progress,
}

impl ApiPhasesIn<'_> {
    async fn run(
        &self,
        args: &BenchArgs,
        etcd: Result<&etcd::Etcd, &String>,
    ) -> Result<ApiPhases, Error> {
        let fanout_wanted = args.watchers > 0 && args.watch_events > 0;
        let store_wanted = args.store_hosts > 0 || args.store_vms > 0;
        if args.api_ops == 0 && !fanout_wanted && !store_wanted {
            let why = "size 0";
            return Ok((
                Outcome::skipped(why),
                Outcome::skipped(why),
                Outcome::skipped(why),
            ));
        }
        let server = child::ApiServer::spawn(&self.work.join("api"), self.store_etcd).await?;
        let memory_empty = server.memory();
        let progress = self.progress;
        let result = async {
            let writers = self::clients(&server.kubeconfig, args.clients.max(1)).await?;
            let create_path = if args.api_ops == 0 {
                Outcome::skipped("--api-ops 0")
            } else {
                let floor = match etcd {
                    _ if args.no_etcd => Err("disabled with --no-etcd".to_owned()),
                    Ok(etcd) => Ok(etcd),
                    Err(reason) => Err(reason.clone()),
                };
                Outcome::Measured(api::run(&writers, args.api_ops, floor, progress).await?)
            };
            let watch_fanout = if fanout_wanted {
                let watchers = self::clients(&server.kubeconfig, args.watchers).await?;
                let f = fanout::run(
                    &writers,
                    &watchers,
                    args.watch_events,
                    self.timeout,
                    progress,
                )
                .await?;
                Outcome::Measured(f)
            } else {
                Outcome::skipped("--watchers 0 or --watch-events 0")
            };
            let scale = if store_wanted {
                let fill = store::Fill {
                    clients: &writers,
                    server: &server,
                    progress,
                };
                let s = fill
                    .run(
                        args.store_hosts,
                        args.store_vms,
                        &args.list_sizes,
                        memory_empty,
                    )
                    .await?;
                Outcome::Measured(s)
            } else {
                Outcome::skipped("--store-hosts 0 and --store-vms 0")
            };
            Ok((create_path, watch_fanout, scale))
        }
        .await;
        server.stop().await?;
        result
    }
}

fn store_config(etcd: Option<&str>) -> strata_apiserver::StoreConfig {
    match etcd {
        Some(endpoint) => strata_apiserver::StoreConfig::Etcd {
            endpoints: vec![endpoint.to_owned()],
        },
        None => strata_apiserver::StoreConfig::Embedded,
    }
}

/// The etcd of this run (the floor of the create path, and the store with `--store etcd`),
/// or why there is none.
async fn start_etcd(
    args: &BenchArgs,
    work: &std::path::Path,
) -> Result<Result<etcd::Etcd, String>, Error> {
    let wanted = args.store == StoreKind::Etcd || (args.api_ops > 0 && !args.no_etcd);
    if !wanted {
        return Ok(Err("disabled with --no-etcd".into()));
    }
    let Some(binary) = etcd::binary() else {
        return Ok(Err(
            "etcd is not installed (Debian: apt-get install etcd-server)".into(),
        ));
    };
    Ok(Ok(etcd::Etcd::start(&binary, work).await?))
}

/// `n` clients, each with its own connection pool, like `n` separate API users.
async fn clients(kubeconfig: &std::path::Path, n: usize) -> Result<Vec<Client>, Error> {
    let mut clients = Vec::with_capacity(n);
    for _ in 0..n {
        clients.push(up::client(kubeconfig).await.map_err(Error::Start)?);
    }
    Ok(clients)
}
