//! `hookpost-admin`: operate the dead-letter queue, endpoints and topology
//! (the commands live in `dispatcher::admin::cli`).

use anyhow::Context;
use clap::Parser;
use dispatcher::admin::cli::{Cli, run};

fn main() -> std::process::ExitCode {
    common::logging::init("warn");
    let cli = Cli::parse();
    let result = tokio::runtime::Runtime::new()
        .context("cannot start the runtime")
        .and_then(|rt| rt.block_on(run(cli)));
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
