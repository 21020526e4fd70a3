//! Log setup shared by the binaries: `tracing` to standard error, filtered by
//! `HOOKPOST_LOG` (for example `info`, `debug`, `dispatcher=debug`).

/// Installs the subscriber; `default` is the filter when `HOOKPOST_LOG` is unset.
pub fn init(default: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_env("HOOKPOST_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
}
