//! Hot reload of a schedules file while the scheduler runs, against real Redis and RabbitMQ:
//! a changed cron applies, removed schedules stop, added ones start, an invalid edit is refused
//! (logged with the file, line and problem) while the previous schedules keep running, and
//! SIGHUP reloads at once when file polling is off.

mod harness;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, TimeDelta, Timelike, Utc};
use chrono_tz::Tz;
use harness::scheduler::*;
use harness::unique;
use tokio_util::sync::CancellationToken;
use worker::scheduler::{SchedulerSettings, run};

fn entry(queue: &str, name: &str, timing: &str, version: &str) -> String {
    format!(
        r#"
[[schedule]]
name = "{name}"
task = "tests.{name}"
queue = "{queue}"
{timing}
kwargs = {{ version = "{version}" }}
"#
    )
}

struct Scheduler {
    stop: CancellationToken,
    handle: tokio::task::JoinHandle<()>,
}

async fn start(settings: SchedulerSettings) -> Scheduler {
    let redis = harness::results::worker_redis().await;
    let publisher = Arc::new(AmqpPublisher::connect().await);
    let stop = CancellationToken::new();
    let handle = tokio::spawn({
        let stop = stop.clone();
        async move {
            run(settings, redis, publisher, stop)
                .await
                .expect("scheduler runs");
        }
    });
    Scheduler { stop, handle }
}

/// Messages of `name` whose tick lies in `[from, to)`.
fn ticks_of(seen: &[Seen], name: &str, from: DateTime<Utc>, to: DateTime<Utc>) -> Vec<Seen> {
    seen.iter()
        .filter(|m| m.schedule == name && m.tick >= from && m.tick < to)
        .cloned()
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn edits_apply_live_and_invalid_edits_are_refused() {
    let _ = captured_logs();
    let prefix = format!("{}:", unique("reload"));
    let queue = unique("reload-q");
    declare_queue(&queue).await;
    let original = format!(
        "{}{}",
        entry(&queue, "alpha", r#"cron = "* * * * * *""#, "v1"),
        entry(&queue, "beta", r#"every = "1s""#, "beta"),
    );
    let file = TempFile::new(&original);
    let mut settings = SchedulerSettings::new(&file.path, Tz::Europe__Berlin, HashMap::new());
    settings.key_prefix = prefix.clone();
    let scheduler = start(settings).await;
    let first = wait_for_tick(&prefix, "alpha", None, Duration::from_secs(5))
        .await
        .expect("alpha runs");
    wait_for_tick(
        &prefix,
        "alpha",
        Some(first + TimeDelta::seconds(1)),
        Duration::from_secs(5),
    )
    .await
    .expect("alpha runs every second");
    wait_for_tick(&prefix, "beta", None, Duration::from_secs(5))
        .await
        .expect("beta runs");

    // Edit: alpha moves to even seconds with new kwargs, beta is removed, gamma is added.
    let edited = format!(
        "{}{}",
        entry(&queue, "alpha", r#"cron = "*/2 * * * * *""#, "v2"),
        entry(&queue, "gamma", r#"every = "1s""#, "gamma"),
    );
    let edited_at = Utc::now();
    file.replace(&edited);
    // The file is polled every second; allow two polls for the edit to land.
    let applied = edited_at + TimeDelta::milliseconds(2500);
    tokio::time::sleep(Duration::from_secs(6)).await;

    // An invalid edit (typo `cronn` on line 6) is refused; the edited schedules keep running.
    let invalid = edited.replacen("cron = ", "cronn = ", 1);
    let invalid_at = Utc::now();
    file.replace(&invalid);
    tokio::time::sleep(Duration::from_secs(5)).await;
    let end = Utc::now();

    scheduler.stop.cancel();
    scheduler.handle.await.expect("scheduler stops cleanly");
    let seen = drain_ticks(&queue).await;

    let before = ticks_of(&seen, "alpha", DateTime::UNIX_EPOCH, edited_at);
    assert!(
        before.len() >= 2,
        "alpha ran every second before the edit: {before:?}"
    );
    assert!(before.iter().all(|m| m.kwargs["version"] == "v1"));

    let after = ticks_of(&seen, "alpha", applied, end);
    assert!(
        after.len() >= 4,
        "alpha kept running after the edit: {after:?}"
    );
    for message in &after {
        assert_eq!(
            message.kwargs["version"], "v2",
            "new definition applies: {message:?}"
        );
        assert_eq!(
            message.tick.second() % 2,
            0,
            "new cron applies: {message:?}"
        );
    }
    // Including after the invalid edit: the previous (valid) schedules continue.
    let after_invalid = ticks_of(&seen, "alpha", invalid_at + TimeDelta::seconds(2), end);
    assert!(
        !after_invalid.is_empty(),
        "alpha continues after the invalid edit"
    );
    let gamma_after_invalid = ticks_of(&seen, "gamma", invalid_at + TimeDelta::seconds(2), end);
    assert!(
        gamma_after_invalid.len() >= 2,
        "gamma continues after the invalid edit"
    );

    assert!(
        ticks_of(&seen, "beta", applied, end).is_empty(),
        "removed schedule stopped"
    );
    assert!(
        ticks_of(&seen, "gamma", applied, end).len() >= 8,
        "added schedule started"
    );

    let logs = logs_text();
    let expected = format!("{}: line 6: unknown field `cronn`", file.path.display());
    assert!(
        logs.contains(&expected),
        "refusal logged with file and line; logs:\n{logs}"
    );
    assert!(logs.contains("schedules file rejected, the previous schedules keep running"));

    remove_queue(&queue).await;
    clean_redis(&prefix).await;
}

#[cfg(unix)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_reloads_without_file_polling() {
    let _ = captured_logs();
    let prefix = format!("{}:", unique("sighup"));
    let queue = unique("sighup-q");
    declare_queue(&queue).await;
    let file = TempFile::new(&entry(&queue, "one", r#"every = "1s""#, "v1"));
    let mut settings = SchedulerSettings::new(&file.path, Tz::Europe__Berlin, HashMap::new());
    settings.key_prefix = prefix.clone();
    settings.poll_interval = None;
    let scheduler = start(settings).await;
    wait_for_tick(&prefix, "one", None, Duration::from_secs(5))
        .await
        .expect("one runs");

    file.replace(&entry(&queue, "two", r#"every = "1s""#, "v1"));
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(
        last_tick(&prefix, "two").await,
        None,
        "without polling, the edit waits for SIGHUP"
    );
    let status = std::process::Command::new("kill")
        .arg("-HUP")
        .arg(std::process::id().to_string())
        .status()
        .expect("kill runs");
    assert!(status.success());
    let two = wait_for_tick(&prefix, "two", None, Duration::from_secs(5)).await;
    let hup_at = Utc::now();
    tokio::time::sleep(Duration::from_secs(2)).await;

    scheduler.stop.cancel();
    scheduler.handle.await.expect("scheduler stops cleanly");
    assert!(two.is_some(), "SIGHUP applied the edit");
    let seen = drain_ticks(&queue).await;
    assert!(
        ticks_of(&seen, "one", hup_at, Utc::now()).is_empty(),
        "the removed schedule stopped"
    );
    remove_queue(&queue).await;
    clean_redis(&prefix).await;
}
