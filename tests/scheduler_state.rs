//! Where the scheduler's state lives, shown with the faults it must survive.
//!
//! * Its tick claims and last runs are rows in PostgreSQL, not Redis keys: two `worker
//!   scheduler` processes on an every-second schedule keep publishing each tick exactly once
//!   while their (private) Redis is flushed again and again and even stopped and restarted
//!   empty, as an `allkeys-lru` eviction or a Redis restart without persistence would do.
//! * `on_first_start = "catch_up"`: the first start of a schedule that has never run publishes
//!   the latest tick inside `catch_up_window` once, with two replicas starting together and a
//!   third starting afterwards.
//! * An upgrade from the release that kept the state in Redis imports each last run, so
//!   catch-up knows the history and `on_first_start` does not repeat a tick that already ran.

mod harness;

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, TimeDelta, Timelike, Utc};
use chrono_tz::Tz;
use harness::scheduler::*;
use harness::services::RedisServer;
use harness::{WorkerProcess, amqp, delete_queue, unique};
use tokio_util::sync::CancellationToken;
use worker::scheduler::{SchedulerSettings, run};

struct Replica {
    stop: CancellationToken,
    handle: tokio::task::JoinHandle<()>,
}

impl Replica {
    async fn start(settings: SchedulerSettings) -> Self {
        let postgres = scheduler_pool().await;
        let publisher = Arc::new(AmqpPublisher::connect().await);
        let stop = CancellationToken::new();
        let handle = tokio::spawn({
            let stop = stop.clone();
            async move {
                run(settings, postgres, publisher, stop)
                    .await
                    .expect("scheduler runs");
            }
        });
        Self { stop, handle }
    }

    async fn stop(self) {
        self.stop.cancel();
        self.handle.await.expect("scheduler stops cleanly");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn first_start_inside_the_catch_up_window_fires_once_across_replicas() {
    let _ = captured_logs();
    let prefix = format!("{}:", unique("firststart"));
    let queue = unique("firststart-q");
    declare_queue(&queue).await;
    // A daily tick half an hour ago (UTC): far from its next one, inside a 2 h window, and
    // never run under this prefix — a cut-over just after the schedule's time.
    let due = (Utc::now() - TimeDelta::minutes(30))
        .with_second(0)
        .and_then(|t| t.with_nanosecond(0))
        .expect("valid time");
    let schedule = |name: &str, first_start: &str| {
        format!(
            r#"
[[schedule]]
name = "{name}"
task = "tests.plan"
queue = "{queue}"
cron = "{} {} * * *"
timezone = "UTC"
catch_up_window = "2h"
{first_start}
"#,
            due.minute(),
            due.hour()
        )
    };
    // The same schedule without `on_first_start` shows the default: nothing retroactive.
    let file = TempFile::new(&format!(
        "{}{}",
        schedule("plan", "on_first_start = \"catch_up\""),
        schedule("plain", "")
    ));
    let mut settings = SchedulerSettings::new(&file.path, Tz::UTC, HashMap::new());
    settings.key_prefix = prefix.clone();

    let (a, b) = tokio::join!(
        Replica::start(settings.clone()),
        Replica::start(settings.clone())
    );
    let tick = wait_for_tick(&prefix, "plan", Some(due), Duration::from_secs(10))
        .await
        .expect("the first start publishes the tick inside the window");
    assert_eq!(tick, due);
    // Time for the other replica to try too.
    tokio::time::sleep(Duration::from_secs(3)).await;
    // A replica starting later finds the tick on record and does not fire it again.
    let c = Replica::start(settings.clone()).await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    for replica in [a, b, c] {
        replica.stop().await;
    }

    let messages = drain_ticks(&queue).await;
    let plan: Vec<_> = messages.iter().filter(|m| m.schedule == "plan").collect();
    assert_eq!(plan.len(), 1, "{messages:?}");
    assert_eq!(plan[0].tick, due);
    assert_eq!(
        state(&prefix, "plan").await.get("task_id"),
        Some(&plan[0].task_id)
    );
    assert!(
        messages.iter().all(|m| m.schedule != "plain"),
        "on_first_start defaults to skip: {messages:?}"
    );
    assert_eq!(last_tick(&prefix, "plain").await, None);
    remove_queue(&queue).await;
    clean_redis(&prefix).await;
}

/// How long the two scheduler processes run while their Redis is being wiped.
const RUN_FOR: Duration = Duration::from_secs(16);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ticks_stay_exactly_once_when_redis_loses_every_key() {
    let prefix = format!("{}:", unique("state"));
    let queue = unique("state-q");
    let file = std::env::temp_dir().join(format!("{queue}.toml"));
    std::fs::write(
        &file,
        format!(
            "[[schedule]]\nname = \"beat\"\ntask = \"tests.beat\"\nevery = \"1s\"\nqueue = \"{queue}\"\n"
        ),
    )
    .expect("write schedules");
    let path = file.to_string_lossy().into_owned();
    let (_connection, channel) = amqp().await;
    worker::topology::declare_celery_queue(&channel, &queue)
        .await
        .expect("declare the queue");
    scheduler_pool().await.close().await;

    // A Redis of the test's own, so it can be flushed and restarted.
    let mut redis = RedisServer::start(&[]);
    let env = [
        ("REDIS_URL", redis.url.clone()),
        ("DATABASE_URL", SCHEDULER_DATABASE_URL.to_owned()),
        ("SCHEDULES_FILE", path.clone()),
        ("WORKER_KEY_PREFIX", prefix.clone()),
    ];
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let replicas = [
        WorkerProcess::spawn(&["scheduler"], &env),
        WorkerProcess::spawn(&["scheduler"], &env),
    ];

    // Wipe every key, over and over; half-way, stop Redis and start it again empty.
    let started = tokio::time::Instant::now();
    let mut flushes = 0;
    let mut restarted = false;
    while started.elapsed() < RUN_FOR {
        if !restarted && started.elapsed() >= RUN_FOR / 2 {
            redis.stop();
            tokio::time::sleep(Duration::from_secs(2)).await;
            redis.start_again();
            restarted = true;
            continue;
        }
        let mut conn = redis.connection().await;
        let _: () = redis::cmd("FLUSHALL")
            .query_async(&mut conn)
            .await
            .expect("FLUSHALL");
        flushes += 1;
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let logs: Vec<String> = replicas.iter().map(WorkerProcess::logs).collect();
    let alive = replicas.iter().all(WorkerProcess::is_alive_now);
    drop(replicas);

    let mut per_tick: BTreeMap<DateTime<Utc>, usize> = BTreeMap::new();
    for (headers, _) in harness::drain(&channel, &queue).await {
        let tick = headers
            .get("schedule_tick")
            .and_then(|v| v.as_str())
            .and_then(|text| DateTime::parse_from_rfc3339(text).ok())
            .map(|at| at.with_timezone(&Utc))
            .expect("every tick message names its tick");
        *per_tick.entry(tick).or_default() += 1;
    }
    let doubled: Vec<_> = per_tick.iter().filter(|(_, n)| **n > 1).collect();
    assert!(
        doubled.is_empty(),
        "ticks published more than once: {doubled:?}\n{logs:#?}"
    );
    let (Some(first), Some(last)) = (per_tick.keys().next(), per_tick.keys().last()) else {
        panic!("no tick published\n{logs:#?}");
    };
    let missing: Vec<_> = (0..=(*last - *first).num_seconds())
        .map(|i| *first + TimeDelta::seconds(i))
        .filter(|t| !per_tick.contains_key(t))
        .collect();
    assert!(missing.is_empty(), "ticks lost: {missing:?}\n{logs:#?}");
    assert!(
        per_tick.len() >= 12,
        "only {} ticks in {RUN_FOR:?}\n{logs:#?}",
        per_tick.len()
    );
    assert!(flushes >= 20, "the fault was injected ({flushes} flushes)");
    assert!(alive, "both schedulers ran to the end\n{logs:#?}");

    let _ = std::fs::remove_file(&file);
    clean_redis(&prefix).await;
    delete_queue(&channel, &queue).await;
}

/// Records a last run the way the previous release did: a Redis hash per schedule.
async fn seed_legacy_last_run(prefix: &str, name: &str, tick: DateTime<Utc>, task_id: &str) {
    let mut conn = harness::redis().await;
    let _: i64 = redis::cmd("HSET")
        .arg(format!("{prefix}schedule:{name}"))
        .arg("last_tick")
        .arg(tick.to_rfc3339())
        .arg("last_tick_unix")
        .arg(tick.timestamp())
        .arg("task_id")
        .arg(task_id)
        .arg("published_at")
        .arg(tick.to_rfc3339())
        .arg("task")
        .arg("tests.plan")
        .arg("queue")
        .arg("q")
        .query_async(&mut conn)
        .await
        .expect("HSET");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upgrade_imports_the_last_runs_the_previous_release_kept_in_redis() {
    let prefix = format!("{}:", unique("upgrade"));
    let queue = unique("upgrade-q");
    let due = (Utc::now() - TimeDelta::minutes(30))
        .with_second(0)
        .and_then(|t| t.with_nanosecond(0))
        .expect("valid time");
    // "ran": the previous release already published today's tick; on_first_start must not
    // fire it again. "behind": it last ran yesterday; with that history, today's missed tick is
    // caught up (without it, a first start would skip it).
    let ran_id = uuid::Uuid::new_v4().to_string();
    seed_legacy_last_run(&prefix, "ran", due, &ran_id).await;
    seed_legacy_last_run(
        &prefix,
        "behind",
        due - TimeDelta::days(1),
        &uuid::Uuid::new_v4().to_string(),
    )
    .await;
    let entry = |name: &str, first_start: &str| {
        format!(
            "[[schedule]]\nname = \"{name}\"\ntask = \"tests.plan\"\nqueue = \"{queue}\"\ncron = \"{} {} * * *\"\ntimezone = \"UTC\"\ncatch_up_window = \"2h\"\non_first_start = \"{first_start}\"\n",
            due.minute(),
            due.hour()
        )
    };
    let file = std::env::temp_dir().join(format!("{queue}.toml"));
    std::fs::write(
        &file,
        format!("{}{}", entry("ran", "catch_up"), entry("behind", "skip")),
    )
    .expect("write schedules");
    let path = file.to_string_lossy().into_owned();
    let (_connection, channel) = amqp().await;
    worker::topology::declare_celery_queue(&channel, &queue)
        .await
        .expect("declare the queue");
    scheduler_pool().await.close().await;

    let scheduler = WorkerProcess::spawn(
        &["scheduler"],
        &[
            ("DATABASE_URL", SCHEDULER_DATABASE_URL),
            ("SCHEDULES_FILE", path.as_str()),
            ("WORKER_KEY_PREFIX", prefix.as_str()),
        ],
    );
    let caught_up = wait_for_tick(&prefix, "behind", Some(due), Duration::from_secs(10)).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let logs = scheduler.logs();
    drop(scheduler);

    assert_eq!(caught_up, Some(due), "{logs}");
    assert_eq!(last_tick(&prefix, "ran").await, Some(due), "{logs}");
    assert_eq!(
        state(&prefix, "ran").await.get("task_id"),
        Some(&ran_id),
        "the imported run is the previous release's: {logs}"
    );
    let messages = harness::drain(&channel, &queue).await;
    let schedules: Vec<String> = messages
        .iter()
        .map(|(headers, _)| {
            headers
                .get("schedule")
                .and_then(|v| v.as_str())
                .unwrap_or_default()
                .to_owned()
        })
        .collect();
    assert_eq!(schedules, ["behind"], "{logs}");

    let _ = std::fs::remove_file(&file);
    clean_redis(&prefix).await;
    delete_queue(&channel, &queue).await;
}
