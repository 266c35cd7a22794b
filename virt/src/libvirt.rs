//! Domain lifecycle through the libvirt C library (the `virt` crate).
//!
//! libvirt calls block (they are RPCs to libvirtd), so each one runs on tokio's blocking pool.
//! Every operation is idempotent in the direction it moves: starting a running domain,
//! destroying a stopped one or undefining a missing one succeed, because the agent repeats
//! reconciles after crashes and cannot know how far the previous attempt got.

use std::{
    sync::{Arc, Mutex, PoisonError},
    time::Duration,
};

use virt::{
    connect::Connect,
    domain::{Domain, DomainState},
    sys,
};

use crate::{
    error::is_no_domain,
    spec::{Disk, DomainSpec, HostFeatures},
    xml, Error,
};

/// How often a wait re-reads a domain's state.
const POLL: Duration = Duration::from_millis(200);

/// A domain's power state, as far as Strata distinguishes them.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum PowerState {
    Running,
    Paused,
    /// The guest is shutting down (after an ACPI request) but QEMU still runs.
    ShuttingDown,
    /// Defined, not running.
    Shutoff,
    Crashed,
    /// PM-suspended or a state libvirt added later.
    Other,
}

impl PowerState {
    fn from_libvirt(state: DomainState) -> Self {
        match state {
            DomainState::Running | DomainState::Blocked => PowerState::Running,
            DomainState::Paused => PowerState::Paused,
            DomainState::Shutdown => PowerState::ShuttingDown,
            DomainState::Shutoff => PowerState::Shutoff,
            DomainState::Crashed => PowerState::Crashed,
            DomainState::NoState | DomainState::PMSuspended => PowerState::Other,
        }
    }

    /// QEMU runs (or is paused): the domain holds memory and can be destroyed.
    pub fn is_active(self) -> bool {
        matches!(
            self,
            PowerState::Running | PowerState::Paused | PowerState::ShuttingDown
        )
    }
}

/// One domain on the host.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DomainInfo {
    pub name: String,
    pub state: PowerState,
    /// From Strata's `<metadata>`; `None` for domains Strata did not create.
    pub owner: Option<crate::Owner>,
}

/// One snapshot of a domain.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SnapshotInfo {
    pub name: String,
    pub current: bool,
}

/// A connection to one libvirt daemon, for one host's features.
#[derive(Clone)]
pub struct Libvirt {
    uri: String,
    host: HostFeatures,
    conn: Arc<Mutex<Option<Arc<Connect>>>>,
}

impl std::fmt::Debug for Libvirt {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Libvirt")
            .field("uri", &self.uri)
            .field("host", &self.host)
            .finish()
    }
}

impl Libvirt {
    /// Connects now, so a missing daemon is reported at start-up rather than at the first VM.
    pub async fn connect(uri: &str, host: HostFeatures) -> Result<Self, Error> {
        // libvirt prints every error to stderr by default, expected ones ("no such domain")
        // included; ours are returned and logged where they matter.
        virt::error::clear_error_callback();
        let lv = Self {
            uri: uri.to_string(),
            host,
            conn: Arc::default(),
        };
        lv.blocking(|_| Ok(())).await?;
        Ok(lv)
    }

    pub fn uri(&self) -> &str {
        &self.uri
    }

    pub fn host(&self) -> &HostFeatures {
        &self.host
    }

    /// Runs `f` with a live connection on the blocking pool. A connection that died (libvirtd
    /// restarted) is replaced, so the agent survives a daemon restart; running guests do too.
    async fn blocking<T, F>(&self, f: F) -> Result<T, Error>
    where
        T: Send + 'static,
        F: FnOnce(&Connect) -> Result<T, Error> + Send + 'static,
    {
        let slot = self.conn.clone();
        let uri = self.uri.clone();
        tokio::task::spawn_blocking(move || {
            let conn = {
                let mut slot = slot.lock().unwrap_or_else(PoisonError::into_inner);
                match slot.as_ref() {
                    Some(c) if c.is_alive().unwrap_or(false) => c.clone(),
                    _ => {
                        let c = Arc::new(Connect::open(Some(&uri)).map_err(|source| {
                            Error::Connect {
                                uri: uri.clone(),
                                source,
                            }
                        })?);
                        *slot = Some(c.clone());
                        c
                    }
                }
            };
            f(&conn)
        })
        .await?
    }

    /// Defines (or redefines) the domain from `spec`. Redefining a running domain changes its
    /// persistent config only; it takes effect at the next start.
    pub async fn define(&self, spec: &DomainSpec) -> Result<(), Error> {
        let mut doc = spec.to_xml(&self.host)?;
        let name = spec.name.clone();
        self.blocking(move |c| {
            // libvirt refuses a definition that would change an existing domain's UUID, and
            // generates a new one when none is given: keep the existing one.
            if let Ok(existing) = c.lookup_domain_by_name(&name) {
                doc.uuid = Some(existing.uuid_string().map_err(libvirt("read", &name))?);
            }
            c.define_domain_xml(&xml::to_string(&doc)?)
                .map(drop)
                .map_err(libvirt("define", &name))
        })
        .await
    }

    /// Starts a defined domain; succeeds when it already runs.
    pub async fn start(&self, name: &str) -> Result<(), Error> {
        self.with_domain(name, "start", |d, name| {
            if d.is_active().map_err(libvirt("query", name))? {
                return Ok(());
            }
            d.create().map(drop).map_err(libvirt("start", name))
        })
        .await
    }

    /// Stops the domain at once (pulls the plug); succeeds when it is not running or absent.
    pub async fn destroy(&self, name: &str) -> Result<(), Error> {
        match self
            .with_domain(name, "destroy", |d, name| {
                if !d.is_active().map_err(libvirt("query", name))? {
                    return Ok(());
                }
                match d.destroy() {
                    Ok(()) => Ok(()),
                    // It stopped by itself between the two calls.
                    Err(e) if !d.is_active().unwrap_or(true) => {
                        tracing::debug!(domain = name, error = %e, "domain stopped meanwhile");
                        Ok(())
                    }
                    Err(e) => Err(libvirt("destroy", name)(e)),
                }
            })
            .await
        {
            Err(e) if e.is_no_domain() => Ok(()),
            other => other,
        }
    }

    /// Asks the guest to power off (ACPI power button) and waits up to `timeout`; a guest that
    /// ignores the request is destroyed. Returns whether the guest stopped by itself.
    pub async fn shutdown(&self, name: &str, timeout: Duration) -> Result<bool, Error> {
        match self.state(name).await? {
            None => return Ok(true),
            Some(s) if !s.is_active() => return Ok(true),
            Some(PowerState::Paused) => {
                // A paused guest cannot see the button.
                self.resume(name).await?;
            }
            Some(_) => {}
        }
        let asked = self
            .with_domain(name, "shut down", |d, name| {
                d.shutdown_flags(sys::VIR_DOMAIN_SHUTDOWN_ACPI_POWER_BTN)
                    .map_err(libvirt("shut down", name))
            })
            .await;
        if let Err(e) = asked {
            if !self.state(name).await?.is_some_and(PowerState::is_active) {
                return Ok(true);
            }
            tracing::warn!(domain = name, error = %e, "ACPI shutdown refused, destroying");
        } else if self.wait_for(name, timeout, |s| !s.is_active()).await? {
            return Ok(true);
        }
        self.destroy(name).await?;
        Ok(false)
    }

    /// Reboots the guest by ACPI (libvirt powers it off and starts it again in the same QEMU
    /// process); falls back to a hard reset when the request is refused.
    pub async fn reboot(&self, name: &str) -> Result<(), Error> {
        self.with_domain(name, "reboot", |d, name| {
            match d.reboot(sys::VIR_DOMAIN_REBOOT_ACPI_POWER_BTN) {
                Ok(()) => Ok(()),
                Err(e) => {
                    tracing::info!(domain = name, error = %e, "ACPI reboot refused, resetting");
                    d.reset().map_err(libvirt("reset", name))
                }
            }
        })
        .await
    }

    /// Pauses the vCPUs; memory stays allocated. Succeeds when already paused.
    pub async fn pause(&self, name: &str) -> Result<(), Error> {
        self.with_domain(name, "pause", |d, name| {
            if domain_state(d, name)? == PowerState::Paused {
                return Ok(());
            }
            d.suspend().map_err(libvirt("pause", name))
        })
        .await
    }

    /// Resumes a paused domain. Succeeds when it runs already.
    pub async fn resume(&self, name: &str) -> Result<(), Error> {
        self.with_domain(name, "resume", |d, name| {
            if domain_state(d, name)? != PowerState::Paused {
                return Ok(());
            }
            d.resume().map_err(libvirt("resume", name))
        })
        .await
    }

    /// Destroys and undefines the domain with its snapshot metadata; succeeds when absent.
    /// Volumes are the storage driver's.
    pub async fn undefine(&self, name: &str) -> Result<(), Error> {
        self.destroy(name).await?;
        match self
            .with_domain(name, "undefine", |d, name| {
                d.undefine_flags(
                    sys::VIR_DOMAIN_UNDEFINE_SNAPSHOTS_METADATA
                        | sys::VIR_DOMAIN_UNDEFINE_MANAGED_SAVE
                        | sys::VIR_DOMAIN_UNDEFINE_NVRAM,
                )
                .map_err(libvirt("undefine", name))
            })
            .await
        {
            Err(e) if e.is_no_domain() => Ok(()),
            other => other,
        }
    }

    /// The domain's power state; `None` when it is not defined.
    pub async fn state(&self, name: &str) -> Result<Option<PowerState>, Error> {
        match self.with_domain(name, "query", domain_state).await {
            Ok(s) => Ok(Some(s)),
            Err(e) if e.is_no_domain() => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Every domain on the daemon, defined or transient, with Strata's owner when it has one.
    pub async fn list(&self) -> Result<Vec<DomainInfo>, Error> {
        self.blocking(|c| {
            let domains = c.list_all_domains(0).map_err(libvirt("list", "(all)"))?;
            let mut out = Vec::with_capacity(domains.len());
            for d in domains {
                let Ok(name) = d.name() else { continue };
                // A domain undefined while we list is simply not reported.
                let state = match domain_state(&d, &name) {
                    Ok(s) => s,
                    Err(e) if e.is_no_domain() => continue,
                    Err(e) => return Err(e),
                };
                let owner = d
                    .metadata(
                        sys::VIR_DOMAIN_METADATA_ELEMENT as i32,
                        Some(xml::METADATA_NS),
                        0,
                    )
                    .ok()
                    .and_then(|m| xml::from_str::<xml::OwnerXml>(&m).ok())
                    .map(|o| crate::Owner {
                        host: o.host,
                        instance: o.instance,
                    });
                out.push(DomainInfo { name, state, owner });
            }
            out.sort_by(|a, b| a.name.cmp(&b.name));
            Ok(out)
        })
        .await
    }

    /// The live XML's devices: disks, NICs (with their tap names), VNC port.
    pub async fn live_devices(&self, name: &str) -> Result<xml::LiveDevices, Error> {
        let doc = self
            .with_domain(name, "read", |d, name| {
                d.xml_desc(0).map_err(libvirt("read", name))
            })
            .await?;
        Ok(xml::from_str::<xml::LiveDomain>(&doc)?.devices)
    }

    /// Attaches a disk to the running domain and to its persistent config (`virsh attach-device
    /// --live --config`), or to the config only when it is stopped. Attaching a disk that is
    /// already there succeeds.
    pub async fn attach_disk(&self, name: &str, disk: &Disk) -> Result<(), Error> {
        if self
            .live_devices(name)
            .await?
            .disk
            .iter()
            .any(|d| d.target.dev == disk.target)
        {
            return Ok(());
        }
        let doc = xml::to_string(&disk.to_xml())?;
        self.with_domain(name, "attach a disk to", move |d, name| {
            d.attach_device_flags(&doc, affect(d, name)?)
                .map_err(libvirt("attach a disk to", name))
        })
        .await
    }

    /// Detaches the disk `target` (e.g. `vdb`) and waits until the guest released it (hot
    /// unplug needs the guest to acknowledge the ACPI eject). Succeeds when it is not attached.
    pub async fn detach_disk(
        &self,
        name: &str,
        target: &str,
        timeout: Duration,
    ) -> Result<(), Error> {
        let devices = self.live_devices(name).await?;
        let Some(live) = devices.disk.iter().find(|d| d.target.dev == target) else {
            return Ok(());
        };
        let disk = Disk {
            path: live
                .source
                .as_ref()
                .map(|s| s.file.clone().into())
                .unwrap_or_default(),
            format: crate::DiskFormat::Qcow2,
            target: target.to_string(),
            serial: None,
        };
        let doc = xml::to_string(&disk.to_xml())?;
        self.with_domain(name, "detach a disk from", move |d, name| {
            d.detach_device_flags(&doc, affect(d, name)?)
                .map_err(libvirt("detach a disk from", name))
        })
        .await?;
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let devices = self.live_devices(name).await?;
            if !devices.disk.iter().any(|d| d.target.dev == target) {
                return Ok(());
            }
            if tokio::time::Instant::now() >= deadline {
                return Err(Error::Timeout {
                    domain: name.to_string(),
                    what: "release the detached disk",
                    seconds: timeout.as_secs(),
                });
            }
            tokio::time::sleep(POLL).await;
        }
    }

    /// Grows the disk `target` of a running domain to `bytes` (QEMU resizes the image and the
    /// guest sees the new capacity at once). For a stopped domain use [`crate::Storage::resize`].
    pub async fn resize_disk(&self, name: &str, target: &str, bytes: u64) -> Result<(), Error> {
        let target = target.to_string();
        self.with_domain(name, "resize a disk of", move |d, name| {
            d.block_resize(&target, bytes, sys::VIR_DOMAIN_BLOCK_RESIZE_BYTES)
                .map_err(libvirt("resize a disk of", name))
        })
        .await
    }

    /// Takes an internal qcow2 snapshot: disks only when stopped, disks and memory (a full
    /// checkpoint) when running. Taking an existing snapshot again succeeds.
    pub async fn snapshot_create(&self, name: &str, snapshot: &str) -> Result<(), Error> {
        crate::spec::validate_name(snapshot)?;
        let doc = xml::to_string(&xml::SnapshotXml {
            name: snapshot.to_string(),
            description: Some("taken by Strata".into()),
        })?;
        let snapshot = snapshot.to_string();
        self.with_domain(name, "snapshot", move |d, name| {
            if Domain::lookup_snapshot_by_name(d, &snapshot, 0).is_ok() {
                return Ok(());
            }
            d.create_snapshot_xml(&doc, sys::VIR_DOMAIN_SNAPSHOT_CREATE_ATOMIC)
                .map(drop)
                .map_err(libvirt("snapshot", name))
        })
        .await
    }

    /// Reverts disks (and, for a checkpoint of a running domain, memory and power state) to
    /// the snapshot.
    pub async fn snapshot_revert(&self, name: &str, snapshot: &str) -> Result<(), Error> {
        let snapshot = snapshot.to_string();
        self.with_domain(name, "revert", move |d, name| {
            let snap = Domain::lookup_snapshot_by_name(d, &snapshot, 0).map_err(|_| {
                Error::NoSnapshot {
                    domain: name.to_string(),
                    snapshot: snapshot.clone(),
                }
            })?;
            snap.revert(0).map_err(libvirt("revert", name))
        })
        .await
    }

    /// Deletes the snapshot; succeeds when it does not exist.
    pub async fn snapshot_delete(&self, name: &str, snapshot: &str) -> Result<(), Error> {
        let snapshot = snapshot.to_string();
        self.with_domain(name, "delete a snapshot of", move |d, name| {
            match Domain::lookup_snapshot_by_name(d, &snapshot, 0) {
                Ok(snap) => snap
                    .delete(0)
                    .map_err(libvirt("delete a snapshot of", name)),
                Err(_) => Ok(()),
            }
        })
        .await
    }

    /// The domain's snapshots.
    pub async fn snapshots(&self, name: &str) -> Result<Vec<SnapshotInfo>, Error> {
        self.with_domain(name, "list snapshots of", |d, name| {
            let mut out = Vec::new();
            for s in d
                .list_all_snapshots(0)
                .map_err(libvirt("list snapshots of", name))?
            {
                out.push(SnapshotInfo {
                    name: s.name().map_err(libvirt("list snapshots of", name))?,
                    current: s.is_current(0).unwrap_or(false),
                });
            }
            out.sort_by(|a, b| a.name.cmp(&b.name));
            Ok(out)
        })
        .await
    }

    /// Waits until the domain's state satisfies `done` (an absent domain counts as Shutoff).
    /// Returns false on timeout.
    pub async fn wait_for(
        &self,
        name: &str,
        timeout: Duration,
        done: impl Fn(PowerState) -> bool,
    ) -> Result<bool, Error> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let state = self.state(name).await?.unwrap_or(PowerState::Shutoff);
            if done(state) {
                return Ok(true);
            }
            if tokio::time::Instant::now() >= deadline {
                return Ok(false);
            }
            tokio::time::sleep(POLL).await;
        }
    }

    pub(crate) async fn with_domain<T, F>(
        &self,
        name: &str,
        action: &'static str,
        f: F,
    ) -> Result<T, Error>
    where
        T: Send + 'static,
        F: FnOnce(&Domain, &str) -> Result<T, Error> + Send + 'static,
    {
        let name = name.to_string();
        self.blocking(move |c| {
            let d = match c.lookup_domain_by_name(&name) {
                Ok(d) => d,
                Err(e) if is_no_domain(&e) => return Err(Error::NoDomain(name)),
                Err(e) => return Err(libvirt(action, &name)(e)),
            };
            f(&d, &name)
        })
        .await
    }
}

fn domain_state(d: &Domain, name: &str) -> Result<PowerState, Error> {
    let (state, _reason) = d.state().map_err(libvirt("query", name))?;
    Ok(match state {
        virt::enumutil::Enum::Known(s) => PowerState::from_libvirt(s),
        virt::enumutil::Enum::Unknown(_) => PowerState::Other,
    })
}

/// Device changes go to the running guest and the persistent config, or the config alone
/// when the domain is stopped (libvirt refuses `LIVE` then).
fn affect(d: &Domain, name: &str) -> Result<u32, Error> {
    let live = d.is_active().map_err(libvirt("query", name))?;
    Ok(if live {
        sys::VIR_DOMAIN_AFFECT_LIVE | sys::VIR_DOMAIN_AFFECT_CONFIG
    } else {
        sys::VIR_DOMAIN_AFFECT_CONFIG
    })
}

fn libvirt(action: &'static str, domain: &str) -> impl FnOnce(virt::error::Error) -> Error {
    let domain = domain.to_string();
    move |source| {
        if is_no_domain(&source) {
            Error::NoDomain(domain)
        } else {
            Error::Libvirt {
                action,
                domain,
                source,
            }
        }
    }
}
