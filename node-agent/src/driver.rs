//! The hypervisor boundary. The agent asks a driver to make a domain run or to destroy it;
//! both calls are idempotent so that a reconcile can be repeated any number of times.

use futures::future::BoxFuture;
use strata_apis::VmiNic;

/// A domain as the hypervisor sees it: an instance with every value resolved and parsed.
#[derive(Clone, Debug, PartialEq)]
pub struct Domain {
    /// Unique on the host: `<namespace>.<name>` of the instance.
    pub name: String,
    pub cpu: i64,
    pub memory_bytes: u64,
    pub image_url: String,
    pub nics: Vec<VmiNic>,
}

/// Why a driver could not act.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum DriverError {
    /// The host cannot give the domain what it asks for.
    #[error("domain {domain} does not fit: {detail}")]
    DoesNotFit { domain: String, detail: String },
}

impl DriverError {
    /// The condition reason reported on the instance.
    pub fn reason(&self) -> &'static str {
        match self {
            DriverError::DoesNotFit { .. } => "InsufficientResources",
        }
    }
}

/// A hypervisor driver. Futures are boxed so the trait stays object safe (`Arc<dyn Hypervisor>`).
pub trait Hypervisor: Send + Sync + 'static {
    /// Reported in the Host's `status.driver`.
    fn name(&self) -> &'static str;

    /// Defines the domain if absent and starts it if it is not running.
    fn ensure_running<'a>(&'a self, domain: &'a Domain) -> BoxFuture<'a, Result<(), DriverError>>;

    /// Stops and undefines the domain; succeeds when it does not exist.
    fn destroy<'a>(&'a self, name: &'a str) -> BoxFuture<'a, Result<(), DriverError>>;
}
