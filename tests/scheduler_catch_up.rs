//! Missed ticks across a stopped scheduler, against real Redis and RabbitMQ.
//!
//! A scheduler on a 6-second schedule publishes a tick and is stopped; the next tick passes
//! while nothing runs; on restart `catch_up = "latest"` publishes that missed tick once and
//! `"skip"` publishes nothing. A first start with no history never fires old ticks; a claim left
//! behind by a replica that died mid-publish is taken over once its lease runs out; a failing
//! broker delays a tick but does not lose or double it.

mod harness;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::{DateTime, TimeDelta, Utc};
use chrono_tz::Tz;
use harness::scheduler::*;
use harness::{redis, unique};
use tokio_util::sync::CancellationToken;
use worker::scheduler::{SchedulerSettings, TickPublisher, run};

struct Running {
    stop: CancellationToken,
    handle: tokio::task::JoinHandle<()>,
}

impl Running {
    async fn start(settings: SchedulerSettings, publisher: Arc<dyn TickPublisher>) -> Self {
        let redis = harness::results::worker_redis().await;
        let stop = CancellationToken::new();
        let handle = tokio::spawn({
            let stop = stop.clone();
            async move {
                run(settings, redis, publisher, stop)
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

fn file_for(queue: &str, timing: &str, catch_up: &str) -> String {
    format!(
        r#"
[[schedule]]
name = "job"
task = "tests.job"
queue = "{queue}"
{timing}
catch_up = "{catch_up}"
catch_up_window = "1h"
"#
    )
}

async fn sleep_until(at: DateTime<Utc>) {
    if let Ok(wait) = (at - Utc::now()).to_std() {
        tokio::time::sleep(wait).await;
    }
}

/// Runs, stops across one tick, restarts; returns the ticks published, in order.
async fn stopped_across_a_tick(catch_up: &str) -> (Vec<DateTime<Utc>>, DateTime<Utc>) {
    let _ = captured_logs();
    let prefix = format!("{}:", unique("catchup"));
    let queue = unique("catchup-q");
    declare_queue(&queue).await;
    let file = TempFile::new(&file_for(&queue, "every = \"6s\"", catch_up));
    let mut settings = SchedulerSettings::new(&file.path, Tz::Europe__Moscow, HashMap::new());
    settings.key_prefix = prefix.clone();

    let scheduler =
        Running::start(settings.clone(), Arc::new(AmqpPublisher::connect().await)).await;
    let first = wait_for_tick(&prefix, "job", None, Duration::from_secs(10))
        .await
        .expect("a first tick is published");
    scheduler.stop().await;
    assert!(
        Utc::now() < first + TimeDelta::seconds(5),
        "stopped before the next tick"
    );

    // The next tick (first + 6 s) passes with no scheduler running; restart 3.5 s after it,
    // past its 3-second grace, well before the one after (first + 12 s).
    let missed = first + TimeDelta::seconds(6);
    sleep_until(missed + TimeDelta::milliseconds(3500)).await;
    let scheduler = Running::start(settings, Arc::new(AmqpPublisher::connect().await)).await;
    sleep_until(first + TimeDelta::milliseconds(11_000)).await;
    scheduler.stop().await;
    assert!(
        Utc::now() < first + TimeDelta::seconds(12),
        "stopped before the third tick"
    );

    let ticks = drain_ticks(&queue)
        .await
        .into_iter()
        .map(|m| m.tick)
        .collect();
    remove_queue(&queue).await;
    clean_redis(&prefix).await;
    (ticks, first)
}

#[tokio::test]
async fn latest_publishes_the_missed_tick_once_on_restart() {
    let (ticks, first) = stopped_across_a_tick("latest").await;
    assert_eq!(ticks, vec![first, first + TimeDelta::seconds(6)]);
}

#[tokio::test]
async fn skip_publishes_no_missed_tick_on_restart() {
    let (ticks, first) = stopped_across_a_tick("skip").await;
    assert_eq!(ticks, vec![first]);
}

/// The hourly tick that is due now, and a setup whose history says the one before it ran.
async fn hourly_setup(label: &str) -> (String, String, TempFile, SchedulerSettings, DateTime<Utc>) {
    let _ = captured_logs();
    let prefix = format!("{}:", unique(label));
    let queue = unique(label);
    declare_queue(&queue).await;
    let file = TempFile::new(&file_for(&queue, "every = \"1h\"", "latest"));
    let mut settings = SchedulerSettings::new(&file.path, Tz::Europe__Moscow, HashMap::new());
    settings.key_prefix = prefix.clone();
    // Keep clear of the hour boundaries: a new hourly tick arriving mid-test would be published
    // on time and muddle the count, and within a minute after the hour the due tick is on time.
    let into_hour = Utc::now().timestamp().rem_euclid(3600);
    if into_hour < 65 {
        tokio::time::sleep(Duration::from_secs((65 - into_hour) as u64)).await;
    } else if into_hour > 3600 - 20 {
        tokio::time::sleep(Duration::from_secs((3600 - into_hour + 65) as u64)).await;
    }
    let now = Utc::now().timestamp();
    let due = DateTime::from_timestamp(now - now.rem_euclid(3600), 0).expect("valid time");
    (prefix, queue, file, settings, due)
}

#[tokio::test]
async fn first_start_without_history_fires_no_old_tick() {
    let (prefix, queue, _file, settings, _due) = hourly_setup("nohistory").await;
    let scheduler = Running::start(settings, Arc::new(AmqpPublisher::connect().await)).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    scheduler.stop().await;
    assert!(drain_ticks(&queue).await.is_empty(), "no retroactive tick");
    assert_eq!(last_tick(&prefix, "job").await, None);
    remove_queue(&queue).await;
    clean_redis(&prefix).await;
}

#[tokio::test]
async fn a_claim_left_by_a_dead_replica_is_taken_over_after_its_lease() {
    let (prefix, queue, _file, settings, due) = hourly_setup("takeover").await;
    seed_last_tick(&prefix, "job", due - TimeDelta::hours(1)).await;
    // A replica claimed the due tick and died before publishing: its claim has 3 s to live.
    let mut conn = redis().await;
    let claim_key = format!("{prefix}schedule:job:tick:{}", due.timestamp());
    let _: () = redis::cmd("SET")
        .arg(&claim_key)
        .arg("claimed:dead-replica")
        .arg("PX")
        .arg(3000)
        .query_async(&mut conn)
        .await
        .expect("SET");

    let started = Utc::now();
    let replicas = [
        Running::start(settings.clone(), Arc::new(AmqpPublisher::connect().await)).await,
        Running::start(settings, Arc::new(AmqpPublisher::connect().await)).await,
    ];
    let tick = wait_for_tick(&prefix, "job", Some(due), Duration::from_secs(10))
        .await
        .expect("the tick is published after the dead claim expires");
    assert_eq!(tick, due);
    let published_at = state(&prefix, "job").await["published_at"].clone();
    let published_at = DateTime::parse_from_rfc3339(&published_at).expect("time");
    assert!(
        published_at >= started + TimeDelta::milliseconds(2500),
        "not published while the dead replica's claim was live"
    );
    tokio::time::sleep(Duration::from_secs(2)).await;
    for replica in replicas {
        replica.stop().await;
    }
    let messages = drain_ticks(&queue).await;
    assert_eq!(messages.len(), 1, "{messages:?}");
    assert_eq!(messages[0].tick, due);
    remove_queue(&queue).await;
    clean_redis(&prefix).await;
}

#[tokio::test]
async fn a_failed_publish_releases_the_claim_and_the_tick_is_retried_once() {
    let (prefix, queue, _file, settings, due) = hourly_setup("flaky").await;
    seed_last_tick(&prefix, "job", due - TimeDelta::hours(1)).await;
    // The first three publishes fail, whichever replica makes them.
    let failures = Arc::new(Mutex::new(3));
    let mut replicas = Vec::new();
    for _ in 0..2 {
        let publisher = FlakyPublisher {
            inner: AmqpPublisher::connect().await,
            remaining_failures: Arc::clone(&failures),
        };
        replicas.push(Running::start(settings.clone(), Arc::new(publisher)).await);
    }
    let tick = wait_for_tick(&prefix, "job", Some(due), Duration::from_secs(15))
        .await
        .expect("the tick is published once the broker recovers");
    assert_eq!(tick, due);
    assert_eq!(*failures.lock().expect("lock"), 0, "the failures happened");
    tokio::time::sleep(Duration::from_secs(2)).await;
    for replica in replicas {
        replica.stop().await;
    }
    let messages = drain_ticks(&queue).await;
    assert_eq!(messages.len(), 1, "{messages:?}");
    assert_eq!(messages[0].tick, due);
    remove_queue(&queue).await;
    clean_redis(&prefix).await;
}
