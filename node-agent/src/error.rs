use kube::runtime::finalizer;
use strata_apis::quantity::QuantityError;

use crate::driver::DriverError;

/// Everything the agent can fail at. Messages name the object; the cause stays in `source`.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("failed to register host {host}")]
    RegisterHost {
        host: String,
        #[source]
        source: kube::Error,
    },
    #[error("failed to renew the lease of host {host}")]
    RenewLease {
        host: String,
        #[source]
        source: kube::Error,
    },
    #[error("failed to update the status of instance {instance}")]
    UpdateStatus {
        instance: String,
        #[source]
        source: kube::Error,
    },
    #[error("failed to destroy instance {instance}")]
    Destroy {
        instance: String,
        #[source]
        source: DriverError,
    },
    #[error("failed to reconcile instance {instance}")]
    Finalizer {
        instance: String,
        #[source]
        source: Box<finalizer::Error<Error>>,
    },
    #[error("failed to delete the disk of volume {volume}")]
    VolumeFinalizer {
        volume: String,
        #[source]
        source: Box<finalizer::Error<Error>>,
    },
    #[error("the disk of volume {volume} is still attached to instance {instance}")]
    DiskInUse { volume: String, instance: String },
    #[error("failed to delete the disk of volume {volume}")]
    DeleteDisk {
        volume: String,
        #[source]
        source: DriverError,
    },
    #[error("failed to read the memory of the simulated capacity")]
    InvalidCapacity(#[source] QuantityError),
    #[error("failed to start the libvirt driver")]
    Libvirt(#[source] strata_virt::Error),
}

impl Error {
    /// A short label for logs and metrics.
    pub fn category(&self) -> &'static str {
        match self {
            Error::RegisterHost { .. } | Error::RenewLease { .. } | Error::UpdateStatus { .. } => {
                "kube"
            }
            Error::Destroy { .. } | Error::DeleteDisk { .. } => "driver",
            Error::DiskInUse { .. } => "waiting",
            Error::Finalizer { source, .. } | Error::VolumeFinalizer { source, .. } => {
                match source.as_ref() {
                    finalizer::Error::ApplyFailed(e) | finalizer::Error::CleanupFailed(e) => {
                        e.category()
                    }
                    _ => "finalizer",
                }
            }
            Error::InvalidCapacity(_) => "config",
            Error::Libvirt(_) => "driver",
        }
    }
}
