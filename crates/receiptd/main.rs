//! `receiptd`: the read-receipt engine's binary.
//!
//! - `receiptd run [--config FILE]`: the worker (Kafka in, RocksDB state,
//!   deltas out, HTTP for operations).
//! - `receiptd demo`: the same engine on an in-process Kafka (rdkafka's
//!   MockCluster) with synthetic chat traffic and one live line per second.
//! - `receiptd inspect --state-dir DIR`: the folded state as JSON, read-only.

mod config;
mod demo;
mod inspect;
mod worker;

use anyhow::Context;
use clap::{Parser, Subcommand};
use std::path::PathBuf;
use std::process::ExitCode;

// The fold allocates many small strings; glibc's malloc spent a quarter of
// the worker's CPU under load (perf), mimalloc a fraction of that. It is the
// C libraries' malloc too (the `override` feature, see Cargo.toml).
#[global_allocator]
static ALLOCATOR: receiptd_alloc::Allocator = receiptd_alloc::Allocator;

#[derive(Parser)]
#[command(name = "receiptd", version, about = "Read-receipt engine for chat backends")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the worker.
    Run {
        /// TOML config file; every setting has a default and an environment
        /// override `RECEIPTD_<SECTION>__<KEY>`.
        #[arg(long)]
        config: Option<PathBuf>,
    },
    /// Run the engine on an in-process Kafka with synthetic chat traffic.
    Demo(demo::DemoArgs),
    /// Print the folded state in a store as JSON (the worker must be stopped).
    Inspect {
        /// The store's directory (`state.dir`).
        #[arg(long)]
        state_dir: PathBuf,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Run { config } => config::Config::load(config.as_deref()).and_then(|c| {
            worker::init_logging(&c.log);
            worker::run(c)
        }),
        Command::Demo(args) => demo::run(args),
        Command::Inspect { state_dir } => inspect::run(&state_dir).context("inspect"),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("receiptd: {e:#}");
            ExitCode::FAILURE
        }
    }
}
