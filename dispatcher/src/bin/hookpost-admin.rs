//! `hookpost-admin`: operate the dead-letter queue, endpoints and topology
//! (the commands live in `dispatcher::admin::cli`).

use clap::Parser;
use dispatcher::admin::cli::{Cli, run};

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    common::cli::main("warn", run(cli))
}
