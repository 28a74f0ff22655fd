//! Typed settings, from the environment (with the StaffProBot app's variable names) and flags.
//! Plain data: nothing here connects to anything or knows the layers that read it; the
//! composition root (`startup`) turns these into connections and parts.
//!
//! Defaults point at the stock local services (RabbitMQ guest:guest, Redis and PostgreSQL on
//! localhost) so that `worker run` works on a developer machine out of the box; production sets
//! every variable explicitly. Secrets live inside URLs: anything that prints a URL goes through
//! [`redact_url`] (any text that may quote one, through [`redact_text`]), clap is told never to
//! echo the values of those variables in `--help`, and the settings that hold a secret write
//! their `Debug` by hand so that `{:?}` cannot print one either.

pub(crate) mod listing;
mod redact;

pub use redact::{redact_text, redact_url};

use std::fmt;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use chrono_tz::Tz;
use clap::Args;

/// Where the services are. Shared by every subcommand.
#[derive(Clone, Args)]
pub struct ConnectionSettings {
    /// RabbitMQ URL (vhost `/` when the path is empty).
    #[arg(
        long,
        env = "RABBITMQ_URL",
        default_value = "amqp://guest:guest@localhost:5672/%2f",
        hide_env_values = true,
        global = true
    )]
    pub rabbitmq_url: String,

    /// Redis URL; a password, if any, goes inside it.
    #[arg(
        long,
        env = "REDIS_URL",
        default_value = "redis://127.0.0.1:6379",
        hide_env_values = true,
        global = true
    )]
    pub redis_url: String,

    /// The master's name when REDIS_URL is a `sentinel://` list (Celery's `master_name` in
    /// `result_backend_transport_options`).
    #[arg(long, env = "WORKER_REDIS_MASTER_NAME", global = true)]
    pub redis_master_name: Option<String>,

    /// PEM CA bundle that Redis's TLS certificate must verify against (`rediss://`, or the
    /// master behind Sentinel); unset: the system roots.
    #[arg(long, env = "WORKER_REDIS_CA_FILE", global = true)]
    pub redis_ca_file: Option<PathBuf>,

    /// PEM client certificate presented to Redis (with WORKER_REDIS_KEY_FILE).
    #[arg(long, env = "WORKER_REDIS_CERT_FILE", global = true)]
    pub redis_cert_file: Option<PathBuf>,

    /// PEM private key of WORKER_REDIS_CERT_FILE.
    #[arg(long, env = "WORKER_REDIS_KEY_FILE", global = true)]
    pub redis_key_file: Option<PathBuf>,

    /// PEM CA bundle that RabbitMQ's TLS certificate must verify against (`amqps://`);
    /// unset: the system roots.
    #[arg(long, env = "WORKER_RABBITMQ_CA_FILE", global = true)]
    pub rabbitmq_ca_file: Option<PathBuf>,

    /// PEM client certificate presented to RabbitMQ (with WORKER_RABBITMQ_KEY_FILE).
    #[arg(long, env = "WORKER_RABBITMQ_CERT_FILE", global = true)]
    pub rabbitmq_cert_file: Option<PathBuf>,

    /// PEM private key of WORKER_RABBITMQ_CERT_FILE.
    #[arg(long, env = "WORKER_RABBITMQ_KEY_FILE", global = true)]
    pub rabbitmq_key_file: Option<PathBuf>,

    /// Redis database number, used when REDIS_URL names none.
    #[arg(long, env = "REDIS_DB", default_value_t = 0, global = true)]
    pub redis_db: i64,

    /// PostgreSQL URL; `postgresql+asyncpg://` from the Python app is accepted.
    #[arg(
        long,
        env = "DATABASE_URL",
        default_value = "postgresql://postgres@localhost:5432/staffprobot",
        hide_env_values = true,
        global = true
    )]
    pub database_url: String,

    /// Timezone of schedules and of the jobs' local dates (Celery's `timezone`).
    #[arg(long, env = "DEFAULT_TIMEZONE", default_value = "Europe/Moscow", value_parser = parse_tz, global = true)]
    pub default_timezone: Tz,

    /// How long results stay in Redis, in seconds (Celery's `result_expires`).
    #[arg(long, env = "RESULT_EXPIRES", default_value_t = 3600, global = true)]
    pub result_expires: u64,

    /// Prefix in front of `celery-task-meta-<id>` (Celery's `global_keyprefix`).
    #[arg(long, env = "RESULT_KEY_PREFIX", default_value = "", global = true)]
    pub result_key_prefix: String,

    /// Prefix of the worker's own Redis keys (scheduler state; the old delayed store, migrated
    /// at startup); every replica and `worker schedules` must use the same one.
    #[arg(
        long,
        env = "WORKER_KEY_PREFIX",
        default_value = "worker:",
        global = true
    )]
    pub key_prefix: String,

    /// Celery's `control_exchange`: remote control listens on `<this>.pidbox` and replies on
    /// `reply.<this>.pidbox`, as Python workers and `app.control` do with the same setting.
    #[arg(
        long,
        env = "WORKER_CONTROL_EXCHANGE",
        default_value = "celery",
        global = true
    )]
    pub control_exchange: String,

    /// Type of the task queues we declare, as Celery's `task_default_queue_type` (and
    /// `task_create_missing_queue_type` for the other queues): `quorum` declares them with
    /// `x-queue-type=quorum` and prefetches per consumer. Every client of a queue must agree,
    /// or RabbitMQ answers 406; classic, the default, is what Celery declares unless told.
    #[arg(long, env = "WORKER_QUEUE_TYPE", value_enum, default_value_t = QueueType::Classic, global = true)]
    pub queue_type: QueueType,
}

// By hand: a derived Debug would print the URLs' passwords.
impl fmt::Debug for ConnectionSettings {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ConnectionSettings")
            .field("rabbitmq_url", &redact_url(&self.rabbitmq_url))
            .field("redis_url", &redact_url(&self.redis_url))
            .field("redis_db", &self.redis_db)
            .field("redis_master_name", &self.redis_master_name)
            .field("redis_ca_file", &self.redis_ca_file)
            .field("rabbitmq_ca_file", &self.rabbitmq_ca_file)
            .field("database_url", &redact_url(&self.database_url))
            .field("default_timezone", &self.default_timezone)
            .field("result_expires", &self.result_expires)
            .field("result_key_prefix", &self.result_key_prefix)
            .field("key_prefix", &self.key_prefix)
            .field("control_exchange", &self.control_exchange)
            .field("queue_type", &self.queue_type)
            .finish()
    }
}

impl ConnectionSettings {
    /// The Redis URL with `REDIS_DB` applied when the URL names no database.
    pub fn redis_url_with_db(&self) -> String {
        let url = self.redis_url.trim_end_matches('/');
        let after_host = url.split_once("://").map_or(url, |(_, rest)| rest);
        if after_host.contains('/') || self.redis_db == 0 {
            url.to_owned()
        } else {
            format!("{url}/{}", self.redis_db)
        }
    }

    /// The PostgreSQL URL sqlx understands.
    pub fn database_url_for_sqlx(&self) -> String {
        self.database_url.replacen("+asyncpg", "", 1)
    }
}

/// How `worker run` consumes.
#[derive(Debug, Clone, Args)]
pub struct RunSettings {
    /// Queues to consume, comma-separated.
    #[arg(
        long,
        env = "WORKER_QUEUES",
        value_delimiter = ',',
        default_value = "notifications,shifts,analytics"
    )]
    pub queues: Vec<String>,

    /// Tasks run at once; also the broker prefetch (shared by all queues, as Celery's
    /// `global` qos). Jobs wait on the network, not the CPU, hence more than the core count.
    #[arg(long, env = "WORKER_CONCURRENCY", default_value_t = 16)]
    pub concurrency: u16,

    /// The node name: remote control's `<name>.<control_exchange>.pidbox` queue and the name
    /// in its replies, results' `worker` field and STARTED's `hostname`. Unique per replica;
    /// by default `celery@<hostname>`, as Celery names its workers.
    #[arg(long, env = "WORKER_HOSTNAME")]
    pub hostname: Option<String>,

    /// Send Celery's task and worker events from startup (Celery's `worker_send_task_events`);
    /// off, they start when remote control's `enable_events` arrives (Flower sends it).
    #[arg(long, env = "WORKER_SEND_EVENTS", default_value_t = false, action = clap::ArgAction::Set)]
    pub send_events: bool,

    /// Celery's `event_exchange`: the topic exchange events are published to.
    #[arg(long, env = "WORKER_EVENT_EXCHANGE", default_value = "celeryev")]
    pub event_exchange: String,

    /// Store STARTED when a task begins (Celery's `task_track_started`).
    #[arg(long, env = "WORKER_TRACK_STARTED", default_value_t = true, action = clap::ArgAction::Set)]
    pub track_started: bool,

    /// Write STARTED only once a task has run this many milliseconds (0: as it starts). A task
    /// that finishes sooner goes straight to its outcome: one Redis write instead of two, for a
    /// state nobody could have seen.
    #[arg(long, env = "WORKER_TRACK_STARTED_AFTER_MS", default_value_t = 5)]
    pub track_started_after_ms: u64,

    /// A redelivered message whose SUCCESS is already stored is not run again (Celery 5.7's
    /// `worker_deduplicate_successful_tasks`); only redeliveries pay the extra read.
    #[arg(long, env = "WORKER_DEDUPLICATE_SUCCESSFUL_TASKS", default_value_t = true, action = clap::ArgAction::Set)]
    pub deduplicate_successful_tasks: bool,

    /// Store name, args, kwargs, worker, retries and queue with results (`result_extended`).
    #[arg(long, env = "WORKER_RESULT_EXTENDED", default_value_t = true, action = clap::ArgAction::Set)]
    pub result_extended: bool,

    /// Bodies larger than this go to the dead-letter queue unread.
    #[arg(long, env = "WORKER_MAX_MESSAGE_BYTES", default_value_t = 4 * 1024 * 1024)]
    pub max_message_bytes: usize,

    /// Bodies with more JSON values than this (arguments, list items, fields, containers) go
    /// to the dead-letter queue unread.
    #[arg(long, env = "WORKER_MAX_MESSAGE_VALUES", default_value_t = 100_000)]
    pub max_message_values: usize,

    /// Bytes of message bodies processed at once, across all queues (at least one largest
    /// message): what bounds memory when many large messages arrive together.
    #[arg(long, env = "WORKER_INFLIGHT_BYTES", default_value_t = 16 * 1024 * 1024)]
    pub inflight_bytes: usize,

    /// Run the diagnostic tasks `worker.ping`, `worker.echo`, `worker.sleep`, `worker.fail`.
    /// Off in production: they run on every queue the worker consumes.
    #[arg(long, env = "WORKER_DIAGNOSTIC_TASKS", default_value_t = false, action = clap::ArgAction::Set)]
    pub diagnostic_tasks: bool,

    /// Seconds of eta waited for in memory (at least 1: the delay topology counts whole
    /// seconds, so a message it brings back may be early by up to one); a task due later goes
    /// into RabbitMQ's delay topology and is acked, so no message stays unacked near
    /// RabbitMQ's consumer_timeout (30 min).
    #[arg(long, env = "WORKER_ETA_HOLD", default_value_t = 1.0)]
    pub eta_hold: f64,

    /// Deliveries of one message before it is moved to `<queue>.dead` (reason
    /// `delivery_limit`) instead of run again: a message that kills the worker each time
    /// otherwise comes back for ever. Counted by quorum queues (`x-delivery-count`; Celery sets
    /// no `x-delivery-limit`); classic queues carry no count. 0 = no limit.
    #[arg(long, env = "WORKER_MAX_DELIVERIES", default_value_t = 20)]
    pub max_deliveries: u32,

    /// Queue type of the delay topology's `celery_delayed_<n>` queues, as Celery's
    /// `broker_native_delayed_delivery_queue_type` (same default): every worker of a broker,
    /// Python or ours, must declare the same, or RabbitMQ answers 406.
    #[arg(long, env = "WORKER_DELAYED_QUEUE_TYPE", value_enum, default_value_t = DelayQueueType::Quorum)]
    pub delayed_queue_type: DelayQueueType,

    /// Soft time limit in seconds (cooperative cancel, SoftTimeLimitExceeded); 0 = none.
    #[arg(long, env = "WORKER_SOFT_TIME_LIMIT", default_value_t = 1500.0)]
    pub soft_time_limit: f64,

    /// Hard time limit in seconds (task abandoned, TimeLimitExceeded); 0 = none.
    #[arg(long, env = "WORKER_TIME_LIMIT", default_value_t = 1800.0)]
    pub time_limit: f64,

    /// The durable queue where a final result waits while Redis does not take it; every
    /// replica writes what is there to Redis as soon as it answers. Replicas of one deployment
    /// share it; two deployments with different result stores need different names.
    #[arg(
        long,
        env = "WORKER_UNDELIVERED_RESULTS_QUEUE",
        default_value = "worker.results.undelivered"
    )]
    pub undelivered_results_queue: String,
}

/// The queue type of the delay topology (kombu accepts exactly these two).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum DelayQueueType {
    Classic,
    Quorum,
}

impl DelayQueueType {
    /// The `x-queue-type` argument's value.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Classic => "classic",
            Self::Quorum => "quorum",
        }
    }
}

/// The type of the task queues: the same two values as Celery's `task_default_queue_type`.
pub type QueueType = DelayQueueType;

/// The time limits one run gets (`None`: no limit).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct TimeLimits {
    pub soft: Option<Duration>,
    pub hard: Option<Duration>,
}

impl RunSettings {
    pub fn time_limits(&self) -> TimeLimits {
        let secs = |s: f64| Duration::try_from_secs_f64(s).ok().filter(|d| !d.is_zero());
        TimeLimits {
            soft: secs(self.soft_time_limit),
            hard: secs(self.time_limit),
        }
    }

    pub fn eta_hold(&self) -> Duration {
        Duration::try_from_secs_f64(self.eta_hold)
            .unwrap_or(Duration::from_secs(1))
            .max(Duration::from_secs(1))
    }

    pub fn hostname(&self) -> String {
        self.hostname
            .clone()
            .unwrap_or_else(|| format!("celery@{}", hostname()))
    }
}

/// What StaffProBot's jobs need beyond the connections.
#[derive(Clone, Args)]
pub struct JobSettings {
    /// Telegram Bot API token; unset (or empty) turns Telegram delivery off, with one warning.
    #[arg(long, env = "TELEGRAM_BOT_TOKEN", hide_env_values = true)]
    pub telegram_bot_token: Option<String>,

    /// Telegram Bot API base URL (a proxy, or a fake in tests).
    #[arg(long, env = "TELEGRAM_API_URL", default_value = jobs::DEFAULT_TELEGRAM_API_URL)]
    pub telegram_api_url: String,

    /// process-reminders reminds of shifts starting within this many hours.
    #[arg(long, env = "REMINDER_HOURS_BEFORE", default_value_t = 2)]
    pub reminder_hours_before: u32,
}

// By hand: a derived Debug would print the bot token.
impl fmt::Debug for JobSettings {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("JobSettings")
            .field(
                "telegram_bot_token",
                &self.telegram_bot_token.as_ref().map(|_| "***"),
            )
            .field("telegram_api_url", &redact_url(&self.telegram_api_url))
            .field("reminder_hours_before", &self.reminder_hours_before)
            .finish()
    }
}

/// Where the schedules are.
#[derive(Debug, Clone, Args)]
pub struct ScheduleSettings {
    /// The schedules file (see the comments in the shipped schedules.toml).
    #[arg(
        long = "schedules",
        env = "SCHEDULES_FILE",
        default_value = "schedules.toml"
    )]
    pub schedules_file: PathBuf,
}

/// How the long-running process serves and stops: the HTTP server, the shutdown grace, the
/// ready file. Shared by `worker run` and `worker scheduler`.
#[derive(Debug, Clone, Args)]
pub struct ServiceSettings {
    /// Seconds running tasks get to finish after SIGTERM before they are handed back to the queue.
    #[arg(long, env = "WORKER_SHUTDOWN_GRACE", default_value_t = 30)]
    pub shutdown_grace: u64,

    /// Address of the HTTP server (/healthz, /readyz, /metrics, /results/{id}, /schedules).
    #[arg(long, env = "WORKER_HTTP_ADDR", default_value = "0.0.0.0:8080")]
    pub http_addr: SocketAddr,

    /// Do not start the HTTP server.
    #[arg(long, env = "WORKER_NO_HTTP")]
    pub no_http: bool,

    #[command(flatten)]
    pub http: HttpSettings,

    /// Once the process works (consuming, or the scheduler running), write this JSON file:
    /// `{"pid", "http_addr", "queues", "hostname"}`. For supervisors and tests that need to know
    /// when the worker is up and where its HTTP server listens (with port 0).
    #[arg(long, env = "WORKER_READY_FILE")]
    pub ready_file: Option<PathBuf>,
}

impl ServiceSettings {
    pub fn shutdown_grace(&self) -> Duration {
        Duration::from_secs(self.shutdown_grace)
    }
}

/// Who may use the HTTP server and how much of it one client can hold.
#[derive(Clone, Args)]
pub struct HttpSettings {
    /// Token for every path except /healthz, /readyz and /metrics: `Authorization: Bearer
    /// <token>`, or HTTP basic auth with the token as password (any user name). Unset or
    /// empty: no authentication.
    #[arg(long, env = "WORKER_HTTP_TOKEN", hide_env_values = true)]
    pub http_token: Option<String>,

    /// Require the token for /metrics too (give it to the Prometheus scrape job).
    #[arg(long, env = "WORKER_HTTP_METRICS_AUTH", default_value_t = false, action = clap::ArgAction::Set)]
    pub http_metrics_auth: bool,

    /// Seconds a request may take: to send its headers (a kept-alive connection may stay idle
    /// as long) and to be answered.
    #[arg(long, env = "WORKER_HTTP_TIMEOUT", default_value_t = 10, value_parser = clap::value_parser!(u64).range(1..=3600))]
    pub http_timeout: u64,

    /// Connections served at once; more wait in the listen backlog until one ends.
    #[arg(long, env = "WORKER_HTTP_MAX_CONNECTIONS", default_value_t = 256, value_parser = clap::value_parser!(u32).range(1..=65536))]
    pub http_max_connections: u32,
}

impl HttpSettings {
    /// The token, when one is set and not blank.
    pub fn token(&self) -> Option<&str> {
        self.http_token
            .as_deref()
            .map(str::trim)
            .filter(|t| !t.is_empty())
    }

    pub fn timeout(&self) -> Duration {
        Duration::from_secs(self.http_timeout)
    }
}

// By hand: a derived Debug would print the token.
impl fmt::Debug for HttpSettings {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HttpSettings")
            .field("http_token", &self.token().map(|_| "***"))
            .field("http_metrics_auth", &self.http_metrics_auth)
            .field("http_timeout", &self.http_timeout)
            .field("http_max_connections", &self.http_max_connections)
            .finish()
    }
}

/// This machine's name, for `origin` headers and the default worker name.
pub fn hostname() -> String {
    std::env::var("HOSTNAME")
        .ok()
        .filter(|h| !h.is_empty())
        .or_else(|| {
            std::fs::read_to_string("/etc/hostname")
                .ok()
                .map(|s| s.trim().to_owned())
        })
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "localhost".into())
}

fn parse_tz(s: &str) -> Result<Tz, String> {
    s.parse::<Tz>()
        .map_err(|_| format!("unknown timezone {s:?}; use an IANA name such as Europe/Moscow"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn applies_redis_db_when_url_has_none() {
        let mut s = ConnectionSettings {
            rabbitmq_url: String::new(),
            redis_url: "redis://127.0.0.1:6379".into(),
            redis_db: 2,
            redis_master_name: None,
            redis_ca_file: None,
            redis_cert_file: None,
            redis_key_file: None,
            rabbitmq_ca_file: None,
            rabbitmq_cert_file: None,
            rabbitmq_key_file: None,
            database_url: "postgresql+asyncpg://u:p@h/db".into(),
            default_timezone: chrono_tz::Europe::Moscow,
            result_expires: 3600,
            result_key_prefix: String::new(),
            key_prefix: "worker:".into(),
            control_exchange: "celery".into(),
            queue_type: QueueType::Classic,
        };
        assert_eq!(s.redis_url_with_db(), "redis://127.0.0.1:6379/2");
        s.redis_url = "redis://127.0.0.1:6379/5".into();
        assert_eq!(s.redis_url_with_db(), "redis://127.0.0.1:6379/5");
        assert_eq!(s.database_url_for_sqlx(), "postgresql://u:p@h/db");
    }

    #[test]
    fn debug_prints_no_secret() {
        let conn = ConnectionSettings {
            rabbitmq_url: "amqp://u:Zq7u/Kx9?Mw#Tp@Rv:%2Fw@h:5672/%2f".into(),
            redis_url: "redis://:redis-pw-4242@h:6379".into(),
            redis_db: 0,
            redis_master_name: None,
            redis_ca_file: None,
            redis_cert_file: None,
            redis_key_file: None,
            rabbitmq_ca_file: None,
            rabbitmq_cert_file: None,
            rabbitmq_key_file: None,
            database_url: "postgresql://p@h/db?password=pg-pw-4242".into(),
            default_timezone: chrono_tz::Europe::Moscow,
            result_expires: 3600,
            result_key_prefix: String::new(),
            key_prefix: "worker:".into(),
            control_exchange: "celery".into(),
            queue_type: QueueType::Classic,
        };
        let jobs = JobSettings {
            telegram_bot_token: Some("123:tg-token-4242".into()),
            telegram_api_url: "https://proxy-user:proxy-pw-4242@proxy".into(),
            reminder_hours_before: 2,
        };
        let text = format!("{conn:?} {jobs:?} {conn:#?} {jobs:#?}");
        for secret in [
            "Kx9", "Mw#", "Rv:", "redis-pw", "pg-pw", "tg-token", "proxy-pw",
        ] {
            assert!(!text.contains(secret), "{secret} in {text}");
        }
        assert!(text.contains("amqp://u:***@h:5672/%2f"), "{text}");
    }
}
