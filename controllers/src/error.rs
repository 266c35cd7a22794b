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
    #[error("failed to add the owner reference of {kind} {name}")]
    Adopt {
        kind: String,
        name: String,
        #[source]
        source: kube::Error,
    },
    #[error("failed to create Volume {volume}")]
    CreateVolume {
        volume: String,
        #[source]
        source: kube::Error,
    },
    #[error("failed to write {kind} {name}")]
    Write {
        kind: &'static str,
        name: String,
        #[source]
        source: kube::Error,
    },
    #[error("VirtualMachine {vm} waits for its instance to be destroyed")]
    InstanceStillExists { vm: String },
    #[error("{what} waits for {until}")]
    Waiting { what: String, until: &'static str },
    #[error("failed to reconcile {kind} {name}")]
    Finalizer {
        kind: &'static str,
        name: String,
        #[source]
        source: Box<finalizer::Error<Error>>,
    },
}

impl Error {
    /// Whether the write lost an optimistic-concurrency race because the controller acted on a
    /// cached copy older than the stored object: a 409 Conflict, or the 422 the server gives when
    /// the finalizer helper's JSON-patch `test` no longer holds. Retrying with fresh state
    /// succeeds, so such errors are retried soon and do not grow the backoff — under load they
    /// are the common case, and exponential backoff on them stalled VMs for minutes.
    pub fn is_stale_write(&self) -> bool {
        fn stale(e: &kube::Error, patch_test: bool) -> bool {
            matches!(e, kube::Error::Api(s) if s.code == 409 || (patch_test && s.code == 422))
        }
        match self {
            Error::UpdateStatus { source, .. }
            | Error::AllocateIp { source, .. }
            | Error::ApplyInstance { source, .. }
            | Error::Delete { source, .. }
            | Error::Write { source, .. }
            | Error::CreateVolume { source, .. } => stale(source, false),
            // The adoption patch `test`s the resourceVersion it read.
            Error::Adopt { source, .. } => stale(source, true),
            Error::Finalizer { source, .. } => match source.as_ref() {
                finalizer::Error::AddFinalizer(e) | finalizer::Error::RemoveFinalizer(e) => {
                    stale(e, true)
                }
                finalizer::Error::ApplyFailed(e) | finalizer::Error::CleanupFailed(e) => {
                    e.is_stale_write()
                }
                _ => false,
            },
            _ => false,
        }
    }

    /// A short label for logs and metrics.
    pub fn category(&self) -> &'static str {
        match self {
            Error::Get { .. } => "get",
            Error::List { .. } => "list",
            Error::UpdateStatus { .. } => "status",
            Error::AllocateIp { .. } => "ipam",
            Error::ApplyInstance { .. } => "instance",
            Error::Delete { .. } => "delete",
            Error::Write { .. } => "write",
            Error::Adopt { .. } => "adopt",
            Error::CreateVolume { .. } => "volume",
            Error::InstanceStillExists { .. } | Error::Waiting { .. } => "waiting",
            Error::Finalizer { source, .. } => match source.as_ref() {
                finalizer::Error::ApplyFailed(e) | finalizer::Error::CleanupFailed(e) => {
                    e.category()
                }
                _ => "finalizer",
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn api(code: u16) -> kube::Error {
        kube::Error::Api(
            kube::core::Status::failure("refused", "Test")
                .with_code(code)
                .boxed(),
        )
    }

    fn status(code: u16) -> Error {
        Error::UpdateStatus {
            kind: "VirtualMachine",
            name: "default/a".into(),
            source: api(code),
        }
    }

    fn finalizer(error: finalizer::Error<Error>) -> Error {
        Error::Finalizer {
            kind: "VirtualMachine",
            name: "default/a".into(),
            source: Box::new(error),
        }
    }

    #[test]
    fn lost_races_are_stale_writes() {
        assert!(status(409).is_stale_write());
        assert!(finalizer(finalizer::Error::AddFinalizer(api(422))).is_stale_write());
        assert!(finalizer(finalizer::Error::RemoveFinalizer(api(409))).is_stale_write());
        assert!(finalizer(finalizer::Error::ApplyFailed(status(409))).is_stale_write());
    }

    #[test]
    fn real_failures_are_not() {
        assert!(!status(422).is_stale_write());
        assert!(!status(500).is_stale_write());
        assert!(!finalizer(finalizer::Error::AddFinalizer(api(500))).is_stale_write());
        assert!(!finalizer(finalizer::Error::CleanupFailed(status(403))).is_stale_write());
        let get = Error::Get {
            kind: "Host".into(),
            name: "h".into(),
            source: api(409),
        };
        assert!(!get.is_stale_write());
    }
}
