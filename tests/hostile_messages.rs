//! Hostile and buggy input, one test per way a single message (or setting) used to kill, stall
//! or loop the worker. Each runs the real worker against the real RabbitMQ, checks that the bad
//! message is kept (a dead letter or a stored FAILURE) and that the worker still consumes, and
//! that no valid task around it ran twice.

mod harness;

use std::time::Duration;

use harness::*;
use lapin::types::{AMQPValue, FieldArray, LongString};
use serde_json::{Map, Value, json};
use worker::wire::OutgoingTask;

fn task(name: &str, args: Value) -> OutgoingTask {
    OutgoingTask::new(
        name,
        args.as_array().cloned().unwrap_or_default(),
        Map::new(),
    )
}

/// Publish `t` with extra AMQP headers (values of any AMQP type, any depth).
async fn publish_with_headers(
    channel: &lapin::Channel,
    queue: &str,
    t: &OutgoingTask,
    extra: Vec<(&str, AMQPValue)>,
) {
    let mut message = task_message(queue, t);
    for (k, v) in extra {
        message.properties.headers.insert(k.into(), v);
    }
    publish_raw(channel, queue, &message.body, message.amqp_properties()).await;
}

/// Times a task's `task finished` line was logged: how often it ran.
fn runs(worker: &WorkerProcess, id: &str) -> usize {
    worker
        .logs()
        .lines()
        .filter(|l| l.contains(id) && l.contains("task finished"))
        .count()
}

async fn dead_letters(channel: &lapin::Channel, queue: &str) -> Vec<(Map<String, Value>, Vec<u8>)> {
    drain(channel, &format!("{queue}.dead")).await
}

async fn assert_succeeds(worker: &WorkerProcess, t: &OutgoingTask) {
    let r = wait_result(&t.id, Some("SUCCESS"), Duration::from_secs(15)).await;
    assert!(
        r.as_ref().is_some_and(|r| r["status"] == "SUCCESS"),
        "{} did not succeed: {r:?}\n{}",
        t.task,
        worker.logs()
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_header_nested_25000_deep_is_dead_lettered_and_the_worker_lives_on() {
    let queue = unique("deep");
    let worker = WorkerProcess::start(std::slice::from_ref(&queue), &[]);
    let (_c, channel) = amqp().await;
    let before = task("worker.ping", json!([]));
    publish_task(&channel, &queue, &before).await;

    // 5 bytes a level: just under what a 128 KiB frame holds.
    let mut deep = AMQPValue::Void;
    for _ in 0..25_000 {
        deep = AMQPValue::FieldArray(FieldArray::from(vec![deep]));
    }
    let bad = task("worker.ping", json!([]));
    publish_with_headers(&channel, &queue, &bad, vec![("deep", deep)]).await;
    let after = task("worker.ping", json!([]));
    publish_task(&channel, &queue, &after).await;

    assert_succeeds(&worker, &before).await;
    assert_succeeds(&worker, &after).await;
    let r = wait_result(&bad.id, Some("FAILURE"), Duration::from_secs(10))
        .await
        .expect("FAILURE under the deep message's id");
    assert_eq!(r["result"]["exc_type"], "DecodeError", "{r}");
    assert!(worker.is_alive_now(), "{}", worker.logs());
    let dead = dead_letters(&channel, &queue).await;
    assert_eq!(dead.len(), 1, "kept once in {queue}.dead");
    assert_eq!(dead[0].0["x-dead-letter-reason"], "headers_too_deep");
    assert_eq!(dead[0].0["id"], bad.id.as_str());
    assert_eq!(runs(&worker, &before.id), 1);
    assert_eq!(runs(&worker, &after.id), 1);
    delete_queue(&channel, &queue).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn an_absurd_retry_countdown_fails_the_task_and_every_queue_keeps_consuming() {
    let (a, b) = (unique("countdown-a"), unique("countdown-b"));
    let worker = WorkerProcess::start(&[a.clone(), b.clone()], &[]);
    let (_c, channel) = amqp().await;
    let mut poison = task("worker.fail", json!(["asked to retry"]));
    poison.kwargs.insert("retry_countdown".into(), json!(1e13));
    publish_task(&channel, &a, &poison).await;
    let r = wait_result(&poison.id, Some("FAILURE"), Duration::from_secs(10))
        .await
        .expect("FAILURE");
    assert_eq!(r["result"]["exc_type"], "ValueError", "{r}");
    assert!(
        r["result"]["exc_message"][0]
            .as_str()
            .unwrap()
            .contains("longest delay"),
        "{r}"
    );
    for q in [&a, &b] {
        let ping = task("worker.ping", json!([]));
        publish_task(&channel, q, &ping).await;
        assert_succeeds(&worker, &ping).await;
    }
    // A far eta is refused the same way, without panicking.
    let mut far = task("worker.ping", json!([]));
    far.eta = Some(chrono::Utc::now() + chrono::Duration::days(365 * 20));
    publish_task(&channel, &a, &far).await;
    let r = wait_result(&far.id, Some("FAILURE"), Duration::from_secs(10))
        .await
        .expect("FAILURE for a 20-year eta");
    assert_eq!(r["result"]["exc_type"], "ValueError", "{r}");
    let dead = dead_letters(&channel, &a).await;
    assert_eq!(dead.len(), 1);
    assert_eq!(dead[0].0["x-dead-letter-reason"], "eta_out_of_range");
    assert!(worker.is_alive_now(), "{}", worker.logs());

    let out = cli(&["send", "worker.ping", "--queue", &a, "--countdown", "1e13"]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(stderr(&out).contains("--countdown"), "{}", stderr(&out));
    assert!(!stderr(&out).contains("panicked"), "{}", stderr(&out));
    delete_queue(&channel, &a).await;
    delete_queue(&channel, &b).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn large_headers_run_and_an_invalid_eta_is_dead_lettered_once() {
    let queue = unique("bigheader");
    let worker = WorkerProcess::start(std::slice::from_ref(&queue), &[]);
    let (_c, channel) = amqp().await;
    // Over the 16 KiB frames the worker used to ask for, within kombu's 128 KiB.
    let big = task("worker.echo", json!(["big header"]));
    let text = AMQPValue::LongString(LongString::from("x".repeat(100 * 1024).as_bytes()));
    publish_with_headers(&channel, &queue, &big, vec![("bulky", text)]).await;
    let mut bad_eta = task("worker.ping", json!([]));
    bad_eta
        .extra_headers
        .insert("eta".into(), Value::String("not a time ".repeat(900)));
    publish_task(&channel, &queue, &bad_eta).await;
    let after = task("worker.ping", json!([]));
    publish_task(&channel, &queue, &after).await;

    assert_succeeds(&worker, &big).await;
    assert_succeeds(&worker, &after).await;
    let r = wait_result(&bad_eta.id, Some("FAILURE"), Duration::from_secs(10))
        .await
        .expect("FAILURE for the invalid eta");
    assert_eq!(r["result"]["exc_type"], "DecodeError", "{r}");
    // Give a requeue loop the time to show itself.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let dead = dead_letters(&channel, &queue).await;
    assert_eq!(dead.len(), 1, "one dead letter, not a loop");
    let detail = dead[0].0["x-dead-letter-detail"].as_str().unwrap();
    assert!(
        detail.len() <= 1024,
        "detail bounded: {} bytes",
        detail.len()
    );
    let logs = worker.logs();
    assert!(!logs.contains("reconnecting"), "{logs}");
    assert!(!logs.to_lowercase().contains("frame"), "{logs}");
    assert_eq!(runs(&worker, &big.id), 1);
    assert_eq!(runs(&worker, &after.id), 1);
    delete_queue(&channel, &queue).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn diagnostic_tasks_are_off_unless_enabled() {
    let queue = unique("nodiag");
    let worker = WorkerProcess::start(
        std::slice::from_ref(&queue),
        &[("WORKER_DIAGNOSTIC_TASKS", "false")],
    );
    let (_c, channel) = amqp().await;
    let ping = task("worker.ping", json!([]));
    publish_task(&channel, &queue, &ping).await;
    let r = wait_result(&ping.id, Some("FAILURE"), Duration::from_secs(10))
        .await
        .expect("FAILURE");
    assert_eq!(r["result"]["exc_type"], "NotRegistered", "{r}");
    let dead = dead_letters(&channel, &queue).await;
    assert_eq!(dead.len(), 1);
    assert_eq!(dead[0].0["x-dead-letter-reason"], "not_registered");
    drop(worker);
    delete_queue(&channel, &queue).await;
}

/// Peak resident memory of a process, from /proc (VmHWM), in bytes.
fn peak_rss(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let kb: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap();
    kb * 1024
}

#[tokio::test(flavor = "multi_thread")]
async fn huge_argument_lists_are_refused_and_memory_stays_bounded_at_full_concurrency() {
    let queue = unique("memory");
    let worker = WorkerProcess::start(
        std::slice::from_ref(&queue),
        &[("WORKER_CONCURRENCY", "16")],
    );
    let (_c, channel) = amqp().await;
    // Four 4 MB bodies of 2 million arguments: refused unread.
    let mut refused = Vec::new();
    for _ in 0..4 {
        let t = task("worker.echo", Value::Array(vec![json!(0); 2_000_000]));
        assert!(t.body().len() <= 4 * 1024 * 1024);
        publish_task(&channel, &queue, &t).await;
        refused.push(t);
    }
    for t in &refused {
        let r = wait_result(&t.id, Some("FAILURE"), Duration::from_secs(20))
            .await
            .expect("FAILURE");
        assert_eq!(r["result"]["exc_type"], "DecodeError", "{r}");
    }
    // Then sixteen of the largest accepted ones at once: 99,000 arguments of 40 bytes, ~4 MB.
    let arg = "a".repeat(38);
    let mut accepted = Vec::new();
    for _ in 0..16 {
        let t = task("worker.echo", Value::Array(vec![json!(arg); 99_000]));
        assert!(t.body().len() <= 4 * 1024 * 1024, "{}", t.body().len());
        publish_task(&channel, &queue, &t).await;
        accepted.push(t);
    }
    for t in &accepted {
        assert_succeeds(&worker, t).await;
    }
    let peak = peak_rss(worker.child.id());
    println!(
        "peak RSS with 16 x 4 MB messages: {} MB",
        peak / (1024 * 1024)
    );
    assert!(
        peak < 600 * 1024 * 1024,
        "peak RSS {} MB over the bound the README states",
        peak / (1024 * 1024)
    );
    let dead = dead_letters(&channel, &queue).await;
    assert_eq!(dead.len(), 4);
    assert!(
        dead.iter()
            .all(|(h, _)| h["x-dead-letter-reason"] == "too_many_values")
    );
    delete_queue(&channel, &queue).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn healthz_answers_within_a_second_under_task_load() {
    let queue = unique("healthz");
    let worker = WorkerProcess::start(
        std::slice::from_ref(&queue),
        &[("WORKER_CONCURRENCY", "32")],
    );
    let (_c, channel) = amqp().await;
    let mut sleeping = Vec::new();
    for _ in 0..32 {
        let t = task("worker.sleep", json!([3]));
        publish_task(&channel, &queue, &t).await;
        sleeping.push(t);
    }
    let arg = "b".repeat(38);
    for _ in 0..6 {
        let t = task("worker.echo", Value::Array(vec![json!(arg); 99_000]));
        publish_task(&channel, &queue, &t).await;
    }
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(1))
        .build()
        .unwrap();
    let url = format!("http://{}/healthz", worker.http_addr());
    for _ in 0..10 {
        let answer = client.get(&url).send().await;
        assert!(
            answer.as_ref().is_ok_and(|r| r.status() == 200),
            "/healthz did not answer within a second: {answer:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    for t in &sleeping {
        assert_succeeds(&worker, t).await;
    }
    delete_queue(&channel, &queue).await;
}
