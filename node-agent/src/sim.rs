//! A driver that keeps domains in memory, for control-plane tests and scale measurements
//! without hardware (ZStack's simulator hypervisor).

use std::{
    collections::BTreeMap,
    sync::{Mutex, PoisonError},
};

use futures::future::{self, BoxFuture};
use strata_apis::{quantity, HostCapacity};

use crate::{
    driver::{Domain, DriverError, Hypervisor},
    Error,
};

/// Runs domains in memory and reports them running at once. A domain that would take the host
/// past its CPU or memory capacity is refused, as a real hypervisor would.
#[derive(Debug)]
pub struct SimDriver {
    cpu: i64,
    memory_bytes: u64,
    domains: Mutex<BTreeMap<String, Domain>>,
}

impl SimDriver {
    pub fn new(capacity: &HostCapacity) -> Result<Self, Error> {
        let memory_bytes =
            quantity::parse_quantity(&capacity.memory).map_err(Error::InvalidCapacity)?;
        Ok(Self {
            cpu: capacity.cpu,
            memory_bytes,
            domains: Mutex::default(),
        })
    }

    /// Names of the domains the simulated hypervisor runs.
    pub fn domains(&self) -> Vec<String> {
        self.lock().keys().cloned().collect()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, Domain>> {
        // The map stays consistent even if a holder panicked: every update is a single insert.
        self.domains.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn start(&self, domain: &Domain) -> Result<(), DriverError> {
        let mut domains = self.lock();
        if domains.contains_key(&domain.name) {
            return Ok(());
        }
        let (cpu, memory) = domains.values().fold((0i64, 0u64), |(c, m), d| {
            (c.saturating_add(d.cpu), m.saturating_add(d.memory_bytes))
        });
        let does_not_fit = |detail: String| DriverError::DoesNotFit {
            domain: domain.name.clone(),
            detail,
        };
        if cpu.saturating_add(domain.cpu) > self.cpu {
            return Err(does_not_fit(format!(
                "{} cpu requested, {} of {} free",
                domain.cpu,
                self.cpu - cpu,
                self.cpu
            )));
        }
        if memory.saturating_add(domain.memory_bytes) > self.memory_bytes {
            return Err(does_not_fit(format!(
                "{} bytes of memory requested, {} of {} free",
                domain.memory_bytes,
                self.memory_bytes.saturating_sub(memory),
                self.memory_bytes
            )));
        }
        domains.insert(domain.name.clone(), domain.clone());
        Ok(())
    }
}

impl Hypervisor for SimDriver {
    fn name(&self) -> &'static str {
        "sim"
    }

    fn ensure_running<'a>(&'a self, domain: &'a Domain) -> BoxFuture<'a, Result<(), DriverError>> {
        Box::pin(future::ready(self.start(domain)))
    }

    fn destroy<'a>(&'a self, name: &'a str) -> BoxFuture<'a, Result<(), DriverError>> {
        self.lock().remove(name);
        Box::pin(future::ready(Ok(())))
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
            nics: vec![],
        }
    }

    #[tokio::test]
    async fn start_and_destroy_are_idempotent() {
        let d = driver();
        let a = domain("ns.a", 1, 1);
        d.ensure_running(&a).await.expect("starts");
        d.ensure_running(&a).await.expect("starts again");
        assert_eq!(d.domains(), vec!["ns.a"]);
        d.destroy("ns.a").await.expect("destroys");
        d.destroy("ns.a").await.expect("destroys again");
        assert!(d.domains().is_empty());
    }

    #[tokio::test]
    async fn refuses_a_domain_past_capacity() {
        let d = driver();
        d.ensure_running(&domain("ns.a", 2, 3)).await.expect("fits");
        let err = d.ensure_running(&domain("ns.b", 1, 2)).await.unwrap_err();
        assert_eq!(err.reason(), "InsufficientResources");
        let err = d.ensure_running(&domain("ns.c", 3, 1)).await.unwrap_err();
        assert!(err.to_string().contains("cpu"), "{err}");
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
