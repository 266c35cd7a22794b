//! Subcommands of the `strata` binary, as a library so tests can call them.

pub mod agent;
pub mod bench;
pub mod controllers;
pub mod crdgen;
pub mod kubeconfig;
pub mod pki;
pub mod up;

/// Failures of the `strata` binary.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("failed to {action} {path}")]
    Io {
        action: &'static str,
        path: std::path::PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("failed to render {what} as YAML")]
    Yaml {
        what: String,
        #[source]
        source: serde_yaml::Error,
    },
    #[error("generated CRDs differ from {0}: run `strata crdgen`")]
    CrdDrift(std::path::PathBuf),
    #[error("failed to listen on {addr}")]
    Listen {
        addr: String,
        #[source]
        source: std::io::Error,
    },
    #[error("api server failed")]
    ApiServer(#[source] strata_apiserver::Error),
    #[error("failed to build a client for the api server")]
    Client(#[source] kube::Error),
    #[error("failed to set up a simulated host")]
    Agent(#[source] strata_node_agent::Error),
    #[error("controllers stopped")]
    Controllers(#[source] strata_controllers::Error),
    #[error("failed to issue the API server's certificate")]
    Pki(#[source] rcgen::Error),
    #[error("benchmark failed")]
    Bench(#[source] Box<bench::Error>),
    #[error("invalid --sim-host-memory {0:?}")]
    Memory(String, #[source] strata_apis::quantity::QuantityError),
}

/// Renders an error with its sources, `a: b: c`, for the terminal.
pub fn error_chain(err: &dyn std::error::Error) -> String {
    let mut text = err.to_string();
    let mut source = err.source();
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}
