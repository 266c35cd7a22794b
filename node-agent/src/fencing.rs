//! Self-fencing: an agent that cannot renew its host's Lease (renewals fail, or hang for a
//! heartbeat) for almost the lease's whole duration powers off every domain it runs. An agent
//! that is merely slow (renewals succeed late on a starved CPU) is not fenced. By then the controllers see the host Disconnected and may
//! restart its HA VMs elsewhere (after `GlobalConfig.spec.ha.restartAfterSeconds` more), so a
//! partitioned host must not keep running them: the same VM would run twice, on one disk.
//!
//! While fenced the agent starts nothing. The first renewal that succeeds lifts the fence;
//! the agent then destroys the domains no longer placed on it (their VMs were restarted
//! elsewhere) and reports the rest stopped, which their run strategy acts on.

use std::{
    sync::{Mutex, PoisonError},
    time::Duration,
};

use tokio::time::Instant;
use tracing::{info, warn};

use crate::driver::Hypervisor;

/// What the agent knows about its own lease.
#[derive(Debug)]
pub(crate) struct Fence {
    /// How long after the last successful renewal the agent fences itself.
    timeout: Duration,
    state: Mutex<State>,
}

#[derive(Debug, Clone, Copy)]
struct State {
    renewed: Instant,
    fenced: bool,
    /// A renewal failed since the last success.
    failed: bool,
    /// When the renewal under way started.
    attempt: Option<Instant>,
}

impl Fence {
    pub fn new(timeout: Duration) -> Self {
        Self {
            timeout,
            state: Mutex::new(State {
                renewed: Instant::now(),
                fenced: false,
                failed: false,
                attempt: None,
            }),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        // Two plain fields, each written in one statement: consistent even after a panic.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Whether the agent must leave its domains alone (stopped) until its lease is renewed.
    pub fn fenced(&self) -> bool {
        self.lock().fenced
    }

    /// Records that a renewal starts.
    pub fn renewing(&self) {
        self.lock().attempt = Some(Instant::now());
    }

    /// Records a failed renewal.
    pub fn failed(&self) {
        let mut state = self.lock();
        state.failed = true;
        state.attempt = None;
    }

    /// Records a successful renewal; returns whether it lifted the fence.
    pub fn renewed(&self) -> bool {
        let mut state = self.lock();
        state.renewed = Instant::now();
        state.failed = false;
        state.attempt = None;
        std::mem::replace(&mut state.fenced, false)
    }

    /// Whether the lease has now gone unrenewed past the timeout and the fence is not up yet;
    /// raises it if so.
    fn due(&self, now: Instant) -> bool {
        let mut state = self.lock();
        // A renewal hanging this long counts as failed (a partition that drops packets).
        let stalled = state
            .attempt
            .is_some_and(|at| now.duration_since(at) >= self.timeout / 3);
        if state.fenced
            || !(state.failed || stalled)
            || now.duration_since(state.renewed) < self.timeout
        {
            return false;
        }
        state.fenced = true;
        true
    }

    /// Checks the lease every `period` and powers off every owned domain once it has gone
    /// unrenewed past the timeout. Runs until dropped.
    pub async fn watch(&self, host: &str, driver: &dyn Hypervisor, period: Duration) {
        let mut ticks = tokio::time::interval(period);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            ticks.tick().await;
            if !self.due(Instant::now()) {
                continue;
            }
            warn!(%host, timeout = ?self.timeout, "lease not renewed in time: fencing, powering off every domain");
            let owned = match driver.owned_domains().await {
                Ok(owned) => owned,
                Err(error) => {
                    warn!(%host, %error, "cannot list the domains to fence");
                    continue;
                }
            };
            for name in &owned {
                if let Err(error) = driver.power_off(name).await {
                    warn!(%host, domain = %name, %error, "failed to fence a domain");
                }
            }
            info!(%host, domains = owned.len(), "fenced");
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
    use strata_apis::{HostCapacity, PowerState};

    use super::*;
    use crate::{driver::Domain, SimDriver};

    #[tokio::test]
    async fn an_unrenewed_lease_powers_off_every_domain_once_until_renewed() {
        let sim = Arc::new(
            SimDriver::new(&HostCapacity {
                cpu: 4,
                memory: Quantity("4Gi".into()),
            })
            .expect("capacity"),
        );
        for name in ["ns.a", "ns.b"] {
            let domain = Domain {
                name: name.into(),
                cpu: 1,
                memory_bytes: 1 << 30,
                image_url: "file:///img".into(),
                image_checksum: None,
                direct_boot: None,
                root_disk_bytes: None,
                power: PowerState::Running,
                nics: vec![],
                data_disks: vec![],
                snapshots: Default::default(),
            };
            Hypervisor::ensure(sim.as_ref(), &domain)
                .await
                .expect("runs");
        }
        let fence = Arc::new(Fence::new(Duration::from_millis(400)));
        let watcher = {
            let (fence, sim) = (fence.clone(), sim.clone());
            tokio::spawn(async move {
                fence
                    .watch("host-a", sim.as_ref(), Duration::from_millis(50))
                    .await
            })
        };
        tokio::time::sleep(Duration::from_millis(500)).await;
        assert!(!fence.fenced(), "late, not failed: no fence");
        assert_eq!(sim.running().len(), 2, "so they keep running");
        fence.failed();

        tokio::time::sleep(Duration::from_millis(150)).await;
        assert!(fence.fenced());
        assert!(sim.running().is_empty(), "fenced: {:?}", sim.running());
        assert_eq!(sim.domains().len(), 2, "disks and records are kept");

        assert!(fence.renewed(), "the first renewal lifts the fence");
        assert!(!fence.renewed());
        assert!(!fence.fenced());
        watcher.abort();
    }
}
