//! `strata controllers`: the controllers alone, against a control plane that runs elsewhere.
//! `strata up` runs them in its own process; running them apart lets them be restarted (or
//! killed, as the crash test does) without touching the API server or the agents. Everything
//! they know is rebuilt from list+watch at start, so a restart resumes where the last one was.

use std::{path::PathBuf, time::Duration};

use crate::{up, Error};

/// Arguments of `strata controllers`.
#[derive(clap::Args, Clone)]
pub struct ControllersArgs {
    /// The control plane's kubeconfig (`strata up` writes one in its data dir).
    #[arg(long, env = "KUBECONFIG")]
    pub kubeconfig: PathBuf,
    /// A host whose lease is older than this turns Disconnected.
    #[arg(long, default_value = "40", value_parser = up::parse_seconds)]
    pub host_lease_timeout_seconds: Duration,
}

/// Runs every controller until SIGINT or SIGTERM, or until one fails.
pub async fn run(args: ControllersArgs) -> Result<(), Error> {
    let client = up::client(&args.kubeconfig).await?;
    let opts = strata_controllers::ControllerOptions {
        host_lease_timeout: args.host_lease_timeout_seconds,
    };
    tokio::select! {
        result = strata_controllers::run(client, opts) => result.map_err(Error::Controllers),
        () = up::shutdown_signal() => Ok(()),
    }
}
