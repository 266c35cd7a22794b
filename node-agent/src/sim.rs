//! A driver that keeps domains in memory, for control-plane tests and scale measurements
//! without hardware (ZStack's simulator hypervisor).

use std::{
    collections::BTreeMap,
    sync::{
        atomic::{AtomicBool, Ordering},
        Mutex, PoisonError,
    },
    time::Duration,
};

use futures::{
    future::{self, BoxFuture},
    stream::BoxStream,
    StreamExt,
};
use strata_apis::{quantity, HostCapacity, PowerState};
use tokio::sync::broadcast;
use tokio_stream::wrappers::BroadcastStream;

use crate::{
    driver::{AttachedDisk, Domain, DriverError, Hypervisor, MigrationTarget, Observed},
    Error,
};

/// Runs domains in memory and puts them in the desired power state at once. A domain that
/// would take the host past its memory is refused, as a real hypervisor would (stopped domains
/// hold none); vCPUs are time-shared. A live migration takes [`SimDriver::migration_time`]
/// (short in tests), reports its progress in ten steps, fails half-way while
/// [`SimDriver::fail_migrations`] is set, and stops at its deadline like a real copy.
#[derive(Debug)]
pub struct SimDriver {
    memory_bytes: u64,
    domains: Mutex<BTreeMap<String, SimDomain>>,
    /// What each volume holds, standing for the bytes of a disk: it outlives attachments,
    /// and snapshots keep copies of it.
    volumes: Mutex<BTreeMap<String, SimVolume>>,
    events: broadcast::Sender<String>,
    migration_time: Mutex<Duration>,
    fail_migrations: AtomicBool,
}

/// How long a simulated live migration takes unless set otherwise: about what a small idle
/// guest takes on a fast network.
const MIGRATION_TIME: Duration = Duration::from_secs(2);
const MIGRATION_STEPS: u32 = 10;

#[derive(Debug, Clone, Default)]
struct SimVolume {
    content: String,
    snapshots: BTreeMap<String, String>,
}

#[derive(Debug, Clone)]
struct SimDomain {
    spec: Domain,
    state: Observed,
    boots: u32,
    disks: Vec<AttachedDisk>,
}

impl SimDriver {
    pub fn new(capacity: &HostCapacity) -> Result<Self, Error> {
        let memory_bytes =
            quantity::parse_quantity(&capacity.memory).map_err(Error::InvalidCapacity)?;
        Ok(Self {
            memory_bytes,
            domains: Mutex::default(),
            volumes: Mutex::default(),
            events: broadcast::channel(1024).0,
            migration_time: Mutex::new(MIGRATION_TIME),
            fail_migrations: AtomicBool::new(false),
        })
    }

    /// Sets how long each live migration out of this host takes.
    pub fn set_migration_time(&self, time: Duration) {
        *self
            .migration_time
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = time;
    }

    /// Makes every live migration out of this host fail half-way (or succeed again).
    pub fn fail_migrations(&self, fail: bool) {
        self.fail_migrations.store(fail, Ordering::SeqCst);
    }

    /// Names of the domains that run (or are paused) here.
    pub fn running(&self) -> Vec<String> {
        self.lock()
            .iter()
            .filter(|(_, d)| matches!(d.state, Observed::Running | Observed::Paused))
            .map(|(name, _)| name.clone())
            .collect()
    }

    async fn migrate(
        &self,
        name: &str,
        target: &MigrationTarget,
        progress: tokio::sync::watch::Sender<i32>,
    ) -> Result<(), DriverError> {
        let started = tokio::time::Instant::now();
        let copy = self.copy(name, &target.host, progress);
        let Some(deadline) = target.deadline else {
            return copy.await;
        };
        tokio::time::timeout_at(deadline, copy)
            .await
            .unwrap_or_else(|_| {
                Err(DriverError::MigrationTimeout {
                    domain: name.to_string(),
                    target: target.host.clone(),
                    seconds: started.elapsed().as_secs(),
                })
            })
    }

    /// The copy of a migration: the domain leaves once every step is done, so one cut short
    /// (a deadline) leaves it here.
    async fn copy(
        &self,
        name: &str,
        target: &str,
        progress: tokio::sync::watch::Sender<i32>,
    ) -> Result<(), DriverError> {
        let running = |d: Option<&SimDomain>| d.is_some_and(|d| d.state == Observed::Running);
        if !running(self.lock().get(name)) {
            return Err(self.migration_failed(name, target, "the domain is not running"));
        }
        let step = *self
            .migration_time
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            / MIGRATION_STEPS;
        for i in 1..=MIGRATION_STEPS {
            tokio::time::sleep(step).await;
            if i == MIGRATION_STEPS / 2 && self.fail_migrations.load(Ordering::SeqCst) {
                return Err(self.migration_failed(name, target, "simulated failure"));
            }
            if !running(self.lock().get(name)) {
                return Err(self.migration_failed(name, target, "the domain stopped"));
            }
            let percent = i32::try_from(i * 100 / MIGRATION_STEPS).unwrap_or(100);
            progress.send_replace(percent);
        }
        self.lock().remove(name);
        Ok(())
    }

    fn migration_failed(&self, name: &str, target: &str, why: &str) -> DriverError {
        DriverError::Hypervisor {
            domain: name.to_string(),
            operation: "migrate",
            source: format!("to host {target}: {why}").into(),
        }
    }

    /// Stops a domain as if someone did it behind the agent's back (`virsh destroy`, a guest
    /// power-off), and reports the change like a real hypervisor's event.
    pub fn stop_behind_the_agents_back(&self, name: &str) {
        if let Some(d) = self.lock().get_mut(name) {
            d.state = Observed::Stopped;
        }
        let _ = self.events.send(name.to_string());
    }

    /// How many times the domain booted (starts and reboots).
    pub fn boots(&self, name: &str) -> u32 {
        self.lock().get(name).map_or(0, |d| d.boots)
    }

    /// Names of the domains the simulated hypervisor runs.
    pub fn domains(&self) -> Vec<String> {
        self.lock().keys().cloned().collect()
    }

    /// Writes `content` to the volume, as a guest would.
    pub fn write_volume(&self, volume: &str, content: &str) {
        self.volumes()
            .entry(volume.to_string())
            .or_default()
            .content = content.to_string();
    }

    /// What the volume holds.
    pub fn volume_content(&self, volume: &str) -> Option<String> {
        self.volumes().get(volume).map(|v| v.content.clone())
    }

    fn volumes(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, SimVolume>> {
        self.volumes.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Takes the snapshots `domain` asks for of each of its `disks` and drops the others.
    fn sync_snapshots(&self, domain: &Domain, disks: &[AttachedDisk]) {
        let mut volumes = self.volumes();
        for disk in disks {
            let volume = volumes.entry(disk.volume.clone()).or_default();
            let wanted = domain
                .snapshots
                .get(&disk.volume)
                .cloned()
                .unwrap_or_default();
            volume.snapshots.retain(|name, _| wanted.contains(name));
            for name in wanted {
                let content = volume.content.clone();
                volume.snapshots.entry(name).or_insert(content);
            }
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, SimDomain>> {
        // The map stays consistent even if a holder panicked: every update is a single insert.
        self.domains.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn ensure(&self, domain: &Domain) -> Result<Observed, DriverError> {
        let mut domains = self.lock();
        let wanted = match domain.power {
            PowerState::Running => Observed::Running,
            PowerState::Paused => Observed::Paused,
            PowerState::Stopped => Observed::Stopped,
        };
        let current = domains.get(&domain.name).map(|d| d.state);
        if current == Some(wanted) {
            if let Some(d) = domains.get_mut(&domain.name) {
                d.disks = sim_disks(domain, &d.disks);
                self.sync_snapshots(domain, &d.disks);
            }
            return Ok(wanted);
        }
        let active = |s: Observed| matches!(s, Observed::Running | Observed::Paused);
        // Like QEMU, vCPUs are time-shared (the scheduler applies the overcommit ratio); memory
        // is what a host runs out of.
        if active(wanted) && !current.is_some_and(active) {
            let memory = domains
                .values()
                .filter(|d| active(d.state))
                .fold(0u64, |m, d| m.saturating_add(d.spec.memory_bytes));
            if memory.saturating_add(domain.memory_bytes) > self.memory_bytes {
                return Err(DriverError::DoesNotFit {
                    domain: domain.name.clone(),
                    detail: format!(
                        "{} bytes of memory requested, {} of {} free",
                        domain.memory_bytes,
                        self.memory_bytes.saturating_sub(memory),
                        self.memory_bytes
                    ),
                });
            }
        }
        let boots = domains.get(&domain.name).map_or(0, |d| d.boots)
            + u32::from(active(wanted) && !current.is_some_and(active));
        let disks = sim_disks(
            domain,
            domains.get(&domain.name).map_or(&[][..], |d| &d.disks),
        );
        self.sync_snapshots(domain, &disks);
        domains.insert(
            domain.name.clone(),
            SimDomain {
                spec: domain.clone(),
                state: wanted,
                boots,
                disks,
            },
        );
        Ok(wanted)
    }
}

/// The disks `domain` has after attaching, detaching and growing what it asks for: the root
/// first, then the data disks. Like a real volume, a disk never shrinks.
fn sim_disks(domain: &Domain, before: &[AttachedDisk]) -> Vec<AttachedDisk> {
    let disk = |volume: String, device: &str, wanted: u64| {
        let had = before
            .iter()
            .find(|d| d.volume == volume)
            .map_or(0, |d| d.size_bytes);
        AttachedDisk {
            path: Some(format!("sim:///volumes/{volume}.qcow2")),
            volume,
            device: device.to_string(),
            size_bytes: had.max(wanted),
            snapshots: Vec::new(),
        }
    };
    let root = disk(
        format!("{}-root", domain.name),
        "vda",
        domain.root_disk_bytes.unwrap_or(0),
    );
    std::iter::once(root)
        .chain(
            domain
                .data_disks
                .iter()
                .map(|d| disk(d.volume.clone(), &d.device, d.size_bytes)),
        )
        .collect()
}

impl Hypervisor for SimDriver {
    fn name(&self) -> &'static str {
        "sim"
    }

    fn ensure<'a>(&'a self, domain: &'a Domain) -> BoxFuture<'a, Result<Observed, DriverError>> {
        Box::pin(future::ready(self.ensure(domain)))
    }

    fn state<'a>(&'a self, name: &'a str) -> BoxFuture<'a, Result<Option<Observed>, DriverError>> {
        Box::pin(future::ready(Ok(self.lock().get(name).map(|d| d.state))))
    }

    fn reboot<'a>(&'a self, name: &'a str) -> BoxFuture<'a, Result<(), DriverError>> {
        if let Some(d) = self.lock().get_mut(name) {
            if d.state == Observed::Running {
                d.boots += 1;
            }
        }
        Box::pin(future::ready(Ok(())))
    }

    fn destroy<'a>(&'a self, name: &'a str) -> BoxFuture<'a, Result<(), DriverError>> {
        self.lock().remove(name);
        Box::pin(future::ready(Ok(())))
    }

    fn power_off<'a>(&'a self, name: &'a str) -> BoxFuture<'a, Result<(), DriverError>> {
        self.stop_behind_the_agents_back(name);
        Box::pin(future::ready(Ok(())))
    }

    fn migrate<'a>(
        &'a self,
        name: &'a str,
        target: &'a MigrationTarget,
        progress: tokio::sync::watch::Sender<i32>,
    ) -> BoxFuture<'a, Result<(), DriverError>> {
        Box::pin(self.migrate(name, target, progress))
    }

    // Simulated volumes are everywhere at once, as on shared storage.
    fn prepare_incoming<'a>(
        &'a self,
        _domain: &'a Domain,
    ) -> BoxFuture<'a, Result<(), DriverError>> {
        Box::pin(future::ready(Ok(())))
    }

    fn owned_domains(&self) -> BoxFuture<'_, Result<Vec<String>, DriverError>> {
        Box::pin(future::ready(Ok(self.domains())))
    }

    fn disks<'a>(&'a self, name: &'a str) -> BoxFuture<'a, Result<Vec<AttachedDisk>, DriverError>> {
        let mut disks = self
            .lock()
            .get(name)
            .map(|d| d.disks.clone())
            .unwrap_or_default();
        let volumes = self.volumes();
        for disk in &mut disks {
            disk.snapshots = volumes
                .get(&disk.volume)
                .map(|v| v.snapshots.keys().cloned().collect())
                .unwrap_or_default();
        }
        Box::pin(future::ready(Ok(disks)))
    }

    fn delete_volume<'a>(&'a self, volume: &'a str) -> BoxFuture<'a, Result<(), DriverError>> {
        self.volumes().remove(volume);
        Box::pin(future::ready(Ok(())))
    }

    fn revert_disk<'a>(
        &'a self,
        name: &'a str,
        volume: &'a str,
        snapshot: &'a str,
    ) -> BoxFuture<'a, Result<(), DriverError>> {
        let reverted = self.volumes().get_mut(volume).and_then(|v| {
            v.content = v.snapshots.get(snapshot)?.clone();
            Some(())
        });
        Box::pin(future::ready(reverted.ok_or_else(|| {
            DriverError::Hypervisor {
                domain: name.to_string(),
                operation: "revert a disk of",
                source: format!("volume {volume} has no snapshot {snapshot}").into(),
            }
        })))
    }

    fn events(&self) -> BoxStream<'static, String> {
        BroadcastStream::new(self.events.subscribe())
            .filter_map(|e| future::ready(e.ok()))
            .boxed()
    }
}

#[cfg(test)]
mod tests {
    use k8s_openapi::apimachinery::pkg::api::resource::Quantity;

    use super::*;

    fn driver() -> SimDriver {
        SimDriver::new(&HostCapacity {
            cpu: 4,
            memory: Quantity("4Gi".into()),
        })
        .expect("valid capacity")
    }

    fn domain(name: &str, cpu: i64, gib: u64) -> Domain {
        Domain {
            name: name.into(),
            cpu,
            memory_bytes: gib << 30,
            image_url: "file:///img".into(),
            image_checksum: None,
            direct_boot: None,
            root_disk_bytes: None,
            power: PowerState::Running,
            nics: vec![],
            data_disks: vec![],
            snapshots: Default::default(),
        }
    }

    #[tokio::test]
    async fn start_and_destroy_are_idempotent() {
        let d = driver();
        let a = domain("ns.a", 1, 1);
        Hypervisor::ensure(&d, &a).await.expect("starts");
        Hypervisor::ensure(&d, &a).await.expect("starts again");
        assert_eq!(d.domains(), vec!["ns.a"]);
        d.destroy("ns.a").await.expect("destroys");
        d.destroy("ns.a").await.expect("destroys again");
        assert!(d.domains().is_empty());
    }

    #[tokio::test]
    async fn refuses_a_domain_past_capacity() {
        let d = driver();
        Hypervisor::ensure(&d, &domain("ns.a", 2, 3))
            .await
            .expect("fits");
        let err = Hypervisor::ensure(&d, &domain("ns.b", 1, 2))
            .await
            .unwrap_err();
        assert_eq!(err.reason(), "InsufficientResources");
        assert!(err.to_string().contains("memory"), "{err}");
        Hypervisor::ensure(&d, &domain("ns.c", 3, 1))
            .await
            .expect("vCPUs are overcommitted, not refused");
    }

    #[tokio::test]
    async fn follows_the_power_state_and_reports_changes() {
        let d = driver();
        let mut events = Hypervisor::events(&d);
        let mut a = domain("ns.a", 4, 4);
        assert_eq!(
            Hypervisor::ensure(&d, &a).await.expect("runs"),
            Observed::Running
        );
        a.power = PowerState::Paused;
        assert_eq!(
            Hypervisor::ensure(&d, &a).await.expect("pauses"),
            Observed::Paused
        );
        a.power = PowerState::Stopped;
        assert_eq!(
            Hypervisor::ensure(&d, &a).await.expect("stops"),
            Observed::Stopped
        );
        // A stopped domain holds nothing: another one takes the whole host.
        let b = domain("ns.b", 4, 4);
        Hypervisor::ensure(&d, &b).await.expect("fits");
        a.power = PowerState::Running;
        assert!(
            Hypervisor::ensure(&d, &a).await.is_err(),
            "no room to start again"
        );
        d.destroy("ns.b").await.expect("destroys");
        Hypervisor::ensure(&d, &a).await.expect("starts again");
        assert_eq!(d.boots("ns.a"), 2);
        d.reboot("ns.a").await.expect("reboots");
        assert_eq!(d.boots("ns.a"), 3);

        d.stop_behind_the_agents_back("ns.a");
        assert_eq!(events.next().await.as_deref(), Some("ns.a"));
        assert_eq!(
            d.state("ns.a").await.expect("state"),
            Some(Observed::Stopped)
        );
        assert_eq!(d.owned_domains().await.expect("lists"), ["ns.a"]);
    }

    #[tokio::test]
    async fn a_migration_reports_progress_and_leaves_the_source_or_fails_and_stays() {
        let d = driver();
        d.set_migration_time(Duration::from_millis(50));
        Hypervisor::ensure(&d, &domain("ns.a", 1, 1))
            .await
            .expect("runs");
        let to = MigrationTarget {
            host: "host-b".into(),
            address: None,
            deadline: None,
        };
        d.fail_migrations(true);
        let (progress, seen) = tokio::sync::watch::channel(0);
        let err = Hypervisor::migrate(&d, "ns.a", &to, progress)
            .await
            .unwrap_err();
        assert!(err.to_string().contains("migrate"), "{err}");
        assert!(*seen.borrow() < 100, "a failed move never reaches 100%");
        assert_eq!(d.running(), ["ns.a"], "still runs on the source");

        d.fail_migrations(false);
        let late = MigrationTarget {
            deadline: Some(tokio::time::Instant::now() + Duration::from_millis(20)),
            ..to.clone()
        };
        let (progress, _) = tokio::sync::watch::channel(0);
        let err = Hypervisor::migrate(&d, "ns.a", &late, progress)
            .await
            .unwrap_err();
        assert_eq!(err.reason(), "MigrationTimeout", "{err}");
        assert_eq!(d.running(), ["ns.a"], "a copy past its deadline stays");
        let (progress, seen) = tokio::sync::watch::channel(0);
        Hypervisor::migrate(&d, "ns.a", &to, progress)
            .await
            .expect("moves");
        assert_eq!(*seen.borrow(), 100);
        assert!(d.domains().is_empty(), "gone from the source");
        let (progress, _) = tokio::sync::watch::channel(0);
        assert!(
            Hypervisor::migrate(&d, "ns.a", &to, progress)
                .await
                .is_err(),
            "nothing left to move"
        );
    }

    #[tokio::test]
    async fn power_off_keeps_the_domain_stopped() {
        let d = driver();
        Hypervisor::ensure(&d, &domain("ns.a", 1, 1))
            .await
            .expect("runs");
        d.power_off("ns.a").await.expect("fenced");
        assert!(d.running().is_empty());
        assert_eq!(d.domains(), ["ns.a"], "its disks and record stay");
        d.power_off("ns.gone").await.expect("nothing to fence");
    }

    #[test]
    fn rejects_an_unparsable_capacity() {
        let capacity = HostCapacity {
            cpu: 1,
            memory: Quantity("lots".into()),
        };
        assert!(matches!(
            SimDriver::new(&capacity),
            Err(Error::InvalidCapacity(_))
        ));
    }
}
