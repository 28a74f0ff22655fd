//! Delivery guarantees that need no service outage: eta and countdown (in memory and through
//! RabbitMQ's delay topology; tests/delayed_delivery.rs has the faults), expiry, retries, time
//! limits, graceful shutdown.

mod harness;

use std::process::Command;
use std::time::{Duration, Instant};

use chrono::Utc;
use futures::StreamExt;
use harness::*;
use redis::AsyncCommands;
use serde_json::{Map, Value, json};
use worker::wire::OutgoingTask;

async fn send(queue: &str, task: &OutgoingTask) {
    let (_conn, channel) = amqp().await;
    publish_task(&channel, queue, task).await;
}

fn task(name: &str, args: Value) -> OutgoingTask {
    OutgoingTask::new(
        name,
        args.as_array().cloned().unwrap_or_default(),
        Map::new(),
    )
}

fn unacked(queue: &str) -> (u64, u64) {
    let out = Command::new("rabbitmqctl")
        .args([
            "-q",
            "list_queues",
            "name",
            "messages_ready",
            "messages_unacknowledged",
        ])
        .output()
        .expect("rabbitmqctl");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    text.lines()
        .find_map(|l| {
            let cols: Vec<&str> = l.split_whitespace().collect();
            (cols.first() == Some(&queue))
                .then(|| (cols[1].parse().unwrap_or(0), cols[2].parse().unwrap_or(0)))
        })
        .unwrap_or_else(|| panic!("queue {queue} not listed:\n{text}"))
}

async fn zcard(key: &str) -> u64 {
    redis().await.zcard(key).await.unwrap()
}

/// `(ready, unacked)` of `queue` once both are 0, or as last seen after 1.5 s: acks are
/// batched, so a log line can come a moment before its ack reaches RabbitMQ.
async fn settled_counts(queue: &str) -> (u64, u64) {
    let mut counts = (u64::MAX, u64::MAX);
    for _ in 0..15 {
        let q = queue.to_owned();
        counts = tokio::task::spawn_blocking(move || unacked(&q))
            .await
            .unwrap();
        if counts == (0, 0) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    counts
}

/// Messages ready in `queue` (0 when it does not exist).
async fn ready(queue: &str) -> u32 {
    let (_c, channel) = amqp().await;
    message_count(&channel, queue).await
}

#[tokio::test(flavor = "multi_thread")]
async fn countdown_through_the_delay_topology_runs_on_time() {
    let queue = unique("eta");
    let prefix = format!("{queue}:");
    let env = [("WORKER_KEY_PREFIX", prefix.as_str())];
    let worker = WorkerProcess::start(std::slice::from_ref(&queue), &env);
    let mut t = task("worker.ping", json!([]));
    let sent = Utc::now();
    t.eta = Some(sent + chrono::Duration::seconds(3));
    send(&queue, &t).await;
    // Parked in RabbitMQ's delay topology: acked, neither held nor in Redis.
    worker.wait_for_log("parked in the delay topology", Duration::from_secs(5));
    let counts = settled_counts(&queue).await;
    assert_eq!(counts, (0, 0), "(ready, unacked) while waiting for the eta");
    assert_eq!(zcard(&format!("{prefix}delayed")).await, 0);
    let r = wait_result(&t.id, Some("SUCCESS"), Duration::from_secs(10))
        .await
        .expect("SUCCESS");
    let done = worker::wire::parse_time(r["date_done"].as_str().unwrap()).unwrap();
    let after = (done - sent).num_milliseconds();
    assert!(
        (3000..4000).contains(&after),
        "ran {after} ms after sending"
    );
    let (_c, channel) = amqp().await;
    delete_queue(&channel, &queue).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn long_countdown_survives_restarts_and_is_not_held_unacked() {
    let queue = unique("eta-long");
    let first = WorkerProcess::start(std::slice::from_ref(&queue), &[]);
    let mut two_hours = task("worker.ping", json!([]));
    two_hours.eta = Some(Utc::now() + chrono::Duration::hours(2));
    send(&queue, &two_hours).await;
    let mut soon = task("worker.ping", json!([]));
    let sent = Utc::now();
    soon.eta = Some(sent + chrono::Duration::seconds(5));
    send(&queue, &soon).await;

    first.wait_for_log_count("parked in the delay topology", 2, Duration::from_secs(5));
    let counts = settled_counts(&queue).await;
    assert_eq!(
        counts,
        (0, 0),
        "(ready, unacked) while waiting for the etas"
    );
    // 2 h = 7200 s: its highest bit is 2^12, so it waits in level 12 (shared with other tests).
    assert!(ready("celery_delayed_12").await >= 1);

    // Kill the worker while both wait; a new one runs the 5 s task on time.
    drop(first);
    let second = WorkerProcess::start(std::slice::from_ref(&queue), &[]);
    let r = wait_result(&soon.id, Some("SUCCESS"), Duration::from_secs(15))
        .await
        .expect("SUCCESS");
    let done = worker::wire::parse_time(r["date_done"].as_str().unwrap()).unwrap();
    assert!((done - sent).num_milliseconds() >= 5000, "ran early: {r}");
    assert_eq!(
        wait_result(&two_hours.id, None, Duration::from_millis(10)).await,
        None,
        "the 2 h task still waits:\n{}",
        second.logs()
    );

    // Deleting the queue removes its binding: the 2 h copy is dropped when it comes back.
    let (_c, channel) = amqp().await;
    delete_queue(&channel, &queue).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn expired_task_is_revoked_and_not_run() {
    let queue = unique("expires");
    // `task started` is a debug line.
    let worker = WorkerProcess::start(
        std::slice::from_ref(&queue),
        &[("RUST_LOG", "info,worker=debug")],
    );
    let mut t = task("worker.echo", json!(["never"]));
    t.expires = Some(Utc::now() - chrono::Duration::seconds(1));
    let (_conn, channel) = amqp().await;
    // An expiry already passed gets no AMQP TTL, so the broker delivers it and the worker decides.
    let message = task_message(&queue, &t);
    assert_eq!(message.properties.expiration, None);
    publish_raw(&channel, &queue, &message.body, message.amqp_properties()).await;
    let r = wait_result(&t.id, Some("REVOKED"), Duration::from_secs(10))
        .await
        .expect("REVOKED");
    assert_eq!(
        r["result"],
        json!({"exc_type": "TaskRevokedError", "exc_message": ["expired"], "exc_module": "celery.exceptions"})
    );
    let logs = worker.wait_for_log_count("task expired before it ran", 1, Duration::from_secs(5));
    assert!(!logs.contains("task started"), "{logs}");
    assert_eq!(message_count(&channel, &queue).await, 0);
    delete_queue(&channel, &queue).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn retries_republish_the_same_id_then_fail() {
    let queue = unique("retry");
    let worker = WorkerProcess::start(std::slice::from_ref(&queue), &[]);
    let mut t = task("worker.fail", json!(["try again"]));
    t.kwargs.insert("retry_countdown".into(), json!(0.3));
    let client = redis::Client::open(REDIS_URL).unwrap();
    let mut pubsub = client.get_async_pubsub().await.unwrap();
    pubsub
        .subscribe(format!("celery-task-meta-{}", t.id))
        .await
        .unwrap();
    let mut published = pubsub.into_on_message();
    send(&queue, &t).await;

    let mut states = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(30);
    while Instant::now() < deadline {
        let Ok(Some(msg)) = tokio::time::timeout(Duration::from_secs(10), published.next()).await
        else {
            break;
        };
        let doc: Value = serde_json::from_str(&msg.get_payload::<String>().unwrap()).unwrap();
        let status = doc["status"].as_str().unwrap().to_owned();
        states.push((status.clone(), doc["retries"].as_u64()));
        if status == "FAILURE" {
            assert_eq!(doc["result"]["exc_type"], "ValueError");
            break;
        }
    }
    let statuses: Vec<&str> = states
        .iter()
        .map(|(s, _)| s.as_str())
        .filter(|s| *s != "STARTED")
        .collect();
    assert_eq!(
        statuses,
        ["RETRY", "RETRY", "RETRY", "FAILURE"],
        "{states:?}\n{}",
        worker.logs()
    );
    assert_eq!(
        states.last().unwrap().1,
        Some(3),
        "the final run is retry number 3"
    );
    let logs = worker.wait_for_log_count("task will be retried", 3, Duration::from_secs(5));
    assert_eq!(logs.matches("task will be retried").count(), 3, "{logs}");
    let (_c, channel) = amqp().await;
    delete_queue(&channel, &queue).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn time_limits_from_the_header_and_the_worker_stays_healthy() {
    let queue = unique("limits");
    let worker = WorkerProcess::start(std::slice::from_ref(&queue), &[]);
    let mut soft = task("worker.sleep", json!([30]));
    soft.extra_headers
        .insert("timelimit".into(), json!([10, 1]));
    // Only a hard limit: the job is stopped there (TimeLimitExceeded), not cancelled earlier.
    let mut hard = task("worker.sleep", json!([4]));
    hard.extra_headers
        .insert("timelimit".into(), json!([1.5, null]));
    let started = Instant::now();
    send(&queue, &soft).await;
    send(&queue, &hard).await;

    let r = wait_result(&soft.id, Some("FAILURE"), Duration::from_secs(10))
        .await
        .expect("soft limit FAILURE");
    assert_eq!(
        (
            r["result"]["exc_module"].as_str(),
            r["result"]["exc_type"].as_str()
        ),
        (Some("billiard.exceptions"), Some("SoftTimeLimitExceeded"))
    );
    let r = wait_result(&hard.id, Some("FAILURE"), Duration::from_secs(10))
        .await
        .expect("hard limit FAILURE");
    assert_eq!(r["result"]["exc_type"], "TimeLimitExceeded", "{r}");
    assert!(
        started.elapsed() < Duration::from_secs(4),
        "limits applied late: {:?}",
        started.elapsed()
    );

    let ping = task("worker.ping", json!([]));
    send(&queue, &ping).await;
    assert!(
        wait_result(&ping.id, Some("SUCCESS"), Duration::from_secs(10))
            .await
            .is_some(),
        "{}",
        worker.logs()
    );
    let (_c, channel) = amqp().await;
    delete_queue(&channel, &queue).await;
}

fn sigterm(worker: &WorkerProcess) {
    let status = Command::new("kill")
        .args(["-TERM", &worker.child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
}

fn wait_exit(worker: &mut WorkerProcess, timeout: Duration) -> Option<i32> {
    let start = Instant::now();
    while start.elapsed() < timeout {
        if let Ok(Some(status)) = worker.child.try_wait() {
            return status.code();
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    None
}

#[tokio::test(flavor = "multi_thread")]
async fn sigterm_lets_a_running_task_finish_then_exits_zero() {
    let queue = unique("term");
    let mut worker = WorkerProcess::start(
        std::slice::from_ref(&queue),
        &[("WORKER_SHUTDOWN_GRACE", "30")],
    );
    let t = task("worker.sleep", json!([2]));
    send(&queue, &t).await;
    wait_result(&t.id, Some("STARTED"), Duration::from_secs(10))
        .await
        .expect("STARTED");
    sigterm(&worker);
    let code = tokio::task::spawn_blocking(move || {
        let code = wait_exit(&mut worker, Duration::from_secs(15));
        (code, worker.logs())
    })
    .await
    .unwrap();
    assert_eq!(code.0, Some(0), "{}", code.1);
    // A clean shutdown logs no error (lapin used to complain about the channel it was closing),
    // and the last line, written just before exit, is in the log.
    assert!(!code.1.contains(" ERROR "), "{}", code.1);
    assert!(code.1.contains("worker stopped"), "{}", code.1);
    let r = wait_result(&t.id, Some("SUCCESS"), Duration::from_secs(1))
        .await
        .expect("finished before exit");
    assert_eq!(r["status"], "SUCCESS");
    let (_c, channel) = amqp().await;
    assert_eq!(message_count(&channel, &queue).await, 0);
    delete_queue(&channel, &queue).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn sigterm_past_the_grace_hands_the_task_to_another_worker() {
    let queue = unique("term-grace");
    let mut first = WorkerProcess::start(
        std::slice::from_ref(&queue),
        &[
            ("WORKER_SHUTDOWN_GRACE", "1"),
            ("WORKER_HOSTNAME", "first@test"),
        ],
    );
    let t = task("worker.sleep", json!([4]));
    send(&queue, &t).await;
    wait_result(&t.id, Some("STARTED"), Duration::from_secs(10))
        .await
        .expect("STARTED");
    sigterm(&first);
    let (code, logs) = tokio::task::spawn_blocking(move || {
        let code = wait_exit(&mut first, Duration::from_secs(10));
        (code, first.logs())
    })
    .await
    .unwrap();
    assert_eq!(code, Some(0), "{logs}");
    let second = WorkerProcess::start(
        std::slice::from_ref(&queue),
        &[("WORKER_HOSTNAME", "second@test")],
    );
    let r = wait_result(&t.id, Some("SUCCESS"), Duration::from_secs(15))
        .await
        .expect("completed elsewhere");
    assert_eq!(r["worker"], "second@test", "{r}\n{}", second.logs());
    let (_c, channel) = amqp().await;
    delete_queue(&channel, &queue).await;
}

/// The sum of a metric's samples in Prometheus text (all label sets).
fn metric_sum(metrics: &str, name: &str) -> f64 {
    metrics
        .lines()
        .filter(|l| l.starts_with(name) && l[name.len()..].starts_with([' ', '{']))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

async fn all_succeed(ids: &[String]) {
    for id in ids {
        wait_result(id, Some("SUCCESS"), Duration::from_secs(60))
            .await
            .expect("task done");
    }
}

/// (ready, unacked) of `queue` once it equals `expected`, or after 2 s.
async fn wait_unacked(queue: &str, expected: (u64, u64)) -> (u64, u64) {
    let deadline = Instant::now() + Duration::from_secs(2);
    loop {
        let now = unacked(queue);
        if now == expected || Instant::now() > deadline {
            return now;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn publish_pings(queue: &str, n: usize) -> Vec<String> {
    let (_conn, channel) = amqp().await;
    let mut ids = Vec::with_capacity(n);
    for _ in 0..n {
        let t = task("worker.ping", json!([]));
        publish_task(&channel, queue, &t).await;
        ids.push(t.id);
    }
    ids
}

/// Acks are batched per channel (broker::settle): draining a backlog, one frame acks many
/// deliveries; a long task holding the oldest delivery does not hold back the acks of the quick
/// tasks behind it, and is not acked while it runs; every message is acked exactly once (a second
/// ack of a tag would make RabbitMQ close the channel and redeliver).
#[tokio::test(flavor = "multi_thread")]
async fn acks_are_batched_and_never_cover_a_running_task() {
    let queue = unique("acks");
    let (_c, channel) = amqp().await;
    worker::topology::declare_with_dead_letter(&channel, &queue)
        .await
        .expect("declare");
    let backlog = publish_pings(&queue, 1000).await;
    let worker = WorkerProcess::start(std::slice::from_ref(&queue), &[("WORKER_CONCURRENCY", "8")]);
    let metrics_url = format!("http://{}/metrics", worker.http_addr());
    let scrape = async || {
        let text = reqwest::get(&metrics_url)
            .await
            .expect("metrics")
            .text()
            .await
            .expect("body");
        (
            metric_sum(&text, "worker_messages_acked_total"),
            metric_sum(&text, "worker_ack_frames_total"),
        )
    };
    all_succeed(&backlog).await;
    assert_eq!(wait_unacked(&queue, (0, 0)).await, (0, 0), "backlog acked");
    let (acked, frames) = scrape().await;
    eprintln!("backlog: {frames} ack frames for {acked} messages");
    assert_eq!(acked, 1000.0, "each message acked once");
    assert!(
        frames < acked * 0.8,
        "{frames} ack frames for {acked} messages: not batched"
    );

    let long = task("worker.sleep", json!([4]));
    send(&queue, &long).await;
    wait_result(&long.id, Some("STARTED"), Duration::from_secs(10))
        .await
        .expect("STARTED");
    let quick = publish_pings(&queue, 200).await;
    all_succeed(&quick).await;
    assert_eq!(
        wait_unacked(&queue, (0, 1)).await,
        (0, 1),
        "the quick tasks are acked, the running one is not"
    );
    let long_state = wait_result(&long.id, None, Duration::from_millis(10)).await;
    assert_eq!(
        long_state.as_ref().map(|r| r["status"].clone()),
        Some(json!("STARTED")),
        "the quick ones were acked while the oldest delivery was still running"
    );
    wait_result(&long.id, Some("SUCCESS"), Duration::from_secs(10))
        .await
        .expect("long task done");
    assert_eq!(
        wait_unacked(&queue, (0, 0)).await,
        (0, 0),
        "everything acked"
    );
    assert_eq!(scrape().await.0, 1201.0, "each message acked once");

    let logs = worker.wait_for_log_count("task finished", 1201, Duration::from_secs(5));
    assert_eq!(
        logs.matches("task finished").count(),
        1201,
        "no message ran twice"
    );
    assert!(!logs.contains("could not ack"), "{logs}");
    delete_queue(&channel, &queue).await;
}
