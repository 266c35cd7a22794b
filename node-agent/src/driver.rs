//! The hypervisor boundary. The agent tells a driver what a domain should be (including its
//! power state) and the driver makes it so; every call is idempotent so a reconcile can be
//! repeated any number of times, after a crash included. Drivers also say what they observe:
//! a domain's state on request, and a stream of names whose state changed, so a VM stopped
//! behind Strata's back shows in its status at once rather than at the next resync.

use futures::{future::BoxFuture, stream::BoxStream};
use strata_apis::{DirectBoot, PowerState, VmiNic};

/// How much of a console log an instance's status carries.
pub const CONSOLE_TAIL_LINES: usize = 20;
pub const CONSOLE_TAIL_BYTES: usize = 2048;

/// The last lines of a console log, from its last [`CONSOLE_TAIL_BYTES`] bytes (`window`;
/// `cut` when the log is longer): at most [`CONSOLE_TAIL_LINES`] whole lines, control
/// characters dropped.
pub fn tail_of(window: &[u8], cut: bool) -> String {
    let text = String::from_utf8_lossy(window);
    // A cut in the middle of a line leaves a fragment: skip it.
    let text = match (cut, text.split_once('\n')) {
        (true, Some((_, rest))) => rest,
        _ => &text,
    };
    let lines: Vec<String> = text
        .lines()
        .map(|l| l.chars().filter(|c| !c.is_control()).collect())
        .collect();
    lines[lines.len().saturating_sub(CONSOLE_TAIL_LINES)..].join("\n")
}

/// A domain as the hypervisor sees it: an instance with every value resolved and parsed.
#[derive(Clone, Debug, PartialEq)]
pub struct Domain {
    /// Unique on the host: `<namespace>.<name>` of the instance.
    pub name: String,
    pub cpu: i64,
    pub memory_bytes: u64,
    pub image_url: String,
    /// `sha256:<hex>` the image must match.
    pub image_checksum: Option<String>,
    /// Boot this kernel directly instead of the image's boot loader.
    pub direct_boot: Option<DirectBoot>,
    /// Size of the root volume; the image's size when unset.
    pub root_disk_bytes: Option<u64>,
    /// The power state to drive the domain to.
    pub power: PowerState,
    pub nics: Vec<DomainNic>,
    /// Data disks, created empty if missing, attached (live while the domain runs) and grown
    /// to their size; a data disk not listed is detached and kept.
    pub data_disks: Vec<DataDisk>,
    /// The snapshots each disk holds, by volume (a disk not named holds none): the driver
    /// takes the missing ones and deletes the others.
    pub snapshots: std::collections::BTreeMap<String, Vec<String>>,
}

/// A data volume of a domain.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DataDisk {
    /// The volume's name on the host's storage: `<namespace>.<Volume>`.
    pub volume: String,
    /// Guest device, e.g. `vdb`.
    pub device: String,
    pub serial: String,
    pub size_bytes: u64,
}

/// A disk attached to a domain, as the hypervisor reports it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AttachedDisk {
    /// The volume's name on the host's storage (`<namespace>.<Volume>`; the root volume's is
    /// `<domain>-root`).
    pub volume: String,
    pub device: String,
    pub size_bytes: u64,
    pub path: Option<String>,
    /// The snapshots the disk holds.
    pub snapshots: Vec<String>,
}

/// A NIC and where it plugs in on this host. The network driver owns the names: the NIC is
/// connected once `bridge` is set (a domain without bridges boots without network).
#[derive(Clone, Debug, PartialEq, Default)]
pub struct DomainNic {
    pub spec: VmiNic,
    /// The Linux bridge of the NIC's L2 network.
    pub bridge: Option<String>,
    /// A fixed tap name (≤ 15 bytes) that security-group rules can name in advance.
    pub tap: Option<String>,
}

/// Where a live migration goes, as the migration controller resolved it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MigrationTarget {
    /// The target Host.
    pub host: String,
    /// Its management address: where its hypervisor and the memory stream are reached.
    pub address: Option<String>,
    /// A copy not finished by then is aborted; the domain keeps running here.
    pub deadline: Option<tokio::time::Instant>,
}

/// What the hypervisor reports about a domain.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Observed {
    Running,
    Paused,
    /// Defined, not running.
    Stopped,
    /// It stopped because the guest crashed.
    Crashed,
}

/// Why a driver could not act.
#[derive(Debug, thiserror::Error)]
pub enum DriverError {
    /// The host cannot give the domain what it asks for.
    #[error("domain {domain} does not fit: {detail}")]
    DoesNotFit { domain: String, detail: String },
    /// The image, kernel or initrd could not be fetched or verified.
    #[error("failed to prepare the image of domain {domain}")]
    Image {
        domain: String,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// The hypervisor refused or failed an operation.
    #[error("failed to {operation} domain {domain}")]
    Hypervisor {
        domain: String,
        operation: &'static str,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// A live migration did not finish before its deadline and was aborted.
    #[error(
        "domain {domain} did not reach host {target} within {seconds} s: the migration was aborted"
    )]
    MigrationTimeout {
        domain: String,
        target: String,
        seconds: u64,
    },
    /// A migration's target has no address to reach it at.
    #[error("cannot migrate domain {domain}: host {target} has no management address")]
    NoTargetAddress { domain: String, target: String },
    /// A domain about to arrive by migration would not find its volumes on this host.
    #[error("cannot receive domain {domain}: its volume {volume} is not on this host's storage ({path})")]
    VolumeNotShared {
        domain: String,
        volume: String,
        path: String,
    },
    /// The driver cannot do this at all.
    #[error("cannot {operation} domain {domain}: the {driver} driver does not support it")]
    Unsupported {
        domain: String,
        operation: &'static str,
        driver: &'static str,
    },
    /// The host's storage failed an operation on a volume.
    #[error("failed to {operation} volume {volume}")]
    Storage {
        volume: String,
        operation: &'static str,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// The agent's local record of what it created could not be read or written.
    #[error("failed to update the local record of domain {domain}")]
    Record {
        domain: String,
        #[source]
        source: std::io::Error,
    },
}

impl DriverError {
    /// The condition reason reported on the instance.
    pub fn reason(&self) -> &'static str {
        match self {
            DriverError::DoesNotFit { .. } => "InsufficientResources",
            DriverError::Image { .. } => "ImageUnavailable",
            DriverError::Hypervisor { .. } => "HypervisorError",
            DriverError::MigrationTimeout { .. } => "MigrationTimeout",
            DriverError::NoTargetAddress { .. } => "TargetUnreachable",
            DriverError::VolumeNotShared { .. } => "VolumesNotShared",
            DriverError::Unsupported { .. } => "Unsupported",
            DriverError::Storage { .. } => "StorageError",
            DriverError::Record { .. } => "LocalStateError",
        }
    }
}

/// A hypervisor driver. Futures are boxed so the trait stays object safe (`Arc<dyn Hypervisor>`).
pub trait Hypervisor: Send + Sync + 'static {
    /// Reported in the Host's `status.driver`.
    fn name(&self) -> &'static str;

    /// Creates whatever is missing (volumes, domain) and drives the domain to
    /// `domain.power`; returns what it observes afterwards.
    fn ensure<'a>(&'a self, domain: &'a Domain) -> BoxFuture<'a, Result<Observed, DriverError>>;

    /// What the domain is doing now; `None` when the hypervisor does not know it.
    fn state<'a>(&'a self, name: &'a str) -> BoxFuture<'a, Result<Option<Observed>, DriverError>>;

    /// Reboots a running domain (the guest restarts; the domain stays).
    fn reboot<'a>(&'a self, name: &'a str) -> BoxFuture<'a, Result<(), DriverError>>;

    /// Stops the domain and removes it with everything created for it (volumes, local
    /// record); succeeds when it does not exist.
    fn destroy<'a>(&'a self, name: &'a str) -> BoxFuture<'a, Result<(), DriverError>>;

    /// Cuts the power of a running domain at once, keeping its disks and local record: how an
    /// agent that lost its lease fences itself. Succeeds when the domain is not running.
    fn power_off<'a>(&'a self, name: &'a str) -> BoxFuture<'a, Result<(), DriverError>>;

    /// Moves the running domain live to `target`, publishing the share of memory copied
    /// (0 to 100) on `progress`. On success the domain runs on the target and is gone from
    /// this host (its volumes, now the target's, stay); on failure, or past the target's
    /// deadline ([`DriverError::MigrationTimeout`]), it still runs here.
    fn migrate<'a>(
        &'a self,
        name: &'a str,
        target: &'a MigrationTarget,
        progress: tokio::sync::watch::Sender<i32>,
    ) -> BoxFuture<'a, Result<(), DriverError>>;

    /// Readies this host to receive `domain` by live migration, besides its network: checks
    /// that its volumes are on this host's storage. Creates nothing: the domain that arrives
    /// brings its definition, and the agent records it once the instance is handed over.
    fn prepare_incoming<'a>(&'a self, domain: &'a Domain)
        -> BoxFuture<'a, Result<(), DriverError>>;

    /// Every domain this agent created and has not destroyed, from its local record, so that
    /// after a restart it can remove those whose instance is gone.
    fn owned_domains(&self) -> BoxFuture<'_, Result<Vec<String>, DriverError>>;

    /// The end of the domain's serial console log (at most [`CONSOLE_TAIL_LINES`] lines and
    /// [`CONSOLE_TAIL_BYTES`] bytes); `None` when the driver keeps no log.
    fn console_tail(&self, _name: &str) -> Option<String> {
        None
    }

    /// Reverts the disk `volume` of the domain to its snapshot `snapshot`.
    fn revert_disk<'a>(
        &'a self,
        name: &'a str,
        volume: &'a str,
        snapshot: &'a str,
    ) -> BoxFuture<'a, Result<(), DriverError>>;

    /// Deletes the disk of the detached data volume `volume` from this host's storage;
    /// succeeds when it does not exist.
    fn delete_volume<'a>(&'a self, volume: &'a str) -> BoxFuture<'a, Result<(), DriverError>>;

    /// The disks attached to the domain (none when it does not exist).
    fn disks<'a>(&'a self, name: &'a str) -> BoxFuture<'a, Result<Vec<AttachedDisk>, DriverError>>;

    /// Names of domains whose state changed, as the hypervisor reports it (may repeat).
    fn events(&self) -> BoxStream<'static, String>;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_console_tail_keeps_the_last_whole_lines() {
        let tail_of_log = |log: &[u8]| {
            let start = log.len().saturating_sub(CONSOLE_TAIL_BYTES);
            tail_of(&log[start..], start > 0)
        };
        let log: String = (0..100).map(|i| format!("line {i}\r\n")).collect();
        let tail = tail_of_log(log.as_bytes());
        let lines: Vec<&str> = tail.lines().collect();
        assert_eq!(lines.len(), CONSOLE_TAIL_LINES);
        assert_eq!(lines.first(), Some(&"line 80"));
        assert_eq!(lines.last(), Some(&"line 99"));
        let long = format!("{}\nend", "x".repeat(5000));
        assert_eq!(tail_of_log(long.as_bytes()), "end", "a cut line is dropped");
        assert_eq!(tail_of_log(b""), "");
    }
}
