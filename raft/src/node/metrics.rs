//! `GET /metrics`: the node's counters, gauges and latency histograms in the OpenMetrics text format
//! (which Prometheus scrapes), encoded by the `prometheus-client` crate.

use std::sync::atomic::Ordering;
use std::time::Duration;

use openraft::async_runtime::WatchReceiver;
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric, NoLabelSet};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::Registry;

use super::NodeShared;
use crate::state_machine::latency_histogram;

/// The content type of the answer.
pub(crate) const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// Latencies the node records as they happen.
pub(super) struct Latencies {
    /// Every HTTP request, from its arrival to its answer's head.
    http: Histogram,
    /// Every write request run on this node (the leader): from entering its database's queue to its answer
    /// (applied here, or failed).
    write: Histogram,
    /// Every entry applied by this node's state machine.
    apply: Histogram,
    /// Every write request run on this node: from entering its database's queue to its group starting.
    write_wait: Histogram,
    /// Every group of writes: its SQL run on the writer's connection, to its commit proposed (pipelined)
    /// or applied (not pipelined).
    group_run: Histogram,
    /// Every pipelined group that proposed a commit: from its SQL done to its commits applied here.
    group_commit: Histogram,
}

impl Latencies {
    /// New HTTP and write histograms beside the state machine's `apply` histogram.
    pub(super) fn new(apply: Histogram) -> Self {
        Latencies {
            http: latency_histogram(),
            write: latency_histogram(),
            apply,
            write_wait: latency_histogram(),
            group_run: latency_histogram(),
            group_commit: latency_histogram(),
        }
    }

    pub(super) fn http(&self, took: Duration) {
        self.http.observe(took.as_secs_f64());
    }

    pub(super) fn write(&self, took: Duration) {
        self.write.observe(took.as_secs_f64());
    }

    pub(super) fn write_wait(&self, took: Duration) {
        self.write_wait.observe(took.as_secs_f64());
    }

    pub(super) fn group_run(&self, took: Duration) {
        self.group_run.observe(took.as_secs_f64());
    }

    pub(super) fn group_commit(&self, took: Duration) {
        self.group_commit.observe(took.as_secs_f64());
    }
}

/// What one value is.
#[derive(Debug, Clone, Copy)]
enum Kind {
    Gauge(f64),
    /// 0 or 1.
    Flag(bool),
    /// Named without `_total`, which the encoder appends.
    Counter(u64),
    Seconds(f64),
}

/// A histogram whose counts are kept elsewhere, read at one scrape (the log's fdatasync latencies).
#[derive(Debug)]
struct ReadHistogram {
    name: &'static str,
    help: &'static str,
    sum: f64,
    count: u64,
    /// Per bucket, not cumulative: (upper bound, count); the last bound `f64::MAX` (+Inf).
    buckets: Vec<(f64, u64)>,
}

impl ReadHistogram {
    /// The WAL's fdatasync latencies in `wal`.
    fn wal_fsyncs(wal: &bop_storage::wal::WalMetrics) -> Self {
        let bounds = bop_storage::wal::FSYNC_BUCKET_BOUNDS.iter().copied().chain([f64::MAX]);
        let buckets: Vec<(f64, u64)> = bounds.zip(wal.fsync_buckets).collect();
        ReadHistogram {
            name: "bop_wal_fsync_duration_seconds",
            help: "seconds each fdatasync of the log's write path took",
            sum: wal.fsync_seconds,
            count: buckets.iter().map(|(_, n)| n).sum(),
            buckets,
        }
    }
}

impl Collector for ReadHistogram {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let mut metric = encoder.encode_descriptor(self.name, self.help, None, MetricType::Histogram)?;
        metric.encode_histogram::<NoLabelSet>(self.sum, self.count, &self.buckets, None)
    }
}

/// The values read at one scrape.
#[derive(Debug)]
struct Snapshot(Vec<(&'static str, &'static str, Kind)>);

impl Collector for Snapshot {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        for (name, help, kind) in &self.0 {
            match *kind {
                Kind::Gauge(value) => {
                    let gauge = ConstGauge::new(value);
                    gauge.encode(encoder.encode_descriptor(name, help, None, gauge.metric_type())?)?;
                }
                Kind::Flag(on) => {
                    let gauge = ConstGauge::new(i64::from(on));
                    gauge.encode(encoder.encode_descriptor(name, help, None, gauge.metric_type())?)?;
                }
                Kind::Counter(value) => {
                    let counter = ConstCounter::new(value);
                    counter.encode(encoder.encode_descriptor(name, help, None, counter.metric_type())?)?;
                }
                Kind::Seconds(value) => {
                    let counter = ConstCounter::new(value);
                    counter.encode(encoder.encode_descriptor(name, help, None, counter.metric_type())?)?;
                }
            }
        }
        Ok(())
    }
}

impl NodeShared {
    /// `/metrics`' text: Raft, WAL, page cache, HTTP and SQL writer values, and the latency histograms.
    pub(super) fn metrics_text(&self) -> String {
        use Kind::{Counter, Gauge, Seconds};
        let m = self.raft.metrics().borrow_watched().clone();
        let wal = self.wal.metrics();
        let cache = self.manager.cache_metrics();
        let requests = self.requests.load(Ordering::Relaxed);
        let last_log = m.last_log_index.unwrap_or(0);
        let applied = m.last_applied.map_or(0, |l| l.index);
        let latency_s =
            self.latency_us_total.load(Ordering::Relaxed).checked_div(requests).unwrap_or(0) as f64 / 1e6;
        let (groups, grouped) = self.writers.grouped();
        let flag = Kind::Flag;
        let values = vec![
            ("bop_raft_is_leader", "1 if this node leads", flag(m.current_leader == Some(self.id))),
            ("bop_raft_term", "current term", Gauge(m.current_term as f64)),
            ("bop_raft_last_log_index", "last log index", Gauge(last_log as f64)),
            ("bop_raft_last_applied_index", "last applied index", Gauge(applied as f64)),
            (
                "bop_raft_apply_lag_entries",
                "entries logged but not applied",
                Gauge(last_log.saturating_sub(applied) as f64),
            ),
            ("bop_wal_appends", "append calls", Counter(wal.appends)),
            ("bop_wal_records", "records made durable", Counter(wal.records)),
            ("bop_wal_bytes", "bytes written", Counter(wal.bytes)),
            ("bop_wal_fsyncs", "fdatasyncs", Counter(wal.fsyncs)),
            ("bop_wal_fsync_seconds", "seconds spent in those fdatasyncs", Seconds(wal.fsync_seconds)),
            ("bop_wal_records_per_fsync", "records per fdatasync", Gauge(wal.records_per_fsync)),
            ("bop_wal_queue_depth", "records accepted, not yet durable", Gauge(wal.queue_depth as f64)),
            (
                "bop_wal_backpressure",
                "appends refused for backpressure",
                Counter(wal.backpressure_rejections),
            ),
            ("bop_wal_space_alarm", "1 while the log cannot get disk space", flag(wal.space_alarm)),
            (
                "bop_wal_io_stalled_seconds",
                "how long the log's current write or fdatasync has run (0 when idle)",
                Gauge(wal.io_stalled_for.map_or(0.0, |d| d.as_secs_f64())),
            ),
            (
                "bop_wal_permanent_failures",
                "permanent write failures (poison)",
                Counter(wal.permanent_failures),
            ),
            ("bop_cache_hits", "page cache hits", Counter(cache.hits)),
            ("bop_cache_misses", "page cache misses", Counter(cache.misses)),
            ("bop_cache_evictions", "page cache evictions", Counter(cache.evictions)),
            ("bop_cache_bytes", "page cache bytes", Gauge(cache.bytes as f64)),
            ("bop_http_requests", "HTTP requests served", Counter(requests)),
            (
                "bop_http_write_queue_depth",
                "write requests waiting for their database's writer or in the group it runs",
                Gauge(self.writer_queue.depth() as f64),
            ),
            ("bop_sql_writers", "database writers running", Gauge(self.writers.running() as f64)),
            ("bop_sql_write_groups", "groups of writes run (each one transaction)", Counter(groups)),
            ("bop_sql_write_group_requests", "write requests run in those groups", Counter(grouped)),
            (
                "bop_sql_writer_connections_opened",
                "connections writers opened (a writer keeps its connection from one group to the next)",
                Counter(self.writers.opened()),
            ),
            (
                "bop_sql_write_groups_unanswered",
                "groups whose commits are proposed and whose answers wait for them to be applied",
                Gauge(self.writers.unanswered() as f64),
            ),
            (
                "bop_sql_pipelined_commits_failed",
                "pipelined commits refused or of unknown fate (the requests that ran on top of them failed too)",
                Counter(self.writers.pipeline_failures()),
            ),
            (
                "bop_sql_calls_stopped",
                "SQL calls stopped by their time limit, a gone client or shutdown",
                Counter(self.statements_stopped.load(Ordering::Relaxed)),
            ),
            (
                "bop_sql_reads_inline",
                "queries answered on the HTTP task, on an idle pooled connection, within its time budget",
                Counter(self.reads_inline.load(Ordering::Relaxed)),
            ),
            (
                "bop_sql_reads_moved",
                "queries moved from the HTTP task to a blocking thread as they needed longer than its budget",
                Counter(self.reads_moved.load(Ordering::Relaxed)),
            ),
            ("bop_http_latency_seconds_avg", "mean HTTP request latency since start", Gauge(latency_s)),
        ];
        let mut registry = Registry::default();
        registry.register_collector(Box::new(Snapshot(values)));
        registry.register_collector(Box::new(ReadHistogram::wal_fsyncs(&wal)));
        registry.register(
            "bop_http_request_duration_seconds",
            "HTTP request latency, arrival to answer",
            self.latencies.http.clone(),
        );
        registry.register(
            "bop_write_duration_seconds",
            "write request latency on the node that ran it, queued to answered (applied)",
            self.latencies.write.clone(),
        );
        registry.register(
            "bop_write_wait_duration_seconds",
            "write request time in its database's queue, queued to its group starting",
            self.latencies.write_wait.clone(),
        );
        registry.register(
            "bop_write_group_run_duration_seconds",
            "a group of writes' SQL run, to its commit proposed (pipelined) or applied (not pipelined)",
            self.latencies.group_run.clone(),
        );
        registry.register(
            "bop_write_group_commit_duration_seconds",
            "a pipelined group's wait for its commits, SQL done to applied on this node",
            self.latencies.group_commit.clone(),
        );
        registry.register(
            "bop_raft_apply_duration_seconds",
            "seconds each log entry took to apply on this node",
            self.latencies.apply.clone(),
        );
        let mut out = String::new();
        if let Err(e) = prometheus_client::encoding::text::encode(&mut out, &registry) {
            tracing::warn!("encoding /metrics failed: {e}");
        }
        out
    }
}
