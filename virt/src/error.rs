//! The crate's one error type. Messages say what failed and name the object; the cause stays in
//! `source`, so logs print the chain without repeating it.

use std::path::PathBuf;

/// Everything the hypervisor and storage drivers can fail at.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("failed to connect to libvirt at {uri}")]
    Connect {
        uri: String,
        #[source]
        source: virt::error::Error,
    },
    #[error("failed to {action} domain {domain}")]
    Libvirt {
        action: &'static str,
        domain: String,
        #[source]
        source: virt::error::Error,
    },
    #[error("failed to migrate domain {domain} to {target}")]
    Migrate {
        domain: String,
        target: String,
        #[source]
        source: virt::error::Error,
    },
    #[error("domain {domain} did not finish migrating to {target} within {seconds} s: aborted")]
    MigrationTimeout {
        domain: String,
        target: String,
        seconds: u64,
    },
    #[error("the migration of domain {domain} to {target} ended with the domain still here")]
    MigrationNotFinished { domain: String, target: String },
    #[error("domain {0} does not exist")]
    NoDomain(String),
    #[error("snapshot {snapshot} of domain {domain} does not exist")]
    NoSnapshot { domain: String, snapshot: String },
    #[error("domain {domain} has no disk {target}")]
    NoDisk { domain: String, target: String },
    #[error("domain {domain} did not {what} within {seconds} s")]
    Timeout {
        domain: String,
        what: &'static str,
        seconds: u64,
    },
    #[error("invalid {what} {value:?}: {reason}")]
    Invalid {
        what: &'static str,
        value: String,
        reason: &'static str,
    },
    #[error("failed to write domain XML")]
    XmlWrite(#[source] quick_xml::SeError),
    #[error("failed to read domain XML")]
    XmlRead(#[source] quick_xml::DeError),
    #[error("failed to {action} {}", path.display())]
    Io {
        action: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("failed to run {program}")]
    Spawn {
        program: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{program} failed ({status}): {stderr}")]
    Command {
        program: String,
        status: String,
        stderr: String,
    },
    #[error("failed to download {url}")]
    Download {
        url: String,
        #[source]
        source: reqwest::Error,
    },
    #[error("{url} has sha256 {actual}, expected {expected}")]
    Checksum {
        url: String,
        expected: String,
        actual: String,
    },
    #[error("unsupported image URL {0:?}: use a path, file://, http:// or https://")]
    UnsupportedUrl(String),
    #[error("libvirtd did not answer at {uri} within {seconds} s")]
    DaemonStart { uri: String, seconds: u64 },
    #[error("a blocking libvirt call panicked or was cancelled")]
    Join(#[from] tokio::task::JoinError),
}

impl Error {
    /// A short label for logs, metrics and condition reasons.
    pub fn category(&self) -> &'static str {
        match self {
            Error::Connect { .. } | Error::DaemonStart { .. } => "connect",
            Error::Libvirt { .. } | Error::Join(_) => "libvirt",
            Error::Migrate { .. } | Error::MigrationNotFinished { .. } => "migration",
            Error::MigrationTimeout { .. } => "timeout",
            Error::NoDomain(_) | Error::NoSnapshot { .. } | Error::NoDisk { .. } => "not-found",
            Error::Timeout { .. } => "timeout",
            Error::Invalid { .. } | Error::UnsupportedUrl(_) => "invalid",
            Error::XmlWrite(_) | Error::XmlRead(_) => "xml",
            Error::Io { .. } | Error::Spawn { .. } | Error::Command { .. } => "storage",
            Error::Download { .. } | Error::Checksum { .. } => "image",
        }
    }

    /// True when libvirt said the domain does not exist.
    pub fn is_no_domain(&self) -> bool {
        match self {
            Error::NoDomain(_) => true,
            Error::Libvirt { source, .. } => is_no_domain(source),
            _ => false,
        }
    }
}

pub(crate) fn is_no_domain(e: &virt::error::Error) -> bool {
    e.code().is(virt::error::ErrorNumber::NoDomain)
}

pub(crate) fn io(
    action: &'static str,
    path: impl Into<PathBuf>,
) -> impl FnOnce(std::io::Error) -> Error {
    let path = path.into();
    move |source| Error::Io {
        action,
        path,
        source,
    }
}
