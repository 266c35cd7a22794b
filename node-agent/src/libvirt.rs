//! The real hypervisor: a [`Hypervisor`] on the host's libvirtd (strata-virt), with volumes on
//! the host's local primary storage.
//!
//! The agent may be killed at any moment, so before it creates anything for a domain it writes
//! a record of it (`<state>/domains/<name>.json`: the domain, its volumes, its console log),
//! and removes the record last. After a restart [`Hypervisor::owned_domains`] lists exactly
//! what this agent may have left behind, and the agent destroys what no instance wants any
//! more. Domains it did not record (another agent's, an operator's) are never touched.
//!
//! ```text
//! <state>/domains/<name>.json   the record
//! <state>/console/<name>.log    the serial console (ttyS0), appended across restarts
//! <state>/storage/              primary storage: image cache and volumes (or `storage_dir`)
//! ```
//!
//! Live migration moves a running domain to another host's libvirtd (strata-virt's
//! [`Libvirt::migrate`], peer to peer, to the target's management address). The volumes do not
//! move: the storage directory must be one every host mounts at the same path. On success this
//! host forgets the domain (record, console log, cached definition) but keeps its volumes; the
//! target's agent records it when the instance is handed over.

use std::{
    path::{Path, PathBuf},
    time::Duration,
};

use futures::{future::BoxFuture, stream::BoxStream, StreamExt};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use serde::{Deserialize, Serialize};
use strata_apis::{HostCapacity, PowerState};
use strata_virt::{
    disk_snapshot,
    spec::{Boot, Disk, DiskFormat, Nic},
    DomainSpec, HostFeatures, Libvirt, Owner, Storage,
};

use crate::driver::{AttachedDisk, Domain, DriverError, Hypervisor, MigrationTarget, Observed};

/// How long a guest gets to release a hot-unplugged disk.
const DETACH_TIMEOUT: Duration = Duration::from_secs(30);

/// How the libvirt driver runs on this host.
#[derive(Clone, Debug)]
pub struct LibvirtConfig {
    /// Usually [`strata_virt::SYSTEM_URI`].
    pub uri: String,
    /// The agent's state directory (records, console logs, primary storage).
    pub state_dir: PathBuf,
    /// Primary storage: the image cache and the volumes. Live migration needs it on storage
    /// every host mounts at this same path (a SharedMountPoint primary storage).
    pub storage_dir: PathBuf,
    /// The Host this agent runs, written into each domain's metadata.
    pub host: String,
    /// How long a guest gets to power off after the ACPI button before it is destroyed.
    pub stop_timeout: Duration,
}

impl LibvirtConfig {
    pub fn new(host: impl Into<String>, state_dir: impl Into<PathBuf>) -> Self {
        let state_dir = state_dir.into();
        Self {
            uri: strata_virt::SYSTEM_URI.into(),
            storage_dir: state_dir.join("storage"),
            state_dir,
            host: host.into(),
            stop_timeout: Duration::from_secs(30),
        }
    }
}

/// What the agent created for one domain.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
struct Record {
    domain: String,
    volumes: Vec<String>,
    console_log: PathBuf,
}

/// Runs domains on libvirt/QEMU.
#[derive(Debug)]
pub struct LibvirtDriver {
    lv: Libvirt,
    storage: Storage,
    config: LibvirtConfig,
    /// What each domain was last defined as. Redefining emits a libvirt `Defined` event and a
    /// reconcile, so an unchanged definition is not sent again.
    defined: std::sync::Mutex<std::collections::HashMap<String, DomainSpec>>,
}

impl LibvirtDriver {
    /// Starts libvirtd if needed (hosts without systemd), connects, and opens the storage.
    pub async fn new(config: LibvirtConfig) -> Result<Self, strata_virt::Error> {
        let uri = config.uri.clone();
        tokio::task::spawn_blocking(move || strata_virt::daemon::ensure_running(&uri)).await??;
        let features = HostFeatures::detect();
        tracing::info!(uri = %config.uri, accel = ?features.accel, vhost_net = features.vhost_net, "libvirt driver");
        let lv = Libvirt::connect(&config.uri, features).await?;
        for dir in ["domains", "console"] {
            let path = config.state_dir.join(dir);
            std::fs::create_dir_all(&path).map_err(|source| strata_virt::Error::Io {
                action: "create",
                path: path.clone(),
                source,
            })?;
        }
        traversable(&config.state_dir)?;
        reachable_by_qemu(&config.state_dir)?;
        let storage = Storage::open(&config.storage_dir)?;
        reachable_by_qemu(&config.storage_dir)?;
        Ok(Self {
            lv,
            storage,
            config,
            defined: Default::default(),
        })
    }

    /// The serial console log of a domain.
    pub fn console_log(&self, name: &str) -> PathBuf {
        self.config
            .state_dir
            .join("console")
            .join(format!("{name}.log"))
    }

    /// The libvirt connection, for tests and tools.
    pub fn libvirt(&self) -> &Libvirt {
        &self.lv
    }

    fn record_path(&self, name: &str) -> PathBuf {
        self.config
            .state_dir
            .join("domains")
            .join(format!("{name}.json"))
    }

    fn root_volume(name: &str) -> String {
        format!("{name}-root")
    }

    async fn write_record(&self, record: &Record) -> Result<(), DriverError> {
        let path = self.record_path(&record.domain);
        let failed = |source| DriverError::Record {
            domain: record.domain.clone(),
            source,
        };
        let body = serde_json::to_vec_pretty(record).map_err(|e| failed(e.into()))?;
        let tmp = path.with_extension("json.tmp");
        tokio::fs::write(&tmp, body).await.map_err(failed)?;
        tokio::fs::rename(&tmp, &path).await.map_err(failed)
    }

    async fn read_record(&self, name: &str) -> Option<Record> {
        let body = tokio::fs::read(self.record_path(name)).await.ok()?;
        serde_json::from_slice(&body).ok()
    }

    /// Fetches what the domain boots from and builds its libvirt definition.
    async fn spec(&self, domain: &Domain) -> Result<DomainSpec, DriverError> {
        let image_error = |e: strata_virt::Error| DriverError::Image {
            domain: domain.name.clone(),
            source: Box::new(e),
        };
        let image = self
            .storage
            .cache_image(&domain.image_url, domain.image_checksum.as_deref())
            .await
            .map_err(image_error)?;
        let root = self
            .storage
            .create_root_volume(
                &Self::root_volume(&domain.name),
                &image,
                domain.root_disk_bytes,
            )
            .await
            .map_err(|e| self.failed(&domain.name, "create the root volume of", e))?;
        let boot = match &domain.direct_boot {
            None => Boot::Disk,
            Some(direct) => {
                let kernel = self
                    .storage
                    .cache_image(&direct.kernel_url, None)
                    .await
                    .map_err(image_error)?;
                let initrd = match &direct.initrd_url {
                    Some(url) => Some(
                        self.storage
                            .cache_image(url, None)
                            .await
                            .map_err(image_error)?
                            .path,
                    ),
                    None => None,
                };
                let cmdline = direct.cmdline.as_deref().unwrap_or("console=ttyS0");
                Boot::Kernel {
                    kernel: kernel.path,
                    initrd,
                    // The test image prints its name from here; other kernels ignore it.
                    cmdline: format!("{cmdline} strata.name={}", domain.name),
                }
            }
        };
        let mut disks = vec![Disk {
            path: root,
            format: DiskFormat::Qcow2,
            target: "vda".into(),
            serial: Some("root".into()),
        }];
        for data in &domain.data_disks {
            let path = self
                .storage
                .create_data_volume(&data.volume, data.size_bytes)
                .await
                .map_err(|e| self.failed(&domain.name, "create a data volume of", e))?;
            disks.push(Disk {
                path,
                format: DiskFormat::Qcow2,
                target: data.device.clone(),
                serial: Some(data.serial.clone()),
            });
        }
        let (namespace, name) =
            crate::instance::instance_of(&domain.name).unwrap_or(("", &domain.name));
        Ok(DomainSpec {
            name: domain.name.clone(),
            owner: Some(Owner {
                host: self.config.host.clone(),
                instance: format!("{namespace}/{name}"),
            }),
            vcpus: u32::try_from(domain.cpu.max(1)).unwrap_or(1),
            memory_bytes: domain.memory_bytes,
            boot,
            disks,
            nics: domain
                .nics
                .iter()
                .filter_map(|nic| {
                    Some(Nic {
                        mac: nic.spec.mac.clone(),
                        bridge: nic.bridge.clone()?,
                        tap: nic.tap.clone(),
                    })
                })
                .collect(),
            serial_log: Some(self.console_log(&domain.name)),
            vnc: true,
        })
    }

    async fn ensure_domain(&self, domain: &Domain) -> Result<Observed, DriverError> {
        let name = &domain.name;
        // The record first: whatever happens next, a restarted agent knows to look for it.
        if self.read_record(name).await.is_none() {
            self.write_record(&Record {
                domain: name.clone(),
                volumes: vec![Self::root_volume(name)],
                console_log: self.console_log(name),
            })
            .await?;
        }
        let spec = self.spec(domain).await?;
        let definition = self.definition(name, &spec).await?;
        let unchanged = self
            .defined
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .get(name)
            == Some(&definition);
        let exists = self
            .lv
            .state(name)
            .await
            .map_err(|e| self.failed(name, "query", e))?
            .is_some();
        if !(unchanged && exists) {
            self.lv
                .define(&definition)
                .await
                .map_err(|e| self.failed(name, "define", e))?;
            self.defined
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .insert(name.clone(), definition);
        }
        match domain.power {
            PowerState::Running => {
                self.lv
                    .resume(name)
                    .await
                    .map_err(|e| self.failed(name, "resume", e))?;
                self.lv
                    .start(name)
                    .await
                    .map_err(|e| self.failed(name, "start", e))?;
            }
            PowerState::Paused => {
                self.lv
                    .start(name)
                    .await
                    .map_err(|e| self.failed(name, "start", e))?;
                self.lv
                    .pause(name)
                    .await
                    .map_err(|e| self.failed(name, "pause", e))?;
            }
            PowerState::Stopped => {
                let graceful = self
                    .lv
                    .shutdown(name, self.config.stop_timeout)
                    .await
                    .map_err(|e| self.failed(name, "stop", e))?;
                if !graceful {
                    tracing::warn!(domain = %name, timeout = ?self.config.stop_timeout, "guest ignored the power button; destroyed");
                }
            }
        }
        self.sync_disks(domain, &spec).await?;
        self.sync_snapshots(domain).await?;
        Ok(self.observe(name).await?.unwrap_or(Observed::Stopped))
    }

    /// What to define for `spec`: itself, except that a running domain's data disks stay
    /// those it has live, because hot-plug changes the live domain and its definition
    /// together and refuses a disk the definition already has (or lacks, to unplug);
    /// [`Self::sync_disks`] then plugs and unplugs the difference.
    async fn definition(&self, name: &str, spec: &DomainSpec) -> Result<DomainSpec, DriverError> {
        let running = self
            .lv
            .state(name)
            .await
            .map_err(|e| self.failed(name, "query", e))?
            .is_some_and(strata_virt::PowerState::is_active);
        if !running {
            return Ok(spec.clone());
        }
        let live = self
            .lv
            .live_devices(name)
            .await
            .map_err(|e| self.failed(name, "read the disks of", e))?;
        let mut definition = spec.clone();
        definition.disks = live
            .disk
            .iter()
            .map(|l| {
                spec.disks
                    .iter()
                    .find(|d| d.target == l.target.dev)
                    .cloned()
                    .unwrap_or_else(|| Disk {
                        path: l
                            .source
                            .as_ref()
                            .map(|s| s.file.clone().into())
                            .unwrap_or_default(),
                        format: DiskFormat::Qcow2,
                        target: l.target.dev.clone(),
                        serial: None,
                    })
            })
            .collect();
        Ok(definition)
    }

    /// Brings a defined domain's disks to `spec`'s: a running one gets new data disks attached
    /// and gone ones detached live (the definition already has them for the next boot); every
    /// disk smaller than asked grows, live through QEMU while the domain runs.
    async fn sync_disks(&self, domain: &Domain, spec: &DomainSpec) -> Result<(), DriverError> {
        let name = &domain.name;
        let running = self
            .lv
            .state(name)
            .await
            .map_err(|e| self.failed(name, "query", e))?
            .is_some_and(strata_virt::PowerState::is_active);
        if running {
            for disk in &spec.disks[1..] {
                self.lv
                    .attach_disk(name, disk)
                    .await
                    .map_err(|e| self.failed(name, "attach a disk to", e))?;
            }
            let live = self
                .lv
                .live_devices(name)
                .await
                .map_err(|e| self.failed(name, "read the disks of", e))?;
            for gone in live
                .disk
                .iter()
                .map(|d| d.target.dev.as_str())
                .filter(|t| !spec.disks.iter().any(|d| d.target == *t))
            {
                self.lv
                    .detach_disk(name, gone, DETACH_TIMEOUT)
                    .await
                    .map_err(|e| self.failed(name, "detach a disk from", e))?;
            }
        }
        let wanted = domain
            .root_disk_bytes
            .map(|bytes| (Self::root_volume(name), "vda", bytes))
            .into_iter()
            .chain(
                domain
                    .data_disks
                    .iter()
                    .map(|d| (d.volume.clone(), d.device.as_str(), d.size_bytes)),
            );
        for (volume, target, bytes) in wanted {
            let have = self
                .storage
                .volume_info(&volume)
                .await
                .map_err(|e| self.failed(name, "measure a disk of", e))?
                .virtual_size;
            if have >= bytes {
                continue;
            }
            let grown = if running {
                self.lv.resize_disk(name, target, bytes).await
            } else {
                self.storage.resize(&volume, bytes).await
            };
            grown.map_err(|e| self.failed(name, "grow a disk of", e))?;
        }
        Ok(())
    }

    /// Takes the snapshots `domain` asks of each of its disks and deletes the others (internal
    /// qcow2 snapshots, [`strata_virt::disk_snapshot`]): through QEMU while the domain runs,
    /// with qemu-img while it is stopped.
    async fn sync_snapshots(&self, domain: &Domain) -> Result<(), DriverError> {
        let name = &domain.name;
        let running = self
            .lv
            .state(name)
            .await
            .map_err(|e| self.failed(name, "query", e))?
            .is_some_and(strata_virt::PowerState::is_active);
        let live = running.then_some(name.as_str());
        let uri = self.lv.uri();
        let volumes = std::iter::once(Self::root_volume(name))
            .chain(domain.data_disks.iter().map(|d| d.volume.clone()));
        for volume in volumes {
            let path = self
                .storage
                .volume_path(&volume)
                .map_err(|e| self.failed(name, "find a disk of", e))?;
            if !path.exists() {
                continue;
            }
            let wanted = domain.snapshots.get(&volume).map_or(&[][..], Vec::as_slice);
            let have = disk_snapshot::list(&path)
                .await
                .map_err(|e| self.failed(name, "list the snapshots of", e))?;
            for snapshot in wanted.iter().filter(|s| !have.contains(s)) {
                disk_snapshot::create(uri, live, &path, snapshot)
                    .await
                    .map_err(|e| self.failed(name, "snapshot a disk of", e))?;
            }
            for snapshot in have.iter().filter(|s| !wanted.contains(s)) {
                disk_snapshot::delete(uri, live, &path, snapshot)
                    .await
                    .map_err(|e| self.failed(name, "delete a disk snapshot of", e))?;
            }
        }
        Ok(())
    }

    /// Reverts the disk `volume` of the domain to `snapshot`. QEMU cannot revert an image it
    /// has open, so a running domain is shut down (the ACPI button, destroyed after the stop
    /// timeout), reverted and started again.
    async fn revert(&self, name: &str, volume: &str, snapshot: &str) -> Result<(), DriverError> {
        let path = self
            .storage
            .volume_path(volume)
            .map_err(|e| self.failed(name, "find a disk of", e))?;
        let running = self
            .lv
            .state(name)
            .await
            .map_err(|e| self.failed(name, "query", e))?
            .is_some_and(strata_virt::PowerState::is_active);
        if running {
            self.lv
                .shutdown(name, self.config.stop_timeout)
                .await
                .map_err(|e| self.failed(name, "stop", e))?;
        }
        let reverted = disk_snapshot::revert(&path, snapshot)
            .await
            .map_err(|e| self.failed(name, "revert a disk of", e));
        if running {
            self.lv
                .start(name)
                .await
                .map_err(|e| self.failed(name, "start", e))?;
        }
        reverted
    }

    async fn attached(&self, name: &str) -> Result<Vec<AttachedDisk>, DriverError> {
        let devices = match self.lv.live_devices(name).await {
            Ok(devices) => devices,
            Err(strata_virt::Error::NoDomain(_)) => return Ok(Vec::new()),
            Err(e) => return Err(self.failed(name, "read the disks of", e)),
        };
        let mut disks = Vec::new();
        for disk in devices.disk {
            let Some(source) = disk.source else { continue };
            let path = PathBuf::from(&source.file);
            let Some(volume) = path.file_stem().and_then(|s| s.to_str()) else {
                continue;
            };
            let info = strata_virt::volume_info(&path)
                .await
                .map_err(|e| self.failed(name, "measure a disk of", e))?;
            disks.push(AttachedDisk {
                volume: volume.to_string(),
                device: disk.target.dev,
                size_bytes: info.virtual_size,
                path: Some(source.file),
                snapshots: info.snapshots.into_iter().map(|s| s.name).collect(),
            });
        }
        Ok(disks)
    }

    async fn observe(&self, name: &str) -> Result<Option<Observed>, DriverError> {
        use strata_virt::PowerState as P;
        let state = self
            .lv
            .state(name)
            .await
            .map_err(|e| self.failed(name, "query", e))?;
        Ok(state.map(|s| match s {
            P::Running | P::ShuttingDown | P::Other => Observed::Running,
            P::Paused => Observed::Paused,
            P::Shutoff => Observed::Stopped,
            P::Crashed => Observed::Crashed,
        }))
    }

    async fn destroy_domain(&self, name: &str) -> Result<(), DriverError> {
        self.lv
            .undefine(name)
            .await
            .map_err(|e| self.failed(name, "undefine", e))?;
        self.defined
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .remove(name);
        let record = self.read_record(name).await.unwrap_or_else(|| Record {
            domain: name.to_string(),
            volumes: vec![Self::root_volume(name)],
            console_log: self.console_log(name),
        });
        for volume in &record.volumes {
            self.storage
                .delete_volume(volume)
                .await
                .map_err(|e| self.failed(name, "delete a volume of", e))?;
        }
        remove_if_exists(&record.console_log)
            .await
            .map_err(|source| DriverError::Record {
                domain: name.to_string(),
                source,
            })?;
        // The record goes last: until here a restarted agent would finish the job.
        remove_if_exists(&self.record_path(name))
            .await
            .map_err(|source| DriverError::Record {
                domain: name.to_string(),
                source,
            })
    }

    async fn owned(&self) -> Result<Vec<String>, DriverError> {
        let dir = self.config.state_dir.join("domains");
        let failed = |source| DriverError::Record {
            domain: "(all)".into(),
            source,
        };
        let mut entries = tokio::fs::read_dir(&dir).await.map_err(failed)?;
        let mut names = Vec::new();
        while let Some(entry) = entries.next_entry().await.map_err(failed)? {
            if let Some(name) = entry
                .file_name()
                .to_str()
                .and_then(|n| n.strip_suffix(".json"))
            {
                names.push(name.to_string());
            }
        }
        names.sort();
        Ok(names)
    }

    async fn migrate_domain(
        &self,
        name: &str,
        target: &MigrationTarget,
        progress: tokio::sync::watch::Sender<i32>,
    ) -> Result<(), DriverError> {
        let address = target
            .address
            .as_deref()
            .ok_or_else(|| DriverError::NoTargetAddress {
                domain: name.to_string(),
                target: target.host.clone(),
            })?;
        let to = strata_virt::MigrateTo::tcp(address);
        let report = |copied: u8| {
            progress.send_replace(i32::from(copied));
        };
        match self.lv.migrate(name, &to, target.deadline, report).await {
            Ok(()) => {}
            Err(strata_virt::Error::MigrationTimeout { seconds, .. }) => {
                return Err(DriverError::MigrationTimeout {
                    domain: name.to_string(),
                    target: target.host.clone(),
                    seconds,
                })
            }
            Err(e) => return Err(self.failed(name, "migrate", e)),
        }
        progress.send_replace(100);
        self.forget(name).await
    }

    /// After the domain left for another host: drops what this host kept of it except its
    /// volumes, which the domain still uses there.
    async fn forget(&self, name: &str) -> Result<(), DriverError> {
        self.defined
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .remove(name);
        let failed = |source| DriverError::Record {
            domain: name.to_string(),
            source,
        };
        remove_if_exists(&self.console_log(name))
            .await
            .map_err(failed)?;
        remove_if_exists(&self.record_path(name))
            .await
            .map_err(failed)
    }

    /// The volumes of a domain about to arrive must already be on this host's storage: the
    /// migration copies memory, not disks.
    async fn check_volumes(&self, domain: &Domain) -> Result<(), DriverError> {
        let volumes = std::iter::once(Self::root_volume(&domain.name))
            .chain(domain.data_disks.iter().map(|d| d.volume.clone()));
        for volume in volumes {
            let path = self
                .storage
                .volume_path(&volume)
                .map_err(|e| self.failed(&domain.name, "locate a volume of", e))?;
            if !tokio::fs::try_exists(&path).await.unwrap_or(false) {
                return Err(DriverError::VolumeNotShared {
                    domain: domain.name.clone(),
                    volume,
                    path: path.display().to_string(),
                });
            }
        }
        Ok(())
    }

    fn failed(&self, domain: &str, operation: &'static str, e: strata_virt::Error) -> DriverError {
        DriverError::Hypervisor {
            domain: domain.to_string(),
            operation,
            source: Box::new(e),
        }
    }
}

impl Hypervisor for LibvirtDriver {
    fn name(&self) -> &'static str {
        "libvirt"
    }

    fn ensure<'a>(&'a self, domain: &'a Domain) -> BoxFuture<'a, Result<Observed, DriverError>> {
        Box::pin(self.ensure_domain(domain))
    }

    fn state<'a>(&'a self, name: &'a str) -> BoxFuture<'a, Result<Option<Observed>, DriverError>> {
        Box::pin(self.observe(name))
    }

    fn console_tail(&self, name: &str) -> Option<String> {
        use std::io::{Read, Seek, SeekFrom};
        let mut log = std::fs::File::open(self.console_log(name)).ok()?;
        let len = log.metadata().ok()?.len();
        let window = crate::driver::CONSOLE_TAIL_BYTES as u64;
        log.seek(SeekFrom::Start(len.saturating_sub(window))).ok()?;
        let mut bytes = Vec::new();
        log.read_to_end(&mut bytes).ok()?;
        Some(crate::driver::tail_of(&bytes, len > window))
    }

    fn reboot<'a>(&'a self, name: &'a str) -> BoxFuture<'a, Result<(), DriverError>> {
        Box::pin(async move {
            self.lv
                .reboot(name)
                .await
                .map_err(|e| self.failed(name, "reboot", e))
        })
    }

    fn destroy<'a>(&'a self, name: &'a str) -> BoxFuture<'a, Result<(), DriverError>> {
        Box::pin(self.destroy_domain(name))
    }

    fn power_off<'a>(&'a self, name: &'a str) -> BoxFuture<'a, Result<(), DriverError>> {
        Box::pin(async move {
            self.lv
                .destroy(name)
                .await
                .map_err(|e| self.failed(name, "power off", e))
        })
    }

    fn migrate<'a>(
        &'a self,
        name: &'a str,
        target: &'a MigrationTarget,
        progress: tokio::sync::watch::Sender<i32>,
    ) -> BoxFuture<'a, Result<(), DriverError>> {
        Box::pin(self.migrate_domain(name, target, progress))
    }

    fn prepare_incoming<'a>(
        &'a self,
        domain: &'a Domain,
    ) -> BoxFuture<'a, Result<(), DriverError>> {
        Box::pin(self.check_volumes(domain))
    }

    fn owned_domains(&self) -> BoxFuture<'_, Result<Vec<String>, DriverError>> {
        Box::pin(self.owned())
    }

    fn disks<'a>(&'a self, name: &'a str) -> BoxFuture<'a, Result<Vec<AttachedDisk>, DriverError>> {
        Box::pin(self.attached(name))
    }

    fn delete_volume<'a>(&'a self, volume: &'a str) -> BoxFuture<'a, Result<(), DriverError>> {
        Box::pin(async move {
            self.storage
                .delete_volume(volume)
                .await
                .map_err(|e| DriverError::Storage {
                    volume: volume.to_string(),
                    operation: "delete",
                    source: Box::new(e),
                })
        })
    }

    fn revert_disk<'a>(
        &'a self,
        name: &'a str,
        volume: &'a str,
        snapshot: &'a str,
    ) -> BoxFuture<'a, Result<(), DriverError>> {
        Box::pin(self.revert(name, volume, snapshot))
    }

    fn events(&self) -> BoxStream<'static, String> {
        use strata_virt::EventKind as K;
        // Only changes of the power state: (un)definitions are the agent's own doing.
        strata_virt::events::lifecycle_events(self.lv.uri())
            .filter_map(|event| {
                futures::future::ready(
                    (!matches!(event.kind, K::Defined | K::Undefined)).then_some(event.domain),
                )
            })
            .boxed()
    }
}

/// What this machine offers guests: its logical CPUs and memory.
pub fn host_capacity() -> HostCapacity {
    let cpu = std::thread::available_parallelism().map_or(1, |n| n.get());
    let memory_kib = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|m| {
            m.lines()
                .find_map(|l| l.strip_prefix("MemTotal:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        })
        .unwrap_or(0);
    HostCapacity {
        cpu: i64::try_from(cpu).unwrap_or(1),
        memory: Quantity(format!("{memory_kib}Ki")),
    }
}

/// qemu runs as `libvirt-qemu` and must reach the volumes and kernels under the state dir.
fn traversable(dir: &Path) -> Result<(), strata_virt::Error> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o755)).map_err(|source| {
        strata_virt::Error::Io {
            action: "set permissions of",
            path: dir.to_path_buf(),
            source,
        }
    })
}

/// Every directory above the state dir must let others through (`o+x`), or QEMU fails to
/// open the volumes with a permission error only at the first start. Said at start-up instead.
fn reachable_by_qemu(dir: &Path) -> Result<(), strata_virt::Error> {
    use std::os::unix::fs::PermissionsExt;
    let dir = std::fs::canonicalize(dir).map_err(|source| strata_virt::Error::Io {
        action: "resolve",
        path: dir.to_path_buf(),
        source,
    })?;
    for ancestor in dir.ancestors() {
        let mode = std::fs::metadata(ancestor).map(|m| m.permissions().mode());
        if mode.is_ok_and(|mode| mode & 0o001 == 0) {
            return Err(strata_virt::Error::Invalid {
                what: "state directory",
                value: ancestor.display().to_string(),
                reason: "QEMU (libvirt-qemu) cannot traverse it: chmod o+x",
            });
        }
    }
    Ok(())
}

async fn remove_if_exists(path: &Path) -> std::io::Result<()> {
    match tokio::fs::remove_file(path).await {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e),
        _ => Ok(()),
    }
}

/// True when the host's system libvirtd answers (`strata up --driver auto` asks).
pub fn libvirt_answers() -> bool {
    strata_virt::daemon::answers(strata_virt::SYSTEM_URI)
}
