//! Live migration of a running domain to another host's libvirtd.
//!
//! Peer to peer (`VIR_MIGRATE_PEER2PEER`): this host's libvirtd opens the connection to the
//! target's and drives both sides, so the caller needs no connection to the target. The memory
//! travels on its own URI (the target's migration address), not to whatever the target's
//! hostname resolves to. The domain lands persistent on the target and is undefined here; its
//! disks stay where they are, so they must be on storage both hosts mount at the same path.
//!
//! libvirt only calls storage shared when it recognises the file system (NFS, GlusterFS, Ceph,
//! GPFS…) or finds the path in `shared_filesystems` of the source's qemu.conf; a
//! SharedMountPoint primary storage (any file system every host mounts, a bind mount included)
//! is neither, and libvirt refuses with "Migration without shared storage is unsafe". Strata
//! only moves VMs whose volumes its controller found on shared primary storage, so the call
//! says so with `VIR_MIGRATE_UNSAFE`.
//!
//! Progress comes from the job's memory counters (`virDomainGetJobInfo`, as `virsh domjobinfo`).
//! The `virt` crate has no binding of `virDomainAbortJob` and the workspace forbids `unsafe`,
//! so a copy past its deadline is cancelled with `virsh domjobabort`, as events use `virsh`.

use std::{process::Stdio, time::Duration};

use tokio::time::Instant;
use virt::sys;

use crate::{Error, Libvirt};

/// How often a running migration's job is read for progress and its deadline checked.
const POLL: Duration = Duration::from_millis(250);

/// Where a domain moves to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MigrateTo {
    /// The target host's libvirtd, e.g. `qemu+tcp://10.0.0.2/system`.
    pub uri: String,
    /// Where the target's QEMU receives the memory, e.g. `tcp://10.0.0.2`.
    pub data_uri: String,
}

impl MigrateTo {
    /// The target reached at `address` over libvirt's TCP transport (`listen_tcp` on the
    /// target's libvirtd), the memory sent to the same address.
    pub fn tcp(address: &str) -> Self {
        Self {
            uri: format!("qemu+tcp://{address}/system"),
            data_uri: format!("tcp://{address}"),
        }
    }
}

const FLAGS: u32 = sys::VIR_MIGRATE_LIVE
    | sys::VIR_MIGRATE_PEER2PEER
    | sys::VIR_MIGRATE_PERSIST_DEST
    | sys::VIR_MIGRATE_UNDEFINE_SOURCE
    | sys::VIR_MIGRATE_ABORT_ON_ERROR
    | sys::VIR_MIGRATE_UNSAFE;

impl Libvirt {
    /// Moves the running domain live to `to`. `progress` gets the share of memory copied
    /// (0 to 99; success is the return). A copy not finished at `deadline` is aborted and
    /// reported as [`Error::MigrationTimeout`]; on any error the domain still runs here. When
    /// a migration of the domain is already under way (an agent restarted during one), it is
    /// followed instead of started again.
    pub async fn migrate(
        &self,
        name: &str,
        to: &MigrateTo,
        deadline: Option<Instant>,
        progress: impl Fn(u8) + Send,
    ) -> Result<(), Error> {
        let started = Instant::now();
        let under_way = self.job(name).await?.is_some();
        let moving = {
            let lv = self.clone();
            let (name, to) = (name.to_string(), to.clone());
            tokio::spawn(async move {
                if under_way {
                    tracing::info!(domain = %name, "a migration is already under way: following it");
                    return lv.follow(&name, &to).await;
                }
                lv.with_domain(&name, "migrate", move |d, name| {
                    let params = virt::domain::MigrateParameters {
                        uri: Some(to.data_uri.clone()),
                        ..Default::default()
                    };
                    d.migrate_to_uri3(Some(&to.uri), params, FLAGS)
                        .map_err(|source| Error::Migrate {
                            domain: name.to_string(),
                            target: to.uri.clone(),
                            source,
                        })
                })
                .await
            })
        };
        tokio::pin!(moving);
        let mut aborted = false;
        loop {
            tokio::select! {
                done = &mut moving => {
                    let result = done?;
                    return match result {
                        Err(_) if aborted => Err(Error::MigrationTimeout {
                            domain: name.to_string(),
                            target: to.uri.clone(),
                            seconds: started.elapsed().as_secs(),
                        }),
                        other => other,
                    };
                }
                () = tokio::time::sleep(POLL) => {}
            }
            if let Ok(Some(copied)) = self.job(name).await {
                progress(copied);
            }
            if !aborted && deadline.is_some_and(|d| Instant::now() >= d) {
                tracing::warn!(domain = %name, target = %to.uri, "migration past its deadline: aborting");
                // A job that ended meanwhile has nothing to abort; the result says how it ended.
                if let Err(error) = self.abort_job(name).await {
                    tracing::debug!(domain = %name, %error, "abort refused");
                }
                aborted = true;
            }
        }
    }

    /// The share of memory copied by the domain's running job, `None` without a job.
    async fn job(&self, name: &str) -> Result<Option<u8>, Error> {
        self.with_domain(name, "read the job of", |d, name| {
            let job = d.job_info().map_err(|source| Error::Libvirt {
                action: "read the job of",
                domain: name.to_string(),
                source,
            })?;
            if u32::try_from(job.r#type).unwrap_or_default() == sys::VIR_DOMAIN_JOB_NONE {
                return Ok(None);
            }
            let total = job.mem_total.unwrap_or_default();
            let left = job.mem_remaining.unwrap_or_default().min(total);
            let copied = (total - left).saturating_mul(100).checked_div(total);
            Ok(Some(
                copied.map_or(0, |p| u8::try_from(p.min(99)).unwrap_or(99)),
            ))
        })
        .await
    }

    /// Waits for a migration started by someone else to end: it succeeded when the domain has
    /// left this host.
    async fn follow(&self, name: &str, to: &MigrateTo) -> Result<(), Error> {
        loop {
            match self.job(name).await {
                Ok(Some(_)) => tokio::time::sleep(POLL).await,
                Ok(None) => break,
                Err(e) if e.is_no_domain() => return Ok(()),
                Err(e) => return Err(e),
            }
        }
        match self.state(name).await? {
            Some(state) if state.is_active() => Err(Error::MigrationNotFinished {
                domain: name.to_string(),
                target: to.uri.clone(),
            }),
            _ => Ok(()),
        }
    }

    /// Cancels the domain's running job (`virsh domjobabort`).
    async fn abort_job(&self, name: &str) -> Result<(), Error> {
        let out = tokio::process::Command::new("virsh")
            .args(["-c", self.uri(), "domjobabort", name])
            .stdin(Stdio::null())
            .output()
            .await
            .map_err(|source| Error::Spawn {
                program: "virsh".into(),
                source,
            })?;
        if out.status.success() {
            return Ok(());
        }
        Err(Error::Command {
            program: "virsh domjobabort".into(),
            status: out.status.to_string(),
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
        })
    }
}
