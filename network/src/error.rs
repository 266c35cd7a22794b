//! The driver's error type.

use std::path::PathBuf;

/// Errors of the network driver. Messages say what failed and on which object; the cause is kept as
/// the source (or, for failed commands, the command's stderr, which is where iproute2, nft and
/// dnsmasq explain themselves).
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A command could not be started at all (binary missing, out of processes).
    #[error("failed to run {program}")]
    Spawn {
        program: String,
        #[source]
        source: std::io::Error,
    },
    /// A command ran and failed.
    #[error("`{command}` failed ({status}): {stderr}")]
    Command {
        command: String,
        status: String,
        stderr: String,
    },
    /// nft rejected a ruleset, or its JSON output could not be read.
    #[error("failed to apply nftables ruleset {what}")]
    Nft {
        what: String,
        #[source]
        source: nftables::helper::NftablesError,
    },
    /// A command printed something we could not parse (e.g. `ip -j` JSON).
    #[error("failed to parse the output of `{command}`")]
    Parse {
        command: String,
        #[source]
        source: serde_json::Error,
    },
    /// A file in the driver's state directory could not be read or written.
    #[error("failed to access {path}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// Entering a network namespace failed (metadata service).
    #[error("failed to enter network namespace {netns}")]
    Setns {
        netns: String,
        #[source]
        source: nix::Error,
    },
    /// The request cannot be expressed (e.g. a port range translated to one of another size).
    #[error("invalid network configuration: {0}")]
    Invalid(String),
    /// dnsmasq did not come up (its log usually says why).
    #[error("dnsmasq for {netns} did not start: {detail}")]
    Dnsmasq { netns: String, detail: String },
}

impl Error {
    /// A coarse category for metrics and events: `config` errors do not fix themselves by retrying,
    /// `system` errors (a command failing, a file) may.
    pub fn category(&self) -> &'static str {
        match self {
            Error::Invalid(_) => "config",
            _ => "system",
        }
    }
}

/// Result alias of this crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;
