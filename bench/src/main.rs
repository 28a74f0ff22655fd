//! `bench`: this worker side by side with Python Celery 5.7 and with the broker's own ceiling,
//! on the same local RabbitMQ and Redis, in one run that writes `bench/RESULTS.md`.
//!
//! `scripts/bench` is the one command: it builds the release binaries, runs `bench run`, and on
//! any exit runs `bench cleanup`, which stops every process this run started and deletes every
//! queue it created (both are written down in the state directory as they happen). Nothing runs
//! unless `bench run` is invoked.

mod amqp;
mod procs;
mod report;
mod results;
mod scenarios;
mod state;
mod systems;

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context;
use clap::{Parser, Subcommand};

use report::Report;
use scenarios::Env;
use state::State;
use systems::{Paths, System, Urls};

/// The label of the baseline worker's rows (see `--baseline-worker`).
pub const BEFORE_LABEL: &str = "worker-c16-before";

#[derive(Parser)]
#[command(
    name = "bench",
    about = "Side-by-side benchmarks of the worker, Celery and the broker"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the measurements and write the report.
    Run(Box<RunArgs>),
    /// Stop the processes and delete the queues a run recorded in its state directory.
    Cleanup {
        #[arg(long)]
        state: PathBuf,
        #[arg(
            long,
            env = "RABBITMQ_URL",
            default_value = "amqp://guest:guest@127.0.0.1:5672/%2f"
        )]
        rabbitmq_url: String,
    },
}

#[derive(clap::Args)]
struct RunArgs {
    /// Tasks per drain (and messages per ceiling run).
    #[arg(long, default_value_t = 20_000)]
    n: usize,
    /// Where the report goes.
    #[arg(long, default_value = "bench/RESULTS.md")]
    out: PathBuf,
    /// Where pids, queue names and logs of this run are written.
    #[arg(long)]
    state: PathBuf,
    /// The workspace root (target/release/worker, .venv, bench/python).
    #[arg(long, default_value = ".")]
    root: PathBuf,
    /// Only these parts (comma-separated): idle, ceiling, drain, latency.
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "idle,ceiling,drain,latency"
    )]
    only: Vec<String>,
    /// Only these systems (comma-separated labels); empty: all.
    #[arg(long, value_delimiter = ',')]
    systems: Vec<String>,
    /// Threads of the tuned Celery configuration.
    #[arg(long, default_value_t = 4)]
    tuned_threads: u16,
    /// Prefetch multiplier of the tuned Celery configuration.
    #[arg(long, default_value_t = 32)]
    tuned_prefetch_multiplier: u16,
    #[arg(long, default_value_t = 200)]
    latency_rate: u32,
    #[arg(long, default_value_t = 30)]
    latency_secs: u32,
    /// Output of the jobs benchmark, pasted into the report when present.
    #[arg(long)]
    jobs_output: Option<PathBuf>,
    /// A worker binary built from an earlier revision, measured beside this one (before/after).
    #[arg(long, requires = "baseline_rev")]
    baseline_worker: Option<PathBuf>,
    /// The revision `--baseline-worker` was built from, for the report.
    #[arg(long)]
    baseline_rev: Option<String>,
    /// Hand-written findings appended to the report.
    #[arg(long)]
    findings: Option<PathBuf>,
    /// The command line that started the run, for the report.
    #[arg(long, default_value = "scripts/bench")]
    invoked_as: String,
    #[arg(
        long,
        env = "RABBITMQ_URL",
        default_value = "amqp://guest:guest@127.0.0.1:5672/%2f"
    )]
    rabbitmq_url: String,
    #[arg(long, env = "REDIS_URL", default_value = "redis://127.0.0.1:6379")]
    redis_url: String,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    match Cli::parse().command {
        Command::Run(args) => run(*args).await,
        Command::Cleanup {
            state,
            rabbitmq_url,
        } => {
            cleanup(&State::new(state)?, &rabbitmq_url).await;
            Ok(())
        }
    }
}

/// Stop recorded processes and delete recorded queues; safe to call more than once.
async fn cleanup(state: &State, rabbitmq_url: &str) {
    let mut stopped = 0;
    for pid in state.lines("pids") {
        if let Ok(pid) = pid.parse::<i32>()
            && pid > 1
            && procs::kill_group_now(pid)
        {
            stopped += 1;
        }
    }
    let queues = state.lines("queues");
    if !queues.is_empty() {
        match tokio::time::timeout(Duration::from_secs(10), amqp::connect(rabbitmq_url)).await {
            Ok(Ok(conn)) => {
                for q in &queues {
                    amqp::delete_queue(&conn, q).await;
                }
                let _ = conn.close(200, "cleanup".into()).await;
            }
            _ => eprintln!("bench cleanup: RabbitMQ unreachable; queues left: {queues:?}"),
        }
    }
    println!(
        "bench cleanup: {stopped} process group(s) still running were stopped; {} recorded queue(s) deleted if present",
        queues.len()
    );
}

fn is_local(url: &str) -> bool {
    let host = url
        .split("://")
        .nth(1)
        .map(|rest| rest.rsplit('@').next().unwrap_or(rest))
        .unwrap_or("");
    ["127.", "localhost", "[::1]"]
        .iter()
        .any(|p| host.starts_with(p))
}

async fn run(args: RunArgs) -> anyhow::Result<()> {
    anyhow::ensure!(
        is_local(&args.rabbitmq_url) && is_local(&args.redis_url),
        "the bench only talks to loopback services"
    );
    let root = std::fs::canonicalize(&args.root).context("workspace root")?;
    let state = State::new(args.state.clone())?;
    let run_id = uuid::Uuid::new_v4().simple().to_string()[..8].to_owned();
    let paths = Paths::new(&root);
    anyhow::ensure!(
        paths.worker.exists(),
        "{} is missing: cargo build --release -p worker",
        paths.worker.display()
    );
    let urls = Urls {
        rabbitmq: args.rabbitmq_url.clone(),
        redis: args.redis_url.clone(),
    };
    let redis = redis::Client::open(args.redis_url.as_str()).context("Redis URL")?;
    let env = Env {
        state,
        run: run_id.clone(),
        amqp: amqp::connect(&args.rabbitmq_url).await?,
        redis_conn: results::connect(&redis).await?,
        redis,
    };

    let worker16 = systems::worker(&paths.worker, &urls, 16, "", "worker-c16", "");
    let worker64 = systems::worker(&paths.worker, &urls, 64, "", "worker-c64", "");
    let worker_ns = systems::worker(
        &paths.worker,
        &urls,
        16,
        "--track-started false",
        "worker-c16-no-started",
        "",
    );
    let worker_sa = systems::worker(
        &paths.worker,
        &urls,
        16,
        "--track-started-after-ms 0",
        "worker-c16-started-at-once",
        "",
    );
    // The same binary on a one-thread tokio runtime (tokio reads TOKIO_WORKER_THREADS): fewer
    // cross-thread wake-ups, but a job that blocks its thread would stall every other one.
    let mut one_thread = systems::worker(&paths.worker, &urls, 16, "", "worker-c16-1thread", "");
    one_thread.env.push(("TOKIO_WORKER_THREADS", "1".into()));
    one_thread.config = one_thread
        .config
        .replace("release build", "release build, TOKIO_WORKER_THREADS=1");
    // Celery events on (what Flower asks for): their cost per task beside worker-c16. Nobody
    // consumes the bench's event exchange; publishing is the whole cost, as with Flower away.
    let mut events = systems::worker(&paths.worker, &urls, 16, "", "worker-c16-events", "");
    events.env.push(("WORKER_SEND_EVENTS", "true".into()));
    events
        .env
        .push(("WORKER_EVENT_EXCHANGE", format!("bench-{run_id}-celeryev")));
    events.config = events
        .config
        .replace("release build", "release build, WORKER_SEND_EVENTS=true");
    let before = args.baseline_worker.as_deref().map(|binary| {
        let rev = args.baseline_rev.as_deref().unwrap_or("baseline");
        systems::worker(
            binary,
            &urls,
            16,
            "",
            BEFORE_LABEL,
            &format!(" of {rev} (before)"),
        )
    });
    let prod = systems::celery_production(&paths, &urls, &run_id);
    let tuned = systems::celery_tuned(
        &paths,
        &urls,
        &run_id,
        args.tuned_threads,
        args.tuned_prefetch_multiplier,
    );
    let beat = systems::celery_beat(&paths, &urls, &env.state.dir);
    // Every system the drain measures, in table order; the report lists their commands.
    let drained: Vec<&System> = [
        &worker16,
        &worker64,
        &worker_ns,
        &worker_sa,
        &one_thread,
        &events,
        &prod,
        &tuned,
    ]
    .into_iter()
    .chain(before.as_ref())
    .collect();
    let wanted = |s: &System| args.systems.is_empty() || args.systems.contains(&s.label);
    let part = |p: &str| args.only.iter().any(|o| o == p);

    let mut report = Report {
        meta: collect_meta(&paths, &env, &args).await,
        ..Report::default()
    };
    report
        .commands
        .push(format!("# the one command\n{}", args.invoked_as));
    let mut ran = Vec::new();
    let mut argv = std::env::args();
    while let Some(a) = argv.next() {
        if a == "--invoked-as" {
            argv.next();
        } else {
            ran.push(a);
        }
    }
    report
        .commands
        .push(format!("# what it ran\n{}", ran.join(" ")));
    report.commands.push(
        "# systems under test ({queue} is a fresh queue per measurement: bench-<run>-<what>)"
            .into(),
    );
    for s in drained.iter().copied().chain([&beat]) {
        let env_vars: Vec<String> = s.env.iter().map(|(k, v)| format!("{k}={v}")).collect();
        report
            .commands
            .push(format!("{} {}", env_vars.join(" "), s.command));
    }

    macro_rules! attempt {
        ($what:expr, $fut:expr) => {
            match $fut.await {
                Ok(v) => Some(v),
                Err(e) => {
                    let msg = format!("{}: {:#}", $what, e);
                    eprintln!("FAILED {msg}");
                    report.failures.push(msg);
                    None
                }
            }
        };
    }

    if part("idle") {
        let systems = [(&worker16, None), (&prod, Some(&beat)), (&tuned, None)];
        for (s, b) in systems
            .into_iter()
            .chain(before.as_ref().map(|s| (s, None)))
        {
            if wanted(s)
                && let Some(i) = attempt!(
                    format!("idle {}", s.label),
                    scenarios::idle(&env, s, b, Duration::from_secs(5))
                )
            {
                report.idles.push(i);
            }
        }
    }
    if part("ceiling") {
        for (p, every) in [(16u16, 1usize), (64, 1), (16, 8)] {
            if let Some(c) = attempt!(
                format!("ceiling prefetch {p}, ack every {every}"),
                scenarios::ceiling_amqp(&env, args.n, p, every)
            ) {
                report.ceilings.push(c);
            }
        }
        if let Some(r) = attempt!("Redis ceiling", scenarios::ceiling_redis(&env, args.n)) {
            report.redis = r;
        }
    }
    if part("drain") {
        for s in drained.iter().copied() {
            if wanted(s)
                && let Some(d) = attempt!(
                    format!("drain {}", s.label),
                    scenarios::drain(&env, s, args.n)
                )
            {
                report.drains.push(d);
            }
        }
    }
    if part("latency") {
        for s in [&worker16, &prod, &tuned]
            .into_iter()
            .chain(before.as_ref())
        {
            if wanted(s)
                && let Some(l) = attempt!(
                    format!("latency {}", s.label),
                    scenarios::latency(&env, s, args.latency_rate, args.latency_secs)
                )
            {
                report.latencies.push(l);
            }
        }
    }

    cleanup(&env.state, &args.rabbitmq_url).await;
    report.jobs = args
        .jobs_output
        .as_deref()
        .and_then(|p| std::fs::read_to_string(p).ok())
        .filter(|s| !s.trim().is_empty());
    report.findings = args
        .findings
        .as_deref()
        .and_then(|p| std::fs::read_to_string(p).ok());
    let text = report.render(args.n);
    std::fs::write(&args.out, &text).with_context(|| format!("writing {}", args.out.display()))?;
    println!("wrote {}", args.out.display());
    if !report.failures.is_empty() {
        anyhow::bail!(
            "{} measurement(s) failed; see the report",
            report.failures.len()
        );
    }
    Ok(())
}

/// Run a short command for the report; its first line, or why it could not run.
async fn version_of(program: &str, args: &[&str], cwd: &Path) -> String {
    let out = tokio::time::timeout(
        Duration::from_secs(30),
        tokio::process::Command::new(program)
            .args(args)
            .current_dir(cwd)
            .kill_on_drop(true)
            .output(),
    )
    .await;
    match out {
        Ok(Ok(o)) => {
            let text = String::from_utf8_lossy(&o.stdout);
            let text = if text.trim().is_empty() {
                String::from_utf8_lossy(&o.stderr).into_owned()
            } else {
                text.into_owned()
            };
            text.trim().lines().last().unwrap_or("").trim().to_owned()
        }
        Ok(Err(e)) => format!("({program}: {e})"),
        Err(_) => format!("({program}: timed out)"),
    }
}

async fn collect_meta(paths: &Paths, env: &Env, args: &RunArgs) -> Vec<(String, String)> {
    let root = &paths.root;
    let cpus = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(0);
    let model = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|c| {
            c.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split(':').nth(1))
                .map(|s| s.trim().to_owned())
        })
        .unwrap_or_default();
    let mem = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|m| {
            m.lines()
                .next()
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|k| k.parse::<u64>().ok())
        })
        .map(|kib| format!("{:.1} GiB", kib as f64 / 1024.0 / 1024.0))
        .unwrap_or_default();
    let rev = version_of("git", &["rev-parse", "--short", "HEAD"], root).await;
    let dirty = version_of("git", &["status", "--porcelain", "--", "worker"], root).await;
    let rev = if dirty.is_empty() {
        rev
    } else {
        format!(
            "{rev} + uncommitted changes under worker/ (the binary was built from the work tree)"
        )
    };
    let mut redis_conn = env.redis_conn.clone();
    let redis_version: String = redis::cmd("INFO")
        .arg("server")
        .query_async::<String>(&mut redis_conn)
        .await
        .ok()
        .and_then(|info| {
            info.lines()
                .find_map(|l| l.strip_prefix("redis_version:").map(str::to_owned))
        })
        .unwrap_or_else(|| "(unknown)".into());
    let python = paths.root.join(".venv/bin/python");
    let celery = version_of(
        &python.display().to_string(),
        &[
            "-c",
            "import sys, celery, kombu, redis; print(f'celery {celery.__version__}, kombu {kombu.__version__}, redis-py {redis.__version__}, Python {sys.version.split()[0]}')",
        ],
        root,
    )
    .await;
    vec![
        (
            "date".into(),
            chrono::Utc::now().format("%Y-%m-%d %H:%M UTC").to_string(),
        ),
        (
            "machine".into(),
            format!(
                "{cpus} CPUs ({model}), {mem} RAM, {} (shared with other builds: figures are noisy)",
                version_of("uname", &["-sr"], root).await
            ),
        ),
        (
            "rustc".into(),
            version_of("rustc", &["--version"], root).await,
        ),
        ("worker git rev".into(), rev),
        (
            "RabbitMQ".into(),
            version_of("rabbitmqctl", &["version"], root).await,
        ),
        ("Redis".into(), redis_version),
        ("Celery".into(), celery),
        (
            "N".into(),
            format!(
                "{} tasks per drain; latency {}/s for {} s",
                args.n, args.latency_rate, args.latency_secs
            ),
        ),
    ]
}
