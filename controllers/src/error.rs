use kube::runtime::finalizer;

/// Everything a reconcile can fail at. Invalid user input is not an error: it is reported in
/// status conditions and the object waits for a change.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("failed to read {kind} {name}")]
    Get {
        kind: String,
        name: String,
        #[source]
        source: kube::Error,
    },
    #[error("failed to list {kind} of {owner}")]
    List {
        kind: &'static str,
        owner: String,
        #[source]
        source: kube::Error,
    },
    #[error("failed to update the status of {kind} {name}")]
    UpdateStatus {
        kind: &'static str,
        name: String,
        #[source]
        source: kube::Error,
    },
    #[error("failed to allocate an address on L3Network {l3network} for VirtualMachine {vm}")]
    AllocateIp {
        l3network: String,
        vm: String,
        #[source]
        source: kube::Error,
    },
    #[error("failed to write the VirtualMachineInstance of {vm}")]
    ApplyInstance {
        vm: String,
        #[source]
        source: kube::Error,
    },
    #[error("failed to delete {kind} {name}")]
    Delete {
        kind: &'static str,
        name: String,
        #[source]
        source: kube::Error,
    },
    #[error("VirtualMachine {vm} waits for its instance to be destroyed")]
    InstanceStillExists { vm: String },
    #[error("failed to reconcile {kind} {name}")]
    Finalizer {
        kind: &'static str,
        name: String,
        #[source]
        source: Box<finalizer::Error<Error>>,
    },
}

impl Error {
    /// A short label for logs and metrics.
    pub fn category(&self) -> &'static str {
        match self {
            Error::Get { .. } => "get",
            Error::List { .. } => "list",
            Error::UpdateStatus { .. } => "status",
            Error::AllocateIp { .. } => "ipam",
            Error::ApplyInstance { .. } => "instance",
            Error::Delete { .. } => "delete",
            Error::InstanceStillExists { .. } => "waiting",
            Error::Finalizer { source, .. } => match source.as_ref() {
                finalizer::Error::ApplyFailed(e) | finalizer::Error::CleanupFailed(e) => {
                    e.category()
                }
                _ => "finalizer",
            },
        }
    }
}
