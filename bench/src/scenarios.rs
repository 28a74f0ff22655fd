//! The measurements. Each one uses a fresh, uniquely named queue and deletes it afterwards, and
//! every result it counts is read back from Redis and checked (present, SUCCESS, "pong") before
//! its number is kept.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use lapin::Connection;

use crate::procs::{self, CpuProbe, CpuSnapshot, Sut};
use crate::state::State;
use crate::systems::{Kind, System};
use crate::{amqp, results};

/// Shared handles for one run.
pub struct Env {
    pub state: State,
    pub run: String,
    pub amqp: Connection,
    pub redis: redis::Client,
    pub redis_conn: redis::aio::MultiplexedConnection,
}

impl Env {
    /// A fresh queue name, recorded for cleanup.
    pub fn queue(&self, what: &str) -> anyhow::Result<String> {
        let q = format!("bench-{}-{what}", self.run);
        self.state.record_queue(&q)?;
        Ok(q)
    }

    async fn declared_queue(&self, what: &str) -> anyhow::Result<String> {
        let q = self.queue(what)?;
        let ch = self.amqp.create_channel().await?;
        amqp::declare_celery_queue(&ch, &q).await?;
        let _ = ch.close(200, "declared".into()).await;
        Ok(q)
    }
}

#[derive(Debug, Clone)]
pub struct CeilingAmqp {
    pub prefetch: u16,
    /// Deliveries per ack frame (1: each acked alone).
    pub ack_every: usize,
    pub n: usize,
    pub secs: f64,
}

impl CeilingAmqp {
    pub fn rate(&self) -> f64 {
        self.n as f64 / self.secs
    }
}

pub async fn ceiling_amqp(
    env: &Env,
    n: usize,
    prefetch: u16,
    ack_every: usize,
) -> anyhow::Result<CeilingAmqp> {
    let q = env
        .declared_queue(&format!("ceiling{prefetch}x{ack_every}"))
        .await?;
    let tasks = amqp::ping_tasks(n);
    amqp::publish_confirmed(&env.amqp, &q, &tasks).await?;
    let took = amqp::ceiling_consume(
        &env.amqp,
        &q,
        n,
        prefetch,
        ack_every,
        Duration::from_secs(300),
    )
    .await;
    amqp::delete_queue(&env.amqp, &q).await;
    let took = took?;
    println!(
        "ceiling: lapin consume+ack (every {ack_every}), prefetch {prefetch}: {n} in {:.2}s = {:.0} msg/s",
        took.as_secs_f64(),
        n as f64 / took.as_secs_f64()
    );
    Ok(CeilingAmqp {
        prefetch,
        ack_every,
        n,
        secs: took.as_secs_f64(),
    })
}

#[derive(Debug, Clone)]
pub struct CeilingRedis {
    pub what: String,
    pub n: usize,
    pub secs: f64,
}

impl CeilingRedis {
    pub fn rate(&self) -> f64 {
        self.n as f64 / self.secs
    }
}

pub async fn ceiling_redis(env: &Env, n: usize) -> anyhow::Result<Vec<CeilingRedis>> {
    let mut conn = env.redis_conn.clone();
    let pipelined = results::ceiling_pipelined(&mut conn, &env.run, n, 100).await?;
    let script = results::ceiling_script(&env.redis_conn, &env.run, n, 16).await?;
    let out = vec![
        CeilingRedis {
            what: "SETEX+PUBLISH, pipelined 100 pairs per round trip".into(),
            n,
            secs: pipelined.as_secs_f64(),
        },
        CeilingRedis {
            what: "the worker's store script (GET, SETEX, PUBLISH in Lua), 16 in flight".into(),
            n,
            secs: script.as_secs_f64(),
        },
    ];
    for c in &out {
        println!("ceiling: Redis {}: {:.0} results/s", c.what, c.rate());
    }
    Ok(out)
}

#[derive(Debug, Clone)]
pub struct Drain {
    pub system: System,
    pub n: usize,
    pub verified: usize,
    pub publish_secs: f64,
    /// Spawn to the first consumer on the (pre-filled) queue.
    pub startup_secs: f64,
    /// First to last result.
    pub secs: f64,
    pub cpu: CpuSnapshot,
    pub peak_rss_kib: u64,
    pub processes: usize,
}

impl Drain {
    pub fn rate(&self) -> f64 {
        (self.n.saturating_sub(1)) as f64 / self.secs
    }
}

/// Memory samples of a process tree every 100 ms, until stopped.
struct Sampler {
    stop: Arc<AtomicBool>,
    handle: tokio::task::JoinHandle<(u64, usize)>,
}

impl Sampler {
    fn start(root: u32) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = Arc::clone(&stop);
        let handle = tokio::spawn(async move {
            let mut peak = 0u64;
            let mut processes = 1usize;
            // Bounded: 100 ms ticks for at most an hour.
            for _ in 0..36_000 {
                if flag.load(Ordering::SeqCst) {
                    break;
                }
                let pids = procs::tree(root);
                processes = processes.max(pids.len());
                let (rss, hwm) = procs::memory_sum_kib(&pids);
                // One process: its own high-water mark is exact; a tree: the sampled sum.
                peak = peak.max(if pids.len() == 1 { hwm } else { rss });
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            (peak, processes)
        });
        Self { stop, handle }
    }

    async fn finish(self) -> (u64, usize) {
        self.stop.store(true, Ordering::SeqCst);
        self.handle.await.unwrap_or((0, 0))
    }
}

/// Pre-publish `n` tasks, start the system on that queue, and time first to last result.
pub async fn drain(env: &Env, system: &System, n: usize) -> anyhow::Result<Drain> {
    let q = env
        .declared_queue(&format!("drain-{}", system.label))
        .await?;
    let tasks = amqp::ping_tasks(n);
    let ids: Vec<String> = tasks.iter().map(|t| t.id.clone()).collect();
    let publish = amqp::publish_confirmed(&env.amqp, &q, &tasks).await?;
    drop(tasks);
    println!(
        "{}: {n} worker.ping tasks published to {q} (confirmed) in {:.2}s",
        system.label,
        publish.as_secs_f64()
    );

    let probe: Arc<Mutex<Option<(CpuProbe, CpuSnapshot, CpuSnapshot)>>> = Arc::default();
    let pid_cell = Arc::new(Mutex::new(0u32));
    let (p1, p2, pid1) = (probe.clone(), probe.clone(), pid_cell.clone());
    let watch = results::watch(
        &env.redis,
        &ids,
        move || {
            let pid = pid1.lock().map(|g| *g).unwrap_or(0);
            let probe = CpuProbe::new(pid);
            let at_first = probe.read();
            if let Ok(mut g) = p1.lock() {
                *g = Some((probe, at_first, at_first));
            }
        },
        move || {
            if let Ok(mut g) = p2.lock()
                && let Some((probe, _, last)) = g.as_mut()
            {
                *last = probe.read();
            }
        },
    )
    .await?;

    let mut sut = procs::spawn(
        &env.state,
        &system.label,
        &system.command_for(&q),
        &system.env,
    )?;
    if let Ok(mut g) = pid_cell.lock() {
        *g = sut.pid;
    }
    let sampler = Sampler::start(sut.pid);
    let outcome = async {
        let consuming =
            amqp::wait_for_consumer(&env.amqp, &q, Duration::from_secs(60), || sut.check_alive())
                .await?;
        let startup = consuming - sut.started;
        let seen = watch.finish(Duration::from_secs(600)).await?;
        Ok::<_, anyhow::Error>((startup, seen))
    }
    .await;
    let (peak_rss_kib, processes) = sampler.finish().await;
    let log = sut.log.clone();
    let check = sut.check_alive();
    sut.stop(Duration::from_secs(20)).await;
    let (startup, seen) = match outcome {
        Ok(v) => v,
        Err(e) => {
            amqp::delete_queue(&env.amqp, &q).await;
            return Err(e.context(format!("log tail:\n{}", procs::log_tail(&log, 20))));
        }
    };
    check.ok();

    let mut conn = env.redis_conn.clone();
    let verified = results::verify_all(&mut conn, &ids, Duration::from_secs(5)).await;
    amqp::delete_queue(&env.amqp, &q).await;
    results::delete_results(&mut conn, &ids).await;
    let verified = verified.with_context(|| format!("{}: checking results", system.label))?;
    if seen.count != n {
        bail!(
            "{}: the result channel carried {} of {n} SUCCESS results ({} other)",
            system.label,
            seen.count,
            seen.other
        );
    }
    println!(
        "{}: verified: {verified}/{n} results present in Redis, SUCCESS, result \"pong\"",
        system.label
    );
    let times: Vec<Instant> = seen.at.iter().flatten().copied().collect();
    let (Some(first), Some(last)) = (times.iter().min(), times.iter().max()) else {
        bail!("no result times");
    };
    let secs = (*last - *first).as_secs_f64();
    let cpu = probe
        .lock()
        .ok()
        .and_then(|g| {
            g.as_ref().map(|(_, a, b)| CpuSnapshot {
                sut: b.sut - a.sut,
                broker: b.broker - a.broker,
                redis: b.redis - a.redis,
            })
        })
        .unwrap_or_default();
    let d = Drain {
        system: system.clone(),
        n,
        verified,
        publish_secs: publish.as_secs_f64(),
        startup_secs: startup.as_secs_f64(),
        secs,
        cpu,
        peak_rss_kib,
        processes,
    };
    println!(
        "{}: drained {n} in {:.2}s = {:.0} tasks/s (CPU s: self {:.2}, RabbitMQ {:.2}, Redis {:.2}; peak RSS {} KiB)",
        system.label,
        d.secs,
        d.rate(),
        cpu.sut,
        cpu.broker,
        cpu.redis,
        peak_rss_kib
    );
    Ok(d)
}

#[derive(Debug, Clone)]
pub struct Idle {
    pub system: System,
    pub startup_secs: f64,
    pub rss_kib: u64,
    pub processes: usize,
    pub beat: Option<(System, u64, usize)>,
}

/// Start on an empty queue: time to consuming, then RSS after `settle` idle seconds.
pub async fn idle(
    env: &Env,
    system: &System,
    beat: Option<&System>,
    settle: Duration,
) -> anyhow::Result<Idle> {
    let q = env
        .declared_queue(&format!("idle-{}", system.label))
        .await?;
    let mut sut = procs::spawn(
        &env.state,
        &format!("{}-idle", system.label),
        &system.command_for(&q),
        &system.env,
    )?;
    let mut beat_sut: Option<Sut> = match beat {
        Some(b) => Some(procs::spawn(
            &env.state,
            &b.label,
            &b.command_for(&q),
            &b.env,
        )?),
        None => None,
    };
    let outcome = async {
        let consuming =
            amqp::wait_for_consumer(&env.amqp, &q, Duration::from_secs(60), || sut.check_alive())
                .await?;
        tokio::time::sleep(settle).await;
        sut.check_alive()?;
        if let Some(b) = beat_sut.as_mut() {
            b.check_alive()?;
        }
        let pids = procs::tree(sut.pid);
        let (rss, _) = procs::memory_sum_kib(&pids);
        let beat_mem = beat_sut.as_ref().map(|b| {
            let pids = procs::tree(b.pid);
            (procs::memory_sum_kib(&pids).0, pids.len())
        });
        Ok::<_, anyhow::Error>((consuming - sut.started, rss, pids.len(), beat_mem))
    }
    .await;
    sut.stop(Duration::from_secs(20)).await;
    if let Some(b) = beat_sut {
        b.stop(Duration::from_secs(20)).await;
    }
    amqp::delete_queue(&env.amqp, &q).await;
    let (startup, rss, processes, beat_mem) = outcome?;
    println!(
        "{}: consuming {:.0} ms after start; idle RSS {} KiB in {processes} process(es){}",
        system.label,
        startup.as_secs_f64() * 1000.0,
        rss,
        beat_mem
            .map(|(r, _)| format!(", beat {r} KiB"))
            .unwrap_or_default()
    );
    Ok(Idle {
        system: system.clone(),
        startup_secs: startup.as_secs_f64(),
        rss_kib: rss,
        processes,
        beat: beat.zip(beat_mem).map(|(b, (r, p))| (b.clone(), r, p)),
    })
}

#[derive(Debug, Clone)]
pub struct Latency {
    pub system: System,
    pub rate: u32,
    pub measured: usize,
    pub warmup: usize,
    pub verified: usize,
    pub achieved_rate: f64,
    pub p50_ms: f64,
    pub p90_ms: f64,
    pub p99_ms: f64,
    pub max_ms: f64,
}

/// Publish at a steady `rate` for `secs` (after a one-second warm-up that is not counted) and
/// time each task from just before its publish to its SUCCESS arriving on the result channel.
pub async fn latency(env: &Env, system: &System, rate: u32, secs: u32) -> anyhow::Result<Latency> {
    if system.kind == Kind::Worker && rate == 0 {
        bail!("rate must be positive");
    }
    let q = env
        .declared_queue(&format!("latency-{}", system.label))
        .await?;
    let warmup = rate as usize;
    let measured = (rate * secs) as usize;
    let tasks = amqp::ping_tasks(warmup + measured);
    let ids: Vec<String> = tasks.iter().map(|t| t.id.clone()).collect();
    let watch = results::watch(&env.redis, &ids, || {}, || {}).await?;
    let mut sut = procs::spawn(
        &env.state,
        &format!("{}-latency", system.label),
        &system.command_for(&q),
        &system.env,
    )?;
    let outcome = async {
        amqp::wait_for_consumer(&env.amqp, &q, Duration::from_secs(60), || sut.check_alive())
            .await?;
        // Let Celery's pool finish starting after its consumer appears.
        tokio::time::sleep(Duration::from_secs(2)).await;
        let channel = amqp::plain_channel(&env.amqp).await?;
        let mut sent = Vec::with_capacity(tasks.len());
        let mut tick = tokio::time::interval(Duration::from_secs_f64(1.0 / f64::from(rate)));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
        let started = Instant::now();
        for task in &tasks {
            tick.tick().await;
            sent.push(Instant::now());
            amqp::publish_one(&channel, &q, task).await?;
        }
        let publish_secs = started.elapsed().as_secs_f64();
        let seen = watch.finish(Duration::from_secs(60)).await?;
        let _ = channel.close(200, "done".into()).await;
        Ok::<_, anyhow::Error>((sent, seen, publish_secs))
    }
    .await;
    let log = sut.log.clone();
    sut.stop(Duration::from_secs(20)).await;
    let (sent, seen, publish_secs) = match outcome {
        Ok(v) => v,
        Err(e) => {
            amqp::delete_queue(&env.amqp, &q).await;
            return Err(e.context(format!("log tail:\n{}", procs::log_tail(&log, 20))));
        }
    };
    let mut conn = env.redis_conn.clone();
    let verified = results::verify_all(&mut conn, &ids, Duration::from_secs(5)).await;
    amqp::delete_queue(&env.amqp, &q).await;
    results::delete_results(&mut conn, &ids).await;
    let verified = verified.with_context(|| format!("{}: checking results", system.label))?;
    if seen.count != ids.len() {
        bail!(
            "{}: the result channel carried {} of {} SUCCESS results",
            system.label,
            seen.count,
            ids.len()
        );
    }
    println!(
        "{}: verified: {verified}/{} results present in Redis, SUCCESS, result \"pong\"",
        system.label,
        ids.len()
    );
    let mut lat: Vec<f64> = sent[warmup..]
        .iter()
        .zip(&seen.at[warmup..])
        .filter_map(|(s, r)| r.map(|r| (r - *s).as_secs_f64() * 1000.0))
        .collect();
    lat.sort_by(f64::total_cmp);
    if lat.is_empty() {
        bail!("{}: no latency measured", system.label);
    }
    let pct = |p: f64| {
        let i = ((lat.len() as f64 * p).ceil() as usize).clamp(1, lat.len()) - 1;
        lat[i]
    };
    let l = Latency {
        system: system.clone(),
        rate,
        measured,
        warmup,
        verified,
        achieved_rate: tasks.len() as f64 / publish_secs,
        p50_ms: pct(0.50),
        p90_ms: pct(0.90),
        p99_ms: pct(0.99),
        max_ms: pct(1.0),
    };
    println!(
        "{}: latency at {rate}/s (achieved {:.1}/s): p50 {:.2} ms, p90 {:.2} ms, p99 {:.2} ms, max {:.2} ms",
        system.label, l.achieved_rate, l.p50_ms, l.p90_ms, l.p99_ms, l.max_ms
    );
    Ok(l)
}
