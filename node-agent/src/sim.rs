//! A driver that keeps domains in memory, for control-plane tests and scale measurements
//! without hardware (ZStack's simulator hypervisor).

use std::{
    collections::BTreeMap,
    sync::{Mutex, PoisonError},
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
    driver::{Domain, DriverError, Hypervisor, Observed},
    Error,
};

/// Runs domains in memory and puts them in the desired power state at once. A domain that
/// would take the host past its memory is refused, as a real hypervisor would (stopped domains
/// hold none); vCPUs are time-shared.
#[derive(Debug)]
pub struct SimDriver {
    memory_bytes: u64,
    domains: Mutex<BTreeMap<String, SimDomain>>,
    events: broadcast::Sender<String>,
}

#[derive(Debug, Clone)]
struct SimDomain {
    spec: Domain,
    state: Observed,
    boots: u32,
}

impl SimDriver {
    pub fn new(capacity: &HostCapacity) -> Result<Self, Error> {
        let memory_bytes =
            quantity::parse_quantity(&capacity.memory).map_err(Error::InvalidCapacity)?;
        Ok(Self {
            memory_bytes,
            domains: Mutex::default(),
            events: broadcast::channel(1024).0,
        })
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
        domains.insert(
            domain.name.clone(),
            SimDomain {
                spec: domain.clone(),
                state: wanted,
                boots,
            },
        );
        Ok(wanted)
    }
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

    fn owned_domains(&self) -> BoxFuture<'_, Result<Vec<String>, DriverError>> {
        Box::pin(future::ready(Ok(self.domains())))
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
