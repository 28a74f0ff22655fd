//! `bench/RESULTS.md`: what was measured, on what, with which commands, side by side.

use std::fmt::Write;

use crate::BEFORE_LABEL;
use crate::scenarios::{CeilingAmqp, CeilingRedis, Drain, Idle, Latency};
use crate::systems::Kind;

#[derive(Default)]
pub struct Report {
    pub meta: Vec<(String, String)>,
    pub commands: Vec<String>,
    pub ceilings: Vec<CeilingAmqp>,
    pub redis: Vec<CeilingRedis>,
    pub drains: Vec<Drain>,
    pub idles: Vec<Idle>,
    pub latencies: Vec<Latency>,
    pub failures: Vec<String>,
    pub jobs: Option<String>,
    pub findings: Option<String>,
}

/// Reads one process's CPU seconds out of a drain.
type CpuOf = fn(&Drain) -> f64;

/// Megabytes (10^6 bytes) from KiB.
fn mb(kib: u64) -> f64 {
    kib as f64 * 1024.0 / 1_000_000.0
}

impl Report {
    /// The ceiling the targets use: each message acked alone, as the issue defines it.
    fn ceiling_for(&self, prefetch: u16) -> Option<&CeilingAmqp> {
        let single = || self.ceilings.iter().filter(|c| c.ack_every == 1);
        single()
            .find(|c| c.prefetch == prefetch)
            .or_else(|| single().min_by_key(|c| c.prefetch.abs_diff(prefetch)))
    }

    fn drain(&self, label: &str) -> Option<&Drain> {
        self.drains.iter().find(|d| d.system.label == label)
    }

    pub fn render(&self, n: usize) -> String {
        let mut s = String::new();
        let _ = writeln!(
            s,
            "# Benchmarks: this worker, Python Celery 5.7, and the broker's ceiling\n"
        );
        let _ = writeln!(
            s,
            "Written by `scripts/bench` from one run; every figure below comes from that run, side by \
             side. Figures move from run to run on a shared 2-core machine: read the ratios.\n"
        );
        let _ = writeln!(s, "## Machine and versions\n");
        let _ = writeln!(s, "| | |\n|---|---|");
        for (k, v) in &self.meta {
            let _ = writeln!(
                s,
                "| {k} | {} |",
                v.replace('|', "\\|").replace('\n', "<br>")
            );
        }

        if !self.failures.is_empty() {
            let _ = writeln!(s, "\n## Failed measurements\n");
            for f in &self.failures {
                let _ = writeln!(s, "- {}", f.replace('\n', " / "));
            }
        }

        self.render_targets(&mut s);
        self.render_before_after(&mut s);
        self.render_throughput(&mut s, n);
        self.render_latency(&mut s);
        self.render_memory_startup(&mut s, n);
        self.render_ceilings(&mut s, n);

        let _ = writeln!(
            s,
            "\n## Job benchmarks (`cargo bench -p jobs --bench jobs`)\n"
        );
        match &self.jobs {
            Some(out) => {
                let _ = writeln!(s, "```\n{}\n```", out.trim_end());
            }
            None => {
                let _ = writeln!(s, "Pending: the jobs benchmark has not landed yet.");
            }
        }

        let _ = writeln!(s, "\n## Exact commands\n\n```sh");
        for c in &self.commands {
            let _ = writeln!(s, "{c}");
        }
        let _ = writeln!(s, "```");

        if let Some(f) = &self.findings {
            let _ = writeln!(s, "\n{}", f.trim_end());
        }
        s
    }

    fn render_targets(&self, s: &mut String) {
        let _ = writeln!(s, "\n## Targets (reported, not asserted)\n");
        let _ = writeln!(s, "| target | measured | |\n|---|---|---|");
        let mark = |ok: bool| if ok { "met" } else { "**missed**" };
        if let Some(w) = self.drain("worker-c16") {
            if let Some(c) = self.ceiling_for(w.system.prefetch) {
                let r = w.rate() / c.rate();
                let _ = writeln!(
                    s,
                    "| throughput >= 80% of the ceiling (prefetch {}) | {:.0}% ({:.0} of {:.0} /s) | {} |",
                    c.prefetch,
                    r * 100.0,
                    w.rate(),
                    c.rate(),
                    mark(r >= 0.8)
                );
            }
            if let Some(p) = self.drain("celery-prod") {
                let r = w.rate() / p.rate();
                let _ = writeln!(
                    s,
                    "| throughput >= 15x Celery production | {r:.1}x ({:.0} vs {:.0} /s) | {} |",
                    w.rate(),
                    p.rate(),
                    mark(r >= 15.0)
                );
            }
        }
        if let Some(l) = self
            .latencies
            .iter()
            .find(|l| l.system.kind == Kind::Worker)
        {
            let _ = writeln!(
                s,
                "| p99 < 5 ms at {}/s | {:.2} ms | {} |",
                l.rate,
                l.p99_ms,
                mark(l.p99_ms < 5.0)
            );
        }
        if let Some(i) = self.idles.iter().find(|i| i.system.kind == Kind::Worker) {
            let _ = writeln!(
                s,
                "| idle RSS < 20 MB | {:.1} MB | {} |",
                mb(i.rss_kib),
                mark(mb(i.rss_kib) < 20.0)
            );
        }
    }

    /// The baseline binary (`--baseline-worker`) beside this one, both measured in this run.
    fn render_before_after(&self, s: &mut String) {
        let before = self.drain(BEFORE_LABEL);
        let after = self.drain("worker-c16");
        let (Some(before), Some(after)) = (before, after) else {
            return;
        };
        let _ = writeln!(
            s,
            "\n## Before and after the fixes (same run, same machine, --concurrency 16)\n\n\
             `{}` is the release binary of the baseline revision, `{}` the one built from this \
             tree; both ran with their scheduler on. Lower is better except for tasks/s.\n",
            BEFORE_LABEL, after.system.label
        );
        let _ = writeln!(
            s,
            "| measure | before | after | after ÷ before |\n|---|---|---|---|"
        );
        let mut row = |what: &str, b: f64, a: f64, unit: &str, digits: usize| {
            let _ = writeln!(
                s,
                "| {what} | {b:.digits$}{unit} | **{a:.digits$}{unit}** | {:.2} |",
                a / b
            );
        };
        row(
            "drain throughput, tasks/s",
            before.rate(),
            after.rate(),
            "",
            0,
        );
        let cpu_of: [(&str, CpuOf); 3] = [
            ("worker", |d| d.cpu.sut),
            ("RabbitMQ", |d| d.cpu.broker),
            ("Redis", |d| d.cpu.redis),
        ];
        for (who, cpu) in cpu_of {
            let per_k = |d: &Drain| cpu(d) / d.n as f64 * 1000.0;
            row(
                &format!("{who} CPU s per 1,000 tasks"),
                per_k(before),
                per_k(after),
                "",
                3,
            );
        }
        row(
            "peak RSS during the drain",
            mb(before.peak_rss_kib),
            mb(after.peak_rss_kib),
            " MB",
            1,
        );
        let latency = |label: &str| self.latencies.iter().find(|l| l.system.label == label);
        if let (Some(b), Some(a)) = (latency(BEFORE_LABEL), latency("worker-c16")) {
            row("latency p50 at steady rate", b.p50_ms, a.p50_ms, " ms", 2);
            row("latency p99 at steady rate", b.p99_ms, a.p99_ms, " ms", 2);
        }
        let idle = |label: &str| self.idles.iter().find(|i| i.system.label == label);
        if let (Some(b), Some(a)) = (idle(BEFORE_LABEL), idle("worker-c16")) {
            row("idle RSS", mb(b.rss_kib), mb(a.rss_kib), " MB", 1);
            row(
                "startup to consuming",
                b.startup_secs * 1000.0,
                a.startup_secs * 1000.0,
                " ms",
                0,
            );
        }
    }

    fn render_throughput(&self, s: &mut String, n: usize) {
        let _ = writeln!(
            s,
            "\n## Throughput: draining {n} pre-published `worker.ping` tasks\n\n\
             Each system starts on its own fresh queue already holding {n} Celery v2 messages \
             (persistent, published with confirms); the rate is (N-1) / (last result - first \
             result), results seen on Redis's `celery-task-meta-*` PUBLISH. Before a number is \
             kept, all N result keys are read back: every one present, SUCCESS, result `\"pong\"`.\n"
        );
        let _ = writeln!(
            s,
            "| system | configuration | tasks/s | vs ceiling (same prefetch) | this worker (c16) ÷ it | CPU s per 1,000 tasks: self / RabbitMQ / Redis | peak RSS | verified |\n|---|---|---|---|---|---|---|---|"
        );
        let base = self.drain("worker-c16").map(Drain::rate);
        for d in &self.drains {
            let vs_ceiling = match (d.system.kind, self.ceiling_for(d.system.prefetch)) {
                (Kind::Worker, Some(c)) => {
                    format!(
                        "{:.0}% (of {:.0}, prefetch {})",
                        d.rate() / c.rate() * 100.0,
                        c.rate(),
                        c.prefetch
                    )
                }
                _ => "".into(),
            };
            let speedup = base
                .map(|b| format!("{:.1}x", b / d.rate()))
                .unwrap_or_default();
            let per_k = |x: f64| x / d.n as f64 * 1000.0;
            let _ = writeln!(
                s,
                "| {} | {} | **{:.0}** | {} | {} | {:.3} / {:.3} / {:.3} | {:.1} MB ({} proc) | {}/{} SUCCESS |",
                d.system.label,
                d.system.config,
                d.rate(),
                vs_ceiling,
                speedup,
                per_k(d.cpu.sut),
                per_k(d.cpu.broker),
                per_k(d.cpu.redis),
                mb(d.peak_rss_kib),
                d.processes,
                d.verified,
                d.n
            );
        }
        if let Some(d) = self.drains.first() {
            let _ = writeln!(
                s,
                "\nPre-publishing {} tasks with publisher confirms took {:.2} s ({:.0} msg/s) for the first queue.",
                d.n,
                d.publish_secs,
                d.n as f64 / d.publish_secs
            );
        }
        let _ = writeln!(
            s,
            "\nCPU seconds are /proc utime+stime between the first and the last result; the machine \
             has 2 cores, so the three columns together cannot exceed 2 s per second of drain."
        );
    }

    fn render_latency(&self, s: &mut String) {
        if self.latencies.is_empty() {
            return;
        }
        let l0 = &self.latencies[0];
        let _ = writeln!(
            s,
            "\n## Latency at a steady {}/s for {} s\n\n\
             From just before `basic.publish` to the SUCCESS arriving on the task's result channel \
             (subscribed to before publishing), measured in one process. The first second \
             ({} tasks) is warm-up and not counted; all results were checked in Redis.\n",
            l0.rate,
            l0.measured / l0.rate.max(1) as usize,
            l0.warmup
        );
        let _ = writeln!(
            s,
            "| system | configuration | p50 | p90 | p99 | max | publish rate achieved | verified |\n|---|---|---|---|---|---|---|---|"
        );
        for l in &self.latencies {
            let _ = writeln!(
                s,
                "| {} | {} | {:.2} ms | {:.2} ms | **{:.2} ms** | {:.2} ms | {:.1}/s | {}/{} SUCCESS |",
                l.system.label,
                l.system.config,
                l.p50_ms,
                l.p90_ms,
                l.p99_ms,
                l.max_ms,
                l.achieved_rate,
                l.verified,
                l.measured + l.warmup
            );
        }
    }

    fn render_memory_startup(&self, s: &mut String, n: usize) {
        let _ = writeln!(
            s,
            "\n## Memory and startup\n\n\
             Idle: RSS (VmRSS, summed over the process tree) 5 s after the system started consuming \
             an empty queue. Peak: during the drain above (VmHWM for one process; for a tree, the \
             largest summed VmRSS sampled every 100 ms). Startup: from spawning the process to \
             RabbitMQ reporting a consumer on its queue (passive `queue.declare`, polled every 5 ms).\n"
        );
        let _ = writeln!(
            s,
            "| system | idle RSS | + beat | idle total | peak RSS during drain | startup (empty queue) | startup ({n} backlog) |\n|---|---|---|---|---|---|---|"
        );
        for i in &self.idles {
            let beat = match (&i.beat, i.system.kind) {
                (Some((_, r, _)), _) => format!("{:.1} MB", mb(*r)),
                (None, Kind::Worker) => "none (no separate beat process)".into(),
                (None, Kind::Celery) => "not started".into(),
            };
            let total = i.rss_kib + i.beat.as_ref().map(|(_, r, _)| *r).unwrap_or(0);
            let drain = self.drain(&i.system.label);
            let _ = writeln!(
                s,
                "| {} | {:.1} MB ({} proc) | {} | **{:.1} MB** | {} | {:.0} ms | {} |",
                i.system.label,
                mb(i.rss_kib),
                i.processes,
                beat,
                mb(total),
                drain
                    .map(|d| format!("{:.1} MB", mb(d.peak_rss_kib)))
                    .unwrap_or_default(),
                i.startup_secs * 1000.0,
                drain
                    .map(|d| format!("{:.0} ms", d.startup_secs * 1000.0))
                    .unwrap_or_default()
            );
        }
    }

    fn render_ceilings(&self, s: &mut String, n: usize) {
        let _ = writeln!(
            s,
            "\n## Ceilings: the most any worker could do here\n\n\
             RabbitMQ: a bare lapin consumer acking each of {n} persistent messages (the same Celery \
             messages), prefetch global to the channel as the worker sets it; first delivery to \
             last ack. The targets and the \"vs ceiling\" column use it. The worker batches its \
             acks (`basic.ack(multiple=true)`, broker/settle.rs), so it can pass that figure; the \
             row with one multiple ack per 8 deliveries is the ceiling for a consumer that does \
             the same. Redis: {n} result writes of the worker's document size.\n"
        );
        let _ = writeln!(s, "| ceiling | per second |\n|---|---|");
        for c in &self.ceilings {
            let acks = if c.ack_every == 1 {
                "ack each".to_owned()
            } else {
                format!("one multiple ack per {}", c.ack_every)
            };
            let _ = writeln!(
                s,
                "| lapin consume + {acks}, prefetch {} | {:.0} msg/s |",
                c.prefetch,
                c.rate()
            );
        }
        for r in &self.redis {
            let _ = writeln!(s, "| Redis {} | {:.0} results/s |", r.what, r.rate());
        }
    }
}
