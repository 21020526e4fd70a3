//! Every hookpost metric, declared once with its help text (README, "Metrics and health").
//! Call sites use the typed handles; each process builds its own
//! [`Registry`] so tests can run several instances in one process.

use prometheus::{
    Histogram, HistogramOpts, HistogramVec, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry,
};

/// Buckets for HTTP and publish latencies: 1 ms to 1 min.
pub const REQUEST_BUCKETS: &[f64] = &[
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
];

/// Metrics every process has: build info and broker connection state.
#[derive(Debug, Clone)]
pub struct ProcessMetrics {
    /// `hookpost_broker_connected`: 1 while the broker connection is open.
    pub broker_connected: IntGauge,
    /// `hookpost_broker_blocked`: 1 while the broker blocks the connection
    /// (`connection.blocked`: a memory or disk alarm), else 0.
    pub broker_blocked: IntGauge,
    /// `hookpost_broker_node{node}`: 1 for the broker node (`host:port`)
    /// the connection is on, 0 for the other configured nodes.
    pub broker_node: IntGaugeVec,
}

impl ProcessMetrics {
    /// Registers the process metrics; `component` labels `hookpost_build_info`.
    ///
    /// # Errors
    /// A registration conflict (the same metric registered twice).
    pub fn register(registry: &Registry, component: &str) -> prometheus::Result<Self> {
        let build = IntGaugeVec::new(
            Opts::new(
                "hookpost_build_info",
                "Always 1; labels carry the version and component.",
            ),
            &["version", "component"],
        )?;
        registry.register(Box::new(build.clone()))?;
        build
            .with_label_values(&[env!("CARGO_PKG_VERSION"), component])
            .set(1);
        let broker_connected = IntGauge::new(
            "hookpost_broker_connected",
            "1 while this process has an open broker connection, else 0.",
        )?;
        registry.register(Box::new(broker_connected.clone()))?;
        let broker_blocked = IntGauge::new(
            "hookpost_broker_blocked",
            "1 while the broker blocks this process's connection (memory or disk alarm; publishes wait), else 0.",
        )?;
        registry.register(Box::new(broker_blocked.clone()))?;
        let broker_node = IntGaugeVec::new(
            Opts::new(
                "hookpost_broker_node",
                "1 for the broker node (amqp.url or one of amqp.urls, as host:port) this process is connected to, 0 for the others.",
            ),
            &["node"],
        )?;
        registry.register(Box::new(broker_node.clone()))?;
        Ok(Self {
            broker_connected,
            broker_blocked,
            broker_node,
        })
    }
}

/// Metrics of the producer library and the ingest server.
#[derive(Debug, Clone)]
pub struct ProducerMetrics {
    /// `hookpost_events_published_total{outcome}`: `confirmed` or `failed`.
    pub events_published: IntCounterVec,
    /// `hookpost_publish_duration_seconds`: one `publish_many` call, to the last confirm.
    pub publish_duration: Histogram,
    /// `hookpost_ingest_requests_total{status}`: ingest responses by HTTP status code.
    pub ingest_requests: IntCounterVec,
    /// `hookpost_ingest_events_total{outcome}`: `accepted` or `rejected` events.
    pub ingest_events: IntCounterVec,
    /// `hookpost_ingest_request_duration_seconds{status_class}`.
    pub ingest_duration: HistogramVec,
    /// `hookpost_archive_records_total{result}`: events' archive copies,
    /// `written` (confirmed) or `lost` (refused, or no archive).
    pub archive_records: IntCounterVec,
    /// `hookpost_archive_bytes_total`: bytes of the copies written (compressed).
    pub archive_bytes: prometheus::IntCounter,
    /// `hookpost_replay_events_total{stage}`: events of the API's replays,
    /// `scanned` (read from the archive), `matched`, `sent`.
    pub replay_events: IntCounterVec,
    /// `hookpost_replays_running`: the API's replays running now.
    pub replays_running: prometheus::IntGauge,
}

impl ProducerMetrics {
    /// Registers the producer metrics.
    ///
    /// # Errors
    /// A registration conflict.
    pub fn register(registry: &Registry) -> prometheus::Result<Self> {
        let events_published = IntCounterVec::new(
            Opts::new(
                "hookpost_events_published_total",
                "Events published, by outcome (confirmed by the broker, or failed).",
            ),
            &["outcome"],
        )?;
        let publish_duration = Histogram::with_opts(
            HistogramOpts::new(
                "hookpost_publish_duration_seconds",
                "Time from publish call to the last broker confirm.",
            )
            .buckets(REQUEST_BUCKETS.to_vec()),
        )?;
        let ingest_requests = IntCounterVec::new(
            Opts::new(
                "hookpost_ingest_requests_total",
                "Ingest HTTP requests, by response status code.",
            ),
            &["status"],
        )?;
        let ingest_events = IntCounterVec::new(
            Opts::new(
                "hookpost_ingest_events_total",
                "Events received by the ingest server, by outcome (accepted or rejected).",
            ),
            &["outcome"],
        )?;
        let ingest_duration = HistogramVec::new(
            HistogramOpts::new(
                "hookpost_ingest_request_duration_seconds",
                "Ingest request handling time, by status class.",
            )
            .buckets(REQUEST_BUCKETS.to_vec()),
            &["status_class"],
        )?;
        let archive_records = IntCounterVec::new(
            Opts::new(
                "hookpost_archive_records_total",
                "Archive copies of published events, by result (written, or lost: refused by the broker or no archive).",
            ),
            &["result"],
        )?;
        let archive_bytes = prometheus::IntCounter::new(
            "hookpost_archive_bytes_total",
            "Bytes of the archive copies written by this process (compressed, as stored).",
        )?;
        let replay_events = IntCounterVec::new(
            Opts::new(
                "hookpost_replay_events_total",
                "Events of the API's replays from the archive, by stage (scanned, matched, sent).",
            ),
            &["stage"],
        )?;
        let replays_running = prometheus::IntGauge::new(
            "hookpost_replays_running",
            "Replays from the archive the API is running now.",
        )?;
        registry.register(Box::new(archive_records.clone()))?;
        registry.register(Box::new(archive_bytes.clone()))?;
        registry.register(Box::new(replay_events.clone()))?;
        registry.register(Box::new(replays_running.clone()))?;
        for result in ["written", "lost"] {
            archive_records.with_label_values(&[result]);
        }
        for stage in ["scanned", "matched", "sent"] {
            replay_events.with_label_values(&[stage]);
        }
        registry.register(Box::new(events_published.clone()))?;
        registry.register(Box::new(publish_duration.clone()))?;
        registry.register(Box::new(ingest_requests.clone()))?;
        registry.register(Box::new(ingest_events.clone()))?;
        registry.register(Box::new(ingest_duration.clone()))?;
        for outcome in ["confirmed", "failed"] {
            events_published.with_label_values(&[outcome]);
        }
        for outcome in ["accepted", "rejected"] {
            ingest_events.with_label_values(&[outcome]);
        }
        Ok(Self {
            archive_records,
            archive_bytes,
            replay_events,
            replays_running,
            events_published,
            publish_duration,
            ingest_requests,
            ingest_events,
            ingest_duration,
        })
    }
}

/// Buckets for end-to-end latency (event timestamp to 2xx): 5 ms to 6 h,
/// since retries stretch it to minutes and hours.
pub const END_TO_END_BUCKETS: &[f64] = &[
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0, 900.0,
    3600.0, 21600.0,
];

/// Buckets for events per request.
pub const BATCH_BUCKETS: &[f64] = &[
    1.0, 2.0, 5.0, 10.0, 20.0, 50.0, 100.0, 200.0, 500.0, 1000.0, 10000.0,
];

/// Metrics of the dispatcher. Every label set is bounded: endpoint ids come
/// from the config, the other labels from fixed lists.
#[derive(Debug, Clone)]
pub struct DispatcherMetrics {
    /// `hookpost_delivery_attempts_total{endpoint, status_class}`: HTTP requests
    /// by result (`2xx`..`5xx`, `timeout`, `error` for no answer, `blocked`).
    pub attempts: IntCounterVec,
    /// `hookpost_deliveries_total{endpoint, outcome}`: events by outcome
    /// (`delivered`, `retried`, `dead_lettered`, `filtered` by a transform,
    /// `dropped` after the last retry with `on_exhausted = "drop"`).
    pub deliveries: IntCounterVec,
    /// `hookpost_retries_total{endpoint, tier}`: retries scheduled, by wait tier (ms).
    pub retries: IntCounterVec,
    /// `hookpost_dead_letters_total{endpoint, reason}`.
    pub dead_letters: IntCounterVec,
    /// `hookpost_http_request_duration_seconds{endpoint}`.
    pub request_duration: HistogramVec,
    /// `hookpost_end_to_end_latency_seconds{endpoint}`: event timestamp to 2xx.
    pub end_to_end: HistogramVec,
    /// `hookpost_batch_size{endpoint}`: events per request.
    pub batch_size: HistogramVec,
    /// `hookpost_in_flight_requests{endpoint}`.
    pub in_flight: IntGaugeVec,
    /// `hookpost_endpoint_paused{endpoint}`: 1 while paused (after a 410).
    pub paused: IntGaugeVec,
    /// `hookpost_consuming{endpoint}`: 1 while this process consumes the endpoint's queue.
    pub consuming: IntGaugeVec,
    /// `hookpost_circuit_breaker_state{endpoint}`: 0 closed, 1 open (suspended), 2 half-open (probing).
    pub breaker_state: IntGaugeVec,
    /// `hookpost_queue_messages{kind, name}`: messages ready in each hookpost
    /// queue, polled from the broker (`kind` = endpoint, wait, dead, unrouted).
    pub queue_messages: IntGaugeVec,
    /// `hookpost_queue_consumers{kind, name}`: consumers of each hookpost queue.
    pub queue_consumers: IntGaugeVec,
    /// `hookpost_queue_head_age_seconds{endpoint}`: age of the oldest event in
    /// the last batch taken from the endpoint's queue (its head: the backlog's age).
    pub head_age: prometheus::GaugeVec,
    /// `hookpost_amqp_channels{role}`: broker channels the endpoint workers
    /// use now (`consume`, `publish`).
    pub amqp_channels: IntGaugeVec,
    /// `hookpost_log_records_total{result}`: attempt log records `written`
    /// (confirmed by the broker) or `lost` (buffer full, refused, or the
    /// stream unreachable).
    pub log_records: IntCounterVec,
    /// `hookpost_operational_events_total{result}`: hookpost's own events
    /// (`hookpost.endpoint.*`, `hookpost.delivery.dead_lettered`) `written`
    /// (confirmed by the broker) or `lost`.
    pub operational_events: IntCounterVec,
}

impl DispatcherMetrics {
    /// Registers the dispatcher metrics.
    ///
    /// # Errors
    /// A registration conflict.
    pub fn register(registry: &Registry) -> prometheus::Result<Self> {
        let counter =
            |name: &str, help: &str, labels: &[&str]| -> prometheus::Result<IntCounterVec> {
                let c = IntCounterVec::new(Opts::new(name, help), labels)?;
                registry.register(Box::new(c.clone()))?;
                Ok(c)
            };
        let histogram =
            |name: &str, help: &str, buckets: &[f64]| -> prometheus::Result<HistogramVec> {
                let h = HistogramVec::new(
                    HistogramOpts::new(name, help).buckets(buckets.to_vec()),
                    &["endpoint"],
                )?;
                registry.register(Box::new(h.clone()))?;
                Ok(h)
            };
        let gauge = |name: &str, help: &str| -> prometheus::Result<IntGaugeVec> {
            let g = IntGaugeVec::new(Opts::new(name, help), &["endpoint"])?;
            registry.register(Box::new(g.clone()))?;
            Ok(g)
        };
        // Both results exported from the start: a scrape before the first
        // record shows 0, and `increase(...{result="lost"})` sees the first loss.
        let written_or_lost = |name: &str, help: &str| -> prometheus::Result<IntCounterVec> {
            let c = counter(name, help, &["result"])?;
            for result in ["written", "lost"] {
                c.with_label_values(&[result]);
            }
            Ok(c)
        };
        Ok(Self {
            operational_events: written_or_lost(
                "hookpost_operational_events_total",
                "hookpost's operational events, by result: written (confirmed) or lost.",
            )?,
            log_records: written_or_lost(
                "hookpost_log_records_total",
                "Attempt log records, by result: written (confirmed) or lost.",
            )?,
            attempts: counter(
                "hookpost_delivery_attempts_total",
                "HTTP delivery requests, by endpoint and result (2xx..5xx, timeout, error, blocked).",
                &["endpoint", "status_class"],
            )?,
            deliveries: counter(
                "hookpost_deliveries_total",
                "Events handled, by endpoint and outcome (delivered, retried, dead_lettered).",
                &["endpoint", "outcome"],
            )?,
            retries: counter(
                "hookpost_retries_total",
                "Retries scheduled, by endpoint and wait tier in ms.",
                &["endpoint", "tier"],
            )?,
            dead_letters: counter(
                "hookpost_dead_letters_total",
                "Events dead-lettered, by endpoint and reason.",
                &["endpoint", "reason"],
            )?,
            request_duration: histogram(
                "hookpost_http_request_duration_seconds",
                "Duration of delivery requests, response body included.",
                REQUEST_BUCKETS,
            )?,
            end_to_end: histogram(
                "hookpost_end_to_end_latency_seconds",
                "Time from an event's timestamp to its successful delivery.",
                END_TO_END_BUCKETS,
            )?,
            batch_size: histogram(
                "hookpost_batch_size",
                "Events per delivery request.",
                BATCH_BUCKETS,
            )?,
            in_flight: gauge(
                "hookpost_in_flight_requests",
                "Delivery requests in progress.",
            )?,
            paused: gauge(
                "hookpost_endpoint_paused",
                "1 while delivery to the endpoint is paused (after a 410 Gone).",
            )?,
            consuming: gauge(
                "hookpost_consuming",
                "1 while this process consumes the endpoint's queue.",
            )?,
            breaker_state: gauge(
                "hookpost_circuit_breaker_state",
                "Circuit breaker of the endpoint: 0 closed, 1 open (suspended), 2 half-open (probing).",
            )?,
            queue_messages: {
                let g = IntGaugeVec::new(
                    Opts::new(
                        "hookpost_queue_messages",
                        "Messages ready in a hookpost queue, polled from the broker.",
                    ),
                    &["kind", "name"],
                )?;
                registry.register(Box::new(g.clone()))?;
                g
            },
            queue_consumers: {
                let g = IntGaugeVec::new(
                    Opts::new(
                        "hookpost_queue_consumers",
                        "Consumers of a hookpost queue, polled from the broker.",
                    ),
                    &["kind", "name"],
                )?;
                registry.register(Box::new(g.clone()))?;
                g
            },
            head_age: {
                let g = prometheus::GaugeVec::new(
                    Opts::new(
                        "hookpost_queue_head_age_seconds",
                        "Age of the oldest event in the last batch taken from the endpoint's queue.",
                    ),
                    &["endpoint"],
                )?;
                registry.register(Box::new(g.clone()))?;
                g
            },
            amqp_channels: {
                let g = IntGaugeVec::new(
                    Opts::new(
                        "hookpost_amqp_channels",
                        "Broker channels the endpoint workers use, by role (consume, publish).",
                    ),
                    &["role"],
                )?;
                registry.register(Box::new(g.clone()))?;
                g
            },
        })
    }
}

/// `2xx`, `4xx`, ... for a status code: a bounded label value.
pub fn status_class(status: u16) -> &'static str {
    match status {
        100..=199 => "1xx",
        200..=299 => "2xx",
        300..=399 => "3xx",
        400..=499 => "4xx",
        500..=599 => "5xx",
        _ => "other",
    }
}

impl DispatcherMetrics {
    /// Creates the gauges readiness and alerts read for `endpoint` (consuming,
    /// paused, circuit breaker) at 0. Counters are born at their first
    /// increment (the alerts are written for that: `deploy/alerts.yml`):
    /// creating every label set of every endpoint at 0 would cost about 60
    /// series per endpoint, 600,000 at 10,000 endpoints.
    pub fn init_endpoint(&self, endpoint: &str) {
        for gauge in [&self.paused, &self.consuming, &self.breaker_state] {
            gauge.with_label_values(&[endpoint]);
        }
    }
}

/// The registry in Prometheus text format.
pub fn encode(registry: &Registry) -> String {
    let mut out = String::new();
    // Text encoding into a String only fails on invalid metric families,
    // which registration already refused.
    let _ = prometheus::TextEncoder::new().encode_utf8(&registry.gather(), &mut out);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encodes_registered_metrics() {
        let registry = Registry::new();
        let process = ProcessMetrics::register(&registry, "test").unwrap();
        let producer = ProducerMetrics::register(&registry).unwrap();
        process.broker_connected.set(1);
        producer
            .events_published
            .with_label_values(&["confirmed"])
            .inc_by(3);
        let text = encode(&registry);
        assert!(
            text.contains("hookpost_events_published_total{outcome=\"confirmed\"} 3"),
            "{text}"
        );
        assert!(text.contains("hookpost_broker_connected 1"), "{text}");
        assert!(text.contains("hookpost_broker_blocked 0"), "{text}");
        assert!(
            text.contains("hookpost_build_info{component=\"test\",version=\""),
            "{text}"
        );
        assert!(
            ProducerMetrics::register(&registry).is_err(),
            "double registration is refused"
        );
    }
}
