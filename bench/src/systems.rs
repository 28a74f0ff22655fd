//! The systems under test and how each is started: this worker (the release binary) and Python
//! Celery 5.7 in its production and tuned configurations, all on the same RabbitMQ and Redis.

use std::path::{Path, PathBuf};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Worker,
    Celery,
}

#[derive(Debug, Clone)]
pub struct System {
    /// Short name used in tables and log file names.
    pub label: String,
    pub kind: Kind,
    /// What the configuration is, for the table.
    pub config: String,
    /// The command line, with `{queue}` standing for the run's fresh queue.
    pub command: String,
    /// The worker's prefetch (to pick the matching ceiling).
    pub prefetch: u16,
    pub env: Vec<(&'static str, String)>,
}

impl System {
    pub fn command_for(&self, queue: &str) -> String {
        self.command.replace("{queue}", queue)
    }
}

pub struct Paths {
    pub root: PathBuf,
    pub worker: PathBuf,
    pub celery: PathBuf,
    pub python_dir: PathBuf,
}

impl Paths {
    pub fn new(root: &Path) -> Self {
        Self {
            root: root.to_path_buf(),
            worker: root.join("target/release/worker"),
            celery: root.join(".venv/bin/celery"),
            python_dir: root.join("bench/python"),
        }
    }
}

pub struct Urls {
    pub rabbitmq: String,
    pub redis: String,
}

/// Celery's broker URL for the same vhost (kombu spells vhost `/` as `//`).
fn kombu_url(amqp: &str) -> String {
    amqp.strip_suffix("/%2f")
        .or_else(|| amqp.strip_suffix("/%2F"))
        .map(|base| format!("{base}//"))
        .unwrap_or_else(|| amqp.to_owned())
}

/// This worker's release binary at `binary` (the work tree's, or a baseline revision's), with its
/// scheduler on as deployed (the shipped schedules.toml, its state under a key prefix of its own)
/// and its HTTP server on a free loopback port.
pub fn worker(
    binary: &Path,
    urls: &Urls,
    concurrency: u16,
    extra: &str,
    label: &str,
    built_from: &str,
) -> System {
    let extra_flags = if extra.is_empty() {
        String::new()
    } else {
        format!(" {extra}")
    };
    System {
        label: label.to_owned(),
        kind: Kind::Worker,
        config: format!(
            "release build{built_from}, --concurrency {concurrency}{extra_flags}, scheduler on, RUST_LOG=info"
        ),
        command: format!(
            "{} run --queues {{queue}} --concurrency {concurrency}{extra_flags}",
            binary.display()
        ),
        prefetch: concurrency,
        env: vec![
            ("RABBITMQ_URL", urls.rabbitmq.clone()),
            ("REDIS_URL", urls.redis.clone()),
            ("RUST_LOG", "info".into()),
            ("LOG_FORMAT", "json".into()),
            ("WORKER_KEY_PREFIX", format!("bench-{label}:")),
            ("WORKER_HTTP_ADDR", "127.0.0.1:0".into()),
            // The benchmark drains worker.ping, a diagnostic task.
            ("WORKER_DIAGNOSTIC_TASKS", "true".into()),
        ],
    }
}

fn celery_env(paths: &Paths, urls: &Urls) -> Vec<(&'static str, String)> {
    vec![
        ("BENCH_BROKER_URL", kombu_url(&urls.rabbitmq)),
        (
            "BENCH_REDIS_URL",
            format!("{}/0", urls.redis.trim_end_matches('/')),
        ),
        ("PYTHONPATH", paths.python_dir.display().to_string()),
        ("PYTHONDONTWRITEBYTECODE", "1".into()),
    ]
}

/// Production: prefork, `-c 2`, prefetch multiplier 1, early acks (Celery's default).
pub fn celery_production(paths: &Paths, urls: &Urls, run: &str) -> System {
    System {
        label: "celery-prod".into(),
        kind: Kind::Celery,
        config: "prefork -c 2, --prefetch-multiplier 1, acks default (early), mingle/gossip/heartbeat on".into(),
        command: format!(
            "{} -A bench_app worker -P prefork -c 2 --prefetch-multiplier 1 -Q {{queue}} -n bench-prod-{run}@%h --loglevel INFO",
            paths.celery.display()
        ),
        prefetch: 2,
        env: celery_env(paths, urls),
    }
}

/// Tuned: threads pool, a large prefetch, no mingle/gossip/heartbeat chatter.
pub fn celery_tuned(
    paths: &Paths,
    urls: &Urls,
    run: &str,
    threads: u16,
    multiplier: u16,
) -> System {
    System {
        label: "celery-tuned".into(),
        kind: Kind::Celery,
        config: format!(
            "threads -c {threads}, --prefetch-multiplier {multiplier} (prefetch {}), --without-mingle --without-gossip --without-heartbeat",
            threads * multiplier
        ),
        command: format!(
            "{} -A bench_app worker -P threads -c {threads} --prefetch-multiplier {multiplier} --without-mingle --without-gossip --without-heartbeat -Q {{queue}} -n bench-tuned-{run}@%h --loglevel INFO",
            paths.celery.display()
        ),
        prefetch: threads * multiplier,
        env: celery_env(paths, urls),
    }
}

/// Celery beat, started beside the production worker for the idle-memory figure.
pub fn celery_beat(paths: &Paths, urls: &Urls, state_dir: &Path) -> System {
    System {
        label: "celery-beat".into(),
        kind: Kind::Celery,
        config: "beat, one crontab entry (never due during the bench)".into(),
        command: format!(
            "{} -A bench_app beat -s {} --pidfile {} --loglevel INFO",
            paths.celery.display(),
            state_dir.join("beat-schedule").display(),
            state_dir.join("beat.pid").display()
        ),
        prefetch: 0,
        env: celery_env(paths, urls),
    }
}
