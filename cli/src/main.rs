//! The `strata` binary. `strata up` runs the whole control plane in one process; `strata agent`
//! runs one more host's agent against it; `strata crdgen` regenerates `manifests/crds/` from
//! the types in `apis/`.

use clap::{Parser, Subcommand};
use tracing_subscriber::EnvFilter;

use strata_cli::{agent, bench, controllers, crdgen, up};

#[derive(Parser)]
#[command(
    name = "strata",
    version,
    about = "Strata: a declarative IaaS control plane"
)]
struct Cli {
    /// Log format: human-readable `text`, or `json` lines (one object per event, with every
    /// field, for log pipelines).
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Text, env = "STRATA_LOG_FORMAT")]
    log_format: LogFormat,
    /// Same as `--log-format json`.
    #[arg(long, global = true, env = "STRATA_LOG_JSON")]
    log_json: bool,
    #[command(subcommand)]
    command: Command,
}

#[derive(Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

#[derive(Subcommand)]
enum Command {
    /// Run the API server, the controllers and simulated hosts in one process.
    Up(up::UpArgs),
    /// Run one more host's node agent (libvirt) against a running control plane.
    Agent(agent::AgentArgs),
    /// Run the controllers alone against a running API server.
    Controllers(controllers::ControllersArgs),
    /// Write the CustomResourceDefinitions of every Strata kind as YAML.
    Crdgen(crdgen::CrdgenArgs),
    /// Measure VM create/delete at scale, the API against raw etcd, list, watch and memory.
    Bench(bench::BenchArgs),
}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    // A bench runs a thousand agents whose info lines would bury its progress.
    let default_level = match cli.command {
        Command::Bench(_) => "warn",
        _ => "info",
    };
    init_tracing(
        cli.log_json || cli.log_format == LogFormat::Json,
        default_level,
    );
    let result = match cli.command {
        Command::Up(args) => up::run(args).await,
        Command::Agent(args) => agent::run(args).await,
        Command::Controllers(args) => controllers::run(args).await,
        Command::Crdgen(args) => crdgen::run(&args),
        Command::Bench(args) => bench::run(args)
            .await
            .map_err(|e| strata_cli::Error::Bench(Box::new(e))),
    };
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(err) => {
            tracing::error!(error = %err, "strata failed");
            eprintln!("error: {}", strata_cli::error_chain(&err));
            std::process::ExitCode::FAILURE
        }
    }
}

fn init_tracing(json: bool, default_level: &str) {
    let filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default_level));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    if json {
        builder.json().init();
    } else {
        builder.init();
    }
}
