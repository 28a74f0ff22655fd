//! Prometheus metrics, one registry for the process. Names start with `worker_`; labels are the
//! same words the logs use (`task`, `queue`, `reason`, `schedule`).
//!
//! Counters move where the thing happens (the executor, the dead-letter path, the retry path);
//! gauges that describe the outside world (broker/Redis/PostgreSQL up, Redis memory and hit
//! rate) are refreshed by the readiness probe loop in `http`.

use std::sync::LazyLock;

use prometheus::{
    Encoder, Gauge, GaugeVec, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge,
    Opts, Registry, TextEncoder,
};

pub(crate) struct Metrics {
    pub registry: Registry,
    pub tasks_started: IntCounterVec,
    pub tasks_succeeded: IntCounterVec,
    pub tasks_failed: IntCounterVec,
    pub tasks_retried: IntCounterVec,
    pub tasks_with_errors: IntCounterVec,
    pub worker_panics: IntCounterVec,
    pub messages_dead_lettered: IntCounterVec,
    pub messages_delayed: IntCounterVec,
    pub messages_acked: IntCounter,
    pub ack_frames: IntCounterVec,
    pub task_duration: HistogramVec,
    pub tasks_in_flight: IntGauge,
    pub results_waiting_for_redis: IntGauge,
    pub results_queued: IntCounter,
    pub dependency_up: GaugeVec,
    pub schedule_last_tick: GaugeVec,
    pub schedule_next_tick: GaugeVec,
    pub schedule_reloads_rejected: IntCounter,
    pub events_dropped: IntCounter,
    pub redis_used_memory_bytes: Gauge,
    pub redis_hit_rate: Gauge,
    pub redis_evicted_keys: Gauge,
}

fn counter(registry: &Registry, name: &str, help: &str, labels: &[&str]) -> IntCounterVec {
    let c = IntCounterVec::new(Opts::new(name, help), labels).expect("valid metric");
    registry
        .register(Box::new(c.clone()))
        .expect("metric registered once");
    c
}

fn int_counter(registry: &Registry, name: &str, help: &str) -> IntCounter {
    let c = IntCounter::new(name, help).expect("valid metric");
    registry
        .register(Box::new(c.clone()))
        .expect("metric registered once");
    c
}

fn gauge_vec(registry: &Registry, name: &str, help: &str, labels: &[&str]) -> GaugeVec {
    let g = GaugeVec::new(Opts::new(name, help), labels).expect("valid metric");
    registry
        .register(Box::new(g.clone()))
        .expect("metric registered once");
    g
}

fn gauge(registry: &Registry, name: &str, help: &str) -> Gauge {
    let g = Gauge::new(name, help).expect("valid metric");
    registry
        .register(Box::new(g.clone()))
        .expect("metric registered once");
    g
}

fn int_gauge(registry: &Registry, name: &str, help: &str) -> IntGauge {
    let g = IntGauge::new(name, help).expect("valid metric");
    registry
        .register(Box::new(g.clone()))
        .expect("metric registered once");
    g
}

impl Metrics {
    fn new() -> Self {
        let registry = Registry::new();
        let process = prometheus::process_collector::ProcessCollector::for_self();
        let _ = registry.register(Box::new(process));
        let tl = &["task", "queue"];
        let task_duration = HistogramVec::new(
            HistogramOpts::new("worker_task_duration_seconds", "Time a task ran, by task.")
                .buckets(vec![
                    0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1.0, 5.0, 15.0, 60.0, 300.0, 1800.0,
                ]),
            &["task"],
        )
        .expect("valid metric");
        registry
            .register(Box::new(task_duration.clone()))
            .expect("metric registered once");
        Self {
            tasks_started: counter(
                &registry,
                "worker_tasks_started_total",
                "Tasks started.",
                tl,
            ),
            tasks_succeeded: counter(
                &registry,
                "worker_tasks_succeeded_total",
                "Tasks that ended in SUCCESS.",
                tl,
            ),
            tasks_failed: counter(
                &registry,
                "worker_tasks_failed_total",
                "Tasks that ended in FAILURE (after retries).",
                tl,
            ),
            tasks_retried: counter(
                &registry,
                "worker_tasks_retried_total",
                "Retries published.",
                tl,
            ),
            tasks_with_errors: counter(
                &registry,
                "worker_tasks_with_errors_total",
                "Runs that ended in SUCCESS but list per-row errors in their result's `errors`.",
                tl,
            ),
            worker_panics: counter(
                &registry,
                "worker_panics_total",
                "Messages whose processing panicked outside the job (each became a FAILURE and a dead letter).",
                &["queue"],
            ),
            messages_dead_lettered: counter(
                &registry,
                "worker_messages_dead_lettered_total",
                "Messages moved to <queue>.dead, by reason.",
                &["queue", "reason"],
            ),
            messages_delayed: counter(
                &registry,
                "worker_messages_delayed_total",
                "Messages published into the delay topology (far etas, countdowns, retry backoff, migrated old delayed entries), by destination queue.",
                &["queue"],
            ),
            messages_acked: int_counter(
                &registry,
                "worker_messages_acked_total",
                "Deliveries acked to RabbitMQ.",
            ),
            ack_frames: counter(
                &registry,
                "worker_ack_frames_total",
                "basic.ack frames sent, by kind (multiple: one frame for a run of deliveries).",
                &["kind"],
            ),
            task_duration,
            tasks_in_flight: int_gauge(&registry, "worker_tasks_in_flight", "Tasks running now."),
            results_waiting_for_redis: int_gauge(
                &registry,
                "worker_results_waiting_for_redis",
                "Depth of the undelivered-results queue: final results waiting in RabbitMQ for Redis.",
            ),
            results_queued: int_counter(
                &registry,
                "worker_results_queued_total",
                "Final results Redis did not take, published to the undelivered-results queue.",
            ),
            dependency_up: gauge_vec(
                &registry,
                "worker_dependency_up",
                "1 when the service answers (broker, redis, postgres).",
                &["dependency"],
            ),
            schedule_last_tick: gauge_vec(
                &registry,
                "worker_schedule_last_tick_timestamp_seconds",
                "Unix time of the last published tick.",
                &["schedule"],
            ),
            schedule_next_tick: gauge_vec(
                &registry,
                "worker_schedule_next_tick_timestamp_seconds",
                "Unix time of the next tick.",
                &["schedule"],
            ),
            schedule_reloads_rejected: int_counter(
                &registry,
                "worker_schedule_reloads_rejected_total",
                "Edits of the schedules file refused as invalid (the previous schedules kept running).",
            ),
            events_dropped: int_counter(
                &registry,
                "worker_events_dropped_total",
                "Celery events (for Flower) not sent: the publisher's queue was full or the broker away.",
            ),
            redis_used_memory_bytes: gauge(
                &registry,
                "worker_redis_used_memory_bytes",
                "Redis INFO used_memory.",
            ),
            redis_hit_rate: gauge(
                &registry,
                "worker_redis_hit_rate",
                "Redis keyspace hits / (hits + misses), 0..1.",
            ),
            redis_evicted_keys: gauge(
                &registry,
                "worker_redis_evicted_keys",
                "Redis INFO evicted_keys.",
            ),
            registry,
        }
    }

    /// Create every per-task and per-queue series at 0, so a rate or a ratio over them has data
    /// from startup, not from the first failure (a series that does not exist yet makes
    /// `rate(failed) / rate(started)` empty, not 0). Only known names: the registry's tasks and
    /// the consumed queues, never a name a message brought.
    pub(crate) fn initialise(&self, tasks: &[&str], queues: &[String]) {
        for queue in queues {
            let q = queue.as_str();
            self.worker_panics.with_label_values(&[q]);
            self.messages_delayed.with_label_values(&[q]);
            for &task in tasks {
                for counter in [
                    &self.tasks_started,
                    &self.tasks_succeeded,
                    &self.tasks_failed,
                    &self.tasks_retried,
                    &self.tasks_with_errors,
                ] {
                    counter.with_label_values(&[task, q]);
                }
            }
        }
        for &task in tasks {
            self.task_duration.with_label_values(&[task]);
        }
        for kind in ["multiple", "single"] {
            self.ack_frames.with_label_values(&[kind]);
        }
    }

    /// The registry in Prometheus text format.
    pub(crate) fn render(&self) -> String {
        let mut out = Vec::new();
        let _ = TextEncoder::new().encode(&self.registry.gather(), &mut out);
        String::from_utf8(out).unwrap_or_default()
    }
}

/// The process-wide metrics.
pub(crate) static METRICS: LazyLock<Metrics> = LazyLock::new(Metrics::new);
