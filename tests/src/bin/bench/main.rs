//! hookpost's benchmark: the raw broker, raw HTTP and hookpost end to end,
//! measured in one run on the same broker, queue type and message size, with
//! each hookpost figure as a ratio to the raw broker's (BENCHMARKS.md).
//!
//!   cargo run --release -p tests --bin bench -- [--events N] [--endpoints K] [--batch-size B] [--size BYTES] [--json FILE]
//!
//! The dispatcher runs as a child process (this binary with
//! `--dispatcher-child CONFIG`) so its peak RSS and CPU time are its own.

mod api_writes;
mod cli;
mod history;
mod hookpost;
mod pipeline;
mod raw;
mod report;
mod scale;
mod sink;
mod stress;
mod targets;
mod tenants;

use clap::Parser;
use cli::*;
use common::Config;
use hookpost::*;
use raw::*;
use report::*;
use std::path::PathBuf;
use tests::amqp_url;

#[derive(Debug, Parser)]
#[command(
    name = "bench",
    about = "hookpost benchmark: raw broker, raw HTTP and hookpost end to end"
)]
struct Args {
    /// Events per throughput scenario.
    #[arg(long, default_value_t = 20_000)]
    events: usize,
    /// Endpoints of the fan-out scenario.
    #[arg(long, default_value_t = 10)]
    endpoints: usize,
    /// Batch size of the batched scenario.
    #[arg(long, default_value_t = 100)]
    batch_size: u32,
    /// Event size in bytes (the JSON envelope).
    #[arg(long, default_value_t = 1024)]
    size: usize,
    /// Offered rate of the latency scenario, events per second.
    #[arg(long, default_value_t = 1000)]
    rate: u32,
    /// Seconds the latency scenario runs.
    #[arg(long, default_value_t = 10)]
    latency_seconds: u64,
    /// Endpoint counts of the memory scenarios.
    #[arg(long, value_delimiter = ',', default_value = "100,1000")]
    memory_endpoints: Vec<usize>,
    /// Queue type of the memory scenarios: classic (default; safe on a broker
    /// with the default open-file limit) or quorum (needs a raised limit).
    #[arg(long, default_value = "classic", value_parser = ["classic", "quorum"])]
    memory_queue_type: String,
    /// Events queued before the backlog scenario's dispatcher starts.
    #[arg(long, default_value_t = 100_000)]
    backlog_events: usize,
    /// The rate limit (events/s) of the backlog scenario's second run.
    #[arg(long, default_value_t = 5_000)]
    backlog_rate_limit: u32,
    /// Events queued for the hanging neighbour of the noisy-neighbour
    /// scenario before the healthy endpoint's run (its 16 requests in flight
    /// take 16 a second).
    #[arg(long, default_value_t = 2_000)]
    noisy_backlog: usize,
    /// Endpoints of the scale scenario (one event type and one event each).
    #[arg(long, default_value_t = 10_000)]
    scale_endpoints: usize,
    /// Queue type of the scale scenario: classic (default) or quorum (needs
    /// a broker with a raised open-file limit, BENCHMARKS.md).
    #[arg(long, default_value = "classic", value_parser = ["classic", "quorum"])]
    scale_queue_type: String,
    /// Tenants of the tenants scenario (three endpoints each).
    #[arg(long, default_value_t = 1_000)]
    tenants: usize,
    /// Endpoints the API-writes scenario registers through the API.
    #[arg(long, default_value_t = 2_000)]
    api_endpoints: usize,
    /// Records in the attempt log of the log-read scenario.
    #[arg(long, default_value_t = 500_000)]
    log_records: usize,
    /// Rounds of each scenario measured against the raw broker (cli, batch1,
    /// batch), each right after a ceiling measurement of its own (with
    /// raw-broker); the targets table takes the median of the rounds' ratios.
    #[arg(long, default_value_t = 1)]
    rounds: usize,
    /// Only these scenarios (comma-separated: raw-variants, queue-args, queue-args-each, raw-backlog, concurrent-publish, raw-broker, raw-http, raw-pipeline, publisher, cli, batch1, batch, log-cost, archive-cost, log-read, fanout, latency, memory, noisy, backlog, scale, tenants, api-writes).
    #[arg(long, value_delimiter = ',')]
    only: Vec<String>,
    /// Also write the results as JSON here.
    #[arg(long)]
    json: Option<PathBuf>,
    /// Give up (exit with an error) when the whole run takes longer than
    /// this; the last progress line names the scenario before the stalled one.
    #[arg(long, default_value_t = 60)]
    deadline_minutes: u64,
    /// Internal: run a dispatcher on this config (the child process).
    #[arg(long, hide = true)]
    dispatcher_child: Option<PathBuf>,
    /// Internal: run the raw pipeline's consumer on QUEUE, posting to URL.
    #[arg(long, hide = true, num_args = 2, value_names = ["QUEUE", "URL"])]
    pipeline_child: Option<Vec<String>>,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    if let Some(config) = args.dispatcher_child {
        // The runtime the dispatcher's binary starts.
        let runtime = common::cli::runtime()?;
        return runtime.block_on(dispatcher_child(config));
    }
    let runtime = tokio::runtime::Runtime::new()?;
    if let Some(mut words) = args.pipeline_child {
        let (url, queue) = (words.pop(), words.pop());
        let (Some(queue), Some(url)) = (queue, url) else {
            anyhow::bail!("--pipeline-child needs QUEUE and URL");
        };
        return runtime.block_on(pipeline::pipeline_child(queue, url));
    }
    let deadline = std::time::Duration::from_secs(args.deadline_minutes * 60);
    runtime.block_on(async {
        tokio::time::timeout(deadline, run(args))
            .await
            .unwrap_or_else(|_| {
                Err(anyhow::anyhow!(
                    "the run took longer than {deadline:?} (--deadline-minutes): a scenario stalled"
                ))
            })
    })
}

async fn dispatcher_child(path: PathBuf) -> anyhow::Result<()> {
    common::logging::init("error");
    let config = Config::load(&path)?;
    let listener = tokio::net::TcpListener::bind(config.metrics_listen).await?;
    let shutdown = tokio_util::sync::CancellationToken::new();
    let stop = shutdown.clone();
    tokio::spawn(async move {
        if let Ok(mut term) =
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        {
            term.recv().await;
        }
        stop.cancel();
    });
    let (_reload, reloads) = tokio::sync::mpsc::channel(1);
    dispatcher::run(config, listener, reloads, shutdown).await
}

/// `scenario` run `--rounds` times, each round right after a ceiling of its
/// own (the fastest of [`CEILING_CANDIDATES`], as the run's first one) when
/// the run measures the raw broker: the ratio then compares two
/// measurements seconds apart, not minutes (this machine's speed moves by a
/// fifth within minutes). Each round's rows go into `rows`;
/// returns the rounds' ratios.
async fn against_ceiling<F, Fut>(
    args: &Args,
    rows: &mut Vec<Row>,
    scenario: F,
) -> anyhow::Result<Vec<f64>>
where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<Row>>,
{
    let mut ratios = Vec::new();
    for round in 1..=args.rounds.max(1) {
        let ceiling = if wanted(args, "raw-broker") {
            Some(ceiling_of_next_row(args).await?)
        } else {
            None
        };
        let mut row = scenario().await?;
        if args.rounds > 1 {
            row.scenario = format!("{} (round {round})", row.scenario);
        }
        if let Some(c) = &ceiling {
            let ratio = row.events_per_s / c.events_per_s;
            row.ratio_to_raw_broker = Some(ratio);
            ratios.push(ratio);
        }
        progress(&row);
        rows.extend(ceiling);
        rows.push(row);
    }
    Ok(ratios)
}

/// The ceiling (the fastest of [`CEILING_CANDIDATES`]) measured for the row
/// that follows it, named so, its progress line printed.
async fn ceiling_of_next_row(args: &Args) -> anyhow::Result<Row> {
    let mut c = raw_broker_best(args.events, args.size).await?;
    c.scenario = format!("raw broker, the ceiling of the next row: {}", c.scenario);
    Ok(progress_of(c))
}

fn wanted(args: &Args, name: &str) -> bool {
    args.only.is_empty() || args.only.iter().any(|o| o == name)
}

async fn run(args: Args) -> anyhow::Result<()> {
    println!(
        "hookpost bench: {} events of {} bytes, quorum queues, broker {}",
        args.events,
        args.size,
        common::secret::redact_url(&amqp_url())
    );
    let mut rows: Vec<Row> = Vec::new();
    let mut targets = targets::Targets::default();
    let mut raw = None;
    // Not in the default run: the raw publisher's variants (BENCHMARKS.md).
    if args.only.iter().any(|o| o == "raw-variants") {
        rows.extend(raw_variants(args.events, args.size).await?);
    }
    if args.only.iter().any(|o| o == "raw-backlog") {
        rows.extend(crate::raw::raw_backlog(args.events, args.size, &[12_000, 6_000]).await?);
    }
    if args.only.iter().any(|o| o == "queue-args-each") {
        rows.extend(crate::raw::raw_queue_args_each(args.events, args.size, 2).await?);
    }
    if args.only.iter().any(|o| o == "queue-args") {
        rows.extend(crate::raw::raw_queue_args(args.events, args.size, 2).await?);
    }
    if wanted(&args, "raw-broker") {
        let row = raw_broker_best(args.events, args.size).await?;
        raw = Some(row.events_per_s);
        progress(&row);
        rows.push(row);
    }
    if wanted(&args, "raw-http") {
        rows.push(progress_of(raw_http(args.events, args.size).await?));
    }
    if wanted(&args, "publisher") {
        let both = publisher_alone(args.events, args.size, 2).await?;
        targets.publisher = both.last().and_then(|r| r.ratio_to_raw_broker);
        rows.extend(both);
    }
    // Not in the default run: many concurrent callers of one publisher.
    if args.only.iter().any(|o| o == "concurrent-publish") {
        // With the archive (the default) and without: each call's events
        // get an archive message of their own (BENCHMARKS.md, session 28).
        for extra in ["", "[archive]\nenabled = false\n"] {
            rows.extend(crate::cli::concurrent_publishers(args.events, args.size, 2, extra).await?);
        }
    }
    if wanted(&args, "cli") {
        let ratios = against_ceiling(&args, &mut rows, || {
            cli(args.events, args.size, args.batch_size)
        })
        .await?;
        if args.batch_size == 100 {
            targets.cli = ratios;
        }
    }
    if wanted(&args, "batch1") {
        targets.batch1 = against_ceiling(&args, &mut rows, || {
            hookpost("hookpost batch 1, 1 endpoint", args.events, args.size, 1, 1)
        })
        .await?;
    }
    // Not in the default run: batch 1 beside the raw pipeline (the same
    // client libraries, none of hookpost's work; fed by the raw publisher,
    // then by hookpost's) and beside itself without
    // the attempt log and the archive, each against a ceiling measured just
    // before it, round by round (BENCHMARKS.md, session 30).
    if args.only.iter().any(|o| o == "raw-pipeline") {
        let bare = "[log]\nenabled = false\n[archive]\nenabled = false\n";
        for round in 1..=args.rounds.max(1) {
            for which in 0..4 {
                let ceiling = ceiling_of_next_row(&args).await?;
                let ceiling_rate = ceiling.events_per_s;
                rows.push(ceiling);
                let mut row = match which {
                    0 => {
                        pipeline::raw_pipeline(args.events, args.size, pipeline::Feed::Raw).await?
                    }
                    1 => {
                        pipeline::raw_pipeline(args.events, args.size, pipeline::Feed::Hookpost)
                            .await?
                    }
                    2 => {
                        let name = "hookpost batch 1, attempt log and archive off";
                        crate::hookpost::hookpost_with(name, args.events, args.size, 1, 1, bare)
                            .await?
                    }
                    _ => {
                        hookpost("hookpost batch 1, 1 endpoint", args.events, args.size, 1, 1)
                            .await?
                    }
                };
                row.scenario = format!("{} (round {round})", row.scenario);
                row.ratio_to_raw_broker = Some(row.events_per_s / ceiling_rate);
                rows.push(progress_of(row));
            }
        }
    }
    if wanted(&args, "batch") {
        let name = format!("hookpost batch {}, 1 endpoint", args.batch_size);
        let ratios = against_ceiling(&args, &mut rows, || {
            hookpost(&name, args.events, args.size, args.batch_size, 1)
        })
        .await?;
        if args.batch_size == 100 {
            targets.batch100 = ratios;
        }
    }
    if wanted(&args, "log-cost") {
        // The attempt log's cost: batch 1 without and with it, alternated
        // twice so that drift on a shared machine hits both alike.
        for round in 1..=2 {
            for (log, extra) in [("off", "[log]\nenabled = false\n"), ("on", "")] {
                rows.push(progress_of(
                    crate::hookpost::hookpost_with(
                        &format!("hookpost batch 1, attempt log {log} (round {round})"),
                        args.events,
                        args.size,
                        1,
                        1,
                        extra,
                    )
                    .await?,
                ));
            }
        }
    }
    if wanted(&args, "archive-cost") {
        // The event archive's cost: the publisher alone (against the raw
        // publisher of the same round) and batch 1 end to end, without and
        // with the archive, alternated so that drift hits both alike.
        for extra in ["[archive]\nenabled = false\n", ""] {
            rows.extend(crate::cli::publisher_alone_with(args.events, args.size, 2, extra).await?);
        }
        for round in 1..=2 {
            for (archive, extra) in [("off", "[archive]\nenabled = false\n"), ("on", "")] {
                rows.push(progress_of(
                    crate::hookpost::hookpost_with(
                        &format!("hookpost batch 1, archive {archive} (round {round})"),
                        args.events,
                        args.size,
                        1,
                        1,
                        extra,
                    )
                    .await?,
                ));
            }
        }
    }
    if wanted(&args, "log-read") {
        rows.push(progress_of(history::log_read(args.log_records).await?));
    }
    if wanted(&args, "fanout") {
        let n = (args.events / args.endpoints.max(1)).max(1);
        rows.push(progress_of(
            hookpost(
                &format!("hookpost batch 1, fan-out to {}", args.endpoints),
                n,
                args.size,
                1,
                args.endpoints,
            )
            .await?,
        ));
    }
    if wanted(&args, "latency") {
        let row = progress_of(latency(args.rate, args.latency_seconds, args.size).await?);
        if args.rate == 1000 {
            targets.p99_ms = row.p99_ms;
        }
        rows.push(row);
    }
    if wanted(&args, "noisy") {
        let both = stress::noisy_neighbour(args.events / 2, args.size, args.noisy_backlog).await?;
        targets.noisy = both.last().and_then(|r| r.ratio_to_raw_broker);
        for row in both {
            rows.push(progress_of(row));
        }
    }
    if wanted(&args, "backlog") {
        for row in stress::backlog(
            args.backlog_events,
            args.size,
            args.batch_size,
            args.backlog_rate_limit,
        )
        .await?
        {
            rows.push(progress_of(row));
        }
    }
    if wanted(&args, "scale") {
        let row = progress_of(
            scale::scale(args.scale_endpoints, args.size, &args.scale_queue_type).await?,
        );
        if args.scale_endpoints == 10_000 {
            targets.scale = row.scrape.map(|(series, bytes)| targets::Scale {
                endpoints: row.events,
                rss_mib: row.dispatcher_peak_rss_mib,
                series,
                bytes,
            });
        }
        rows.push(row);
    }
    if wanted(&args, "api-writes") {
        for row in api_writes::api_writes(args.api_endpoints).await? {
            rows.push(progress_of(row));
        }
    }
    if wanted(&args, "tenants") {
        rows.push(progress_of(
            tenants::tenants(args.tenants, args.size).await?,
        ));
    }
    if wanted(&args, "memory") {
        for &k in &args.memory_endpoints {
            rows.push(progress_of(
                memory(k, args.size, &args.memory_queue_type).await?,
            ));
        }
    }
    for row in &mut rows {
        if !row.scenario.starts_with("raw") && row.ratio_to_raw_broker.is_none() {
            row.ratio_to_raw_broker = raw
                .map(|r| row.events_per_s / r)
                .filter(|_| row.events_per_s > 0.0);
        }
    }
    print_table(&rows);
    targets.print();
    if let Some(path) = &args.json {
        std::fs::write(path, serde_json::to_string_pretty(&rows)?)?;
        println!("wrote {}", path.display());
    }
    Ok(())
}
