//! Three scheduler replicas, real Redis and RabbitMQ, a 1-second schedule, 100 ticks: exactly
//! 100 messages, one per tick, none missing, none doubled — including while one replica is
//! stopped and restarted in the middle.

mod harness;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, TimeDelta, Utc};
use chrono_tz::Tz;
use harness::scheduler::*;
use harness::unique;
use tokio_util::sync::CancellationToken;
use worker::scheduler::{SchedulerSettings, run};

const TICKS: i64 = 100;

async fn start_replica(
    settings: SchedulerSettings,
) -> (CancellationToken, tokio::task::JoinHandle<()>) {
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
    (stop, handle)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_replicas_publish_each_of_100_ticks_exactly_once() {
    let _ = captured_logs();
    let prefix = format!("{}:", unique("replicas"));
    let queue = unique("replicas-q");
    declare_queue(&queue).await;
    let file = TempFile::new(&format!(
        r#"
[[schedule]]
name = "heartbeat"
task = "tests.heartbeat"
queue = "{queue}"
every = "1s"
args = [1, 2]
kwargs = {{ source = "replicas" }}
"#
    ));
    let mut settings = SchedulerSettings::new(&file.path, Tz::Europe__Moscow, HashMap::new());
    settings.key_prefix = prefix.clone();

    let mut replicas = Vec::new();
    for _ in 0..3 {
        replicas.push(start_replica(settings.clone()).await);
    }

    // The first tick any replica publishes starts the count.
    let first = wait_for_tick(&prefix, "heartbeat", None, Duration::from_secs(5))
        .await
        .expect("no tick published within 5 s");
    let last = first + TimeDelta::seconds(TICKS - 1);

    // Stop replica 0 a third of the way in and bring it back later: a replica that goes away
    // costs no tick, and one that comes back does not repeat any.
    let third = first + TimeDelta::seconds(TICKS / 3);
    wait_for_tick(&prefix, "heartbeat", Some(third), Duration::from_secs(60))
        .await
        .expect("a third of the ticks published");
    let (stop0, handle0) = replicas.remove(0);
    stop0.cancel();
    handle0.await.expect("replica 0 stops cleanly");
    tokio::time::sleep(Duration::from_secs(10)).await;
    replicas.push(start_replica(settings.clone()).await);

    // Stop everything right after the 100th tick is recorded, well before the 101st.
    wait_for_tick(&prefix, "heartbeat", Some(last), Duration::from_secs(120))
        .await
        .expect("the 100th tick was not published in time");
    for (stop, _) in &replicas {
        stop.cancel();
    }
    for (_, handle) in replicas {
        handle.await.expect("replica stops cleanly");
    }

    let messages = drain_ticks(&queue).await;
    let mut per_tick: BTreeMap<DateTime<Utc>, usize> = BTreeMap::new();
    for message in &messages {
        *per_tick.entry(message.tick).or_default() += 1;
        assert_eq!(message.schedule, "heartbeat");
        assert_eq!(message.task, "tests.heartbeat");
        assert_eq!(message.args, serde_json::json!([1, 2]));
        assert_eq!(message.kwargs, serde_json::json!({"source": "replicas"}));
    }
    let doubled: Vec<_> = per_tick.iter().filter(|(_, n)| **n > 1).collect();
    assert!(
        doubled.is_empty(),
        "ticks published more than once: {doubled:?}"
    );
    let expected: Vec<DateTime<Utc>> = (0..TICKS).map(|i| first + TimeDelta::seconds(i)).collect();
    let got: Vec<DateTime<Utc>> = per_tick.keys().copied().collect();
    let missing: Vec<_> = expected
        .iter()
        .filter(|t| !per_tick.contains_key(t))
        .collect();
    assert!(missing.is_empty(), "ticks never published: {missing:?}");
    assert_eq!(got, expected, "exactly the 100 ticks, no extra");
    assert_eq!(messages.len(), TICKS as usize);
    let ids: HashSet<&str> = messages.iter().map(|m| m.task_id.as_str()).collect();
    assert_eq!(
        ids.len(),
        TICKS as usize,
        "every message has its own task id"
    );

    // The state hash points at the last message.
    let state = state(&prefix, "heartbeat").await;
    let last_message = messages
        .iter()
        .find(|m| m.tick == last)
        .expect("last tick message");
    assert_eq!(state.get("task_id"), Some(&last_message.task_id));

    remove_queue(&queue).await;
    clean_redis(&prefix).await;
}
