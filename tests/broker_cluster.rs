//! RabbitMQ beyond one node, with brokers of the test's own (the shared 5672 node is never
//! touched): a three-node cluster with quorum queues whose node under the worker is stopped in
//! the middle of a run, a Celery 5.7 producer declaring the same quorum queue as the worker in
//! either order, and a message that reaches the delivery limit ending in `<queue>.dead`.
//!
//! Slow (a cluster boots in ~35 s): the tests run one at a time, and every broker is stopped in
//! Drop, even when a test fails.

mod harness;

use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

use harness::services::{RabbitCluster, RabbitNode};
use harness::*;
use lapin::options::{BasicPublishOptions, ConfirmSelectOptions, QueueDeclareOptions};
use lapin::types::FieldTable;
use lapin::{Channel, Connection, ConnectionProperties};
use redis::AsyncCommands;
use serde_json::Value;
use worker::wire::OutgoingTask;

static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

async fn channel_to(url: &str) -> (Connection, Channel) {
    let conn = Connection::connect(url, ConnectionProperties::default())
        .await
        .expect("connect to the test's broker");
    let channel = conn.create_channel().await.expect("channel");
    channel
        .confirm_select(ConfirmSelectOptions::default())
        .await
        .expect("confirm.select");
    (conn, channel)
}

/// How many times the worker's log says each task finished.
fn finished_per_task(log: &str) -> HashMap<String, usize> {
    let mut counts = HashMap::new();
    for line in log.lines().filter(|l| l.contains("task finished")) {
        if let Some(rest) = line.split("task_id=").nth(1) {
            let id: String = rest
                .chars()
                .take_while(|c| c.is_ascii_hexdigit() || *c == '-')
                .collect();
            *counts.entry(id).or_insert(0) += 1;
        }
    }
    counts
}

/// The ids among `ids` whose result in the shared Redis is SUCCESS.
async fn succeeded(ids: &[String]) -> HashSet<String> {
    let mut redis = redis().await;
    let mut done = HashSet::new();
    for chunk in ids.chunks(500) {
        let keys: Vec<String> = chunk
            .iter()
            .map(|id| format!("celery-task-meta-{id}"))
            .collect();
        let values: Vec<Option<String>> = redis.mget(&keys).await.expect("MGET");
        for (id, raw) in chunk.iter().zip(values) {
            if let Some(raw) = raw
                && serde_json::from_str::<Value>(&raw).is_ok_and(|v| v["status"] == "SUCCESS")
            {
                done.insert(id.clone());
            }
        }
    }
    done
}

#[tokio::test(flavor = "multi_thread")]
async fn stopping_the_node_under_the_worker_loses_and_doubles_no_task() {
    let _serial = SERIAL.lock().await;
    let cluster = RabbitCluster::start();
    let queue = unique("qq-failover");
    // Two long tasks on a queue of their own run through the stop: their redelivered copies
    // arrive while the first runs still go on, and must not run beside them.
    let slow = unique("qq-failover-slow");
    let worker = WorkerProcess::start(
        &[queue.clone(), slow.clone()],
        &[
            ("RABBITMQ_URL", cluster.urls.as_str()),
            ("WORKER_QUEUE_TYPE", "quorum"),
            // 2 slots for the 2,000 tasks of 20 ms each: ~20 s for the run, so that the stop
            // lands in its middle; 2 for the long ones.
            ("WORKER_CONCURRENCY", "4"),
        ],
    );
    let queues = cluster.ctl(1, &["list_queues", "name", "type", "arguments"]);
    let declared = queues
        .lines()
        .find(|l| l.split_whitespace().next() == Some(queue.as_str()))
        .unwrap_or_default();
    assert!(
        declared.contains("quorum"),
        "the worker declares a quorum queue: {queues}"
    );
    let under = cluster
        .node_with_connection("staffprobot-worker")
        .expect("the worker's connections are listed");
    // Publish through another member, as a producer elsewhere in the cluster would.
    let other = if under == 1 { 2 } else { 1 };
    let (_conn, channel) = channel_to(&cluster.node_urls[other - 1]).await;
    let mut ids = Vec::new();
    for _ in 0..2 {
        let task = OutgoingTask::new("worker.sleep", vec![10.into()], Default::default());
        ids.push(task.id.clone());
        publish_task_to(&channel, &slow, &task).await;
    }
    let mut confirms = Vec::new();
    for _ in 0..2000u32 {
        let task = OutgoingTask::new("worker.sleep", vec![0.02.into()], Default::default());
        ids.push(task.id.clone());
        let message = task_message(&queue, &task);
        confirms.push(
            channel
                .basic_publish(
                    "".into(),
                    queue.as_str().into(),
                    BasicPublishOptions::default(),
                    &message.body,
                    message.amqp_properties(),
                )
                .await
                .expect("publish"),
        );
    }
    for confirm in confirms {
        assert!(
            confirm.await.expect("confirm").is_ack(),
            "the cluster took every task"
        );
    }
    // In the middle of the run: some tasks done, most still queued.
    worker.wait_for_log_count("task finished", 200, Duration::from_secs(120));
    let done_at_stop = finished_per_task(&worker.logs()).len();
    let finished = finished_per_task(&worker.logs());
    assert!(
        !finished.contains_key(&ids[0]) && !finished.contains_key(&ids[1]),
        "the long tasks still run at the stop"
    );
    cluster.stop_node(under);
    assert!(
        done_at_stop < 1900,
        "the node was stopped in the middle of the run ({done_at_stop} finished)"
    );

    let start = Instant::now();
    let mut done = HashSet::new();
    while start.elapsed() < Duration::from_secs(240) {
        done = succeeded(&ids).await;
        if done.len() == ids.len() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let log = worker.logs();
    assert_eq!(
        done.len(),
        ids.len(),
        "every task SUCCESS after the failover; log tail: {}",
        log.lines().rev().take(40).collect::<Vec<_>>().join("\n")
    );
    // Redeliveries of tasks whose ack died with the node must have been settled, too.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let counts = finished_per_task(&worker.logs());
    let doubled: Vec<_> = ids
        .iter()
        .filter(|id| counts.get(*id).copied().unwrap_or(0) != 1)
        .map(|id| (id, counts.get(id).copied().unwrap_or(0)))
        .collect();
    assert!(
        doubled.is_empty(),
        "tasks not run exactly once: {doubled:?}"
    );
    assert!(
        log.contains("(failover from"),
        "the log names the failover: {}",
        log.lines()
            .filter(|l| l.contains("RabbitMQ") || l.contains("connected"))
            .collect::<Vec<_>>()
            .join("\n")
    );
    assert!(
        !log.contains("guest:guest@"),
        "URLs in the log are redacted"
    );

    // The `.dead` queue is classic: it lives on the stopped member. A message that cannot run
    // must wait for it, not be acked into a queue that is down (RabbitMQ confirms such a
    // publish and drops it unless it is mandatory).
    let poison = OutgoingTask::new("no.such.task", vec![], Default::default());
    let message = task_message(&queue, &poison);
    publish_raw(&channel, &queue, &message.body, message.amqp_properties()).await;
    worker.wait_for_log("could not dead-letter a message", Duration::from_secs(30));
    cluster.start_node(under);
    let dead = format!("{queue}.dead");
    let start = Instant::now();
    let mut letters = Vec::new();
    while letters.is_empty() && start.elapsed() < Duration::from_secs(60) {
        letters = drain(&channel, &dead).await;
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    assert_eq!(
        letters.len(),
        1,
        "the message reached .dead once its member was back"
    );
    assert_eq!(letters[0].0["id"], poison.id.as_str());
    assert_eq!(letters[0].0["x-dead-letter-reason"], "not_registered");

    let log = worker.logs();
    let skipped = log.matches("redelivered task already succeeded").count();
    let waited = log.matches("waiting for that run").count();
    eprintln!(
        "stopped member {under} with {done_at_stop} of 2000 finished; {skipped} redeliveries skipped as already done, {waited} waited for their first run;\n{}",
        log.lines()
            .filter(|l| l.contains("failover from"))
            .collect::<Vec<_>>()
            .join("\n")
    );
}

/// The queue's type and arguments as the node lists them.
fn queue_listing(node: &RabbitNode, queue: &str) -> String {
    node.ctl(&["list_queues", "name", "type", "arguments"])
        .lines()
        .find(|l| l.split_whitespace().next() == Some(queue))
        .unwrap_or_default()
        .to_owned()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_celery_producer_and_the_worker_declare_the_same_quorum_queue_in_either_order() {
    let _serial = SERIAL.lock().await;
    let node = RabbitNode::start();
    let quorum = [
        ("RABBITMQ_URL", node.url.as_str()),
        ("WORKER_QUEUE_TYPE", "quorum"),
    ];
    let python = |queue: &str, args: &[&str]| {
        let out = std::process::Command::new(python())
            .arg(root().join("tests/python/quorum_producer.py"))
            .arg(queue)
            .args(args)
            .env("RABBITMQ_URL", &node.url)
            .env("REDIS_URL", REDIS_URL)
            .output()
            .expect("run python");
        assert!(
            out.status.success(),
            "the Celery producer declares and sends with no 406: {}{}",
            stdout(&out),
            stderr(&out)
        );
        stdout(&out)
    };

    // Celery first: the worker then declares the queue Celery made and consumes it.
    let first = unique("qq-celery-first");
    let said = python(&first, &["declare-only"]);
    assert!(
        said.contains(r#"arguments {"x-queue-type": "quorum"}"#),
        "{said}"
    );
    assert!(said.contains(&format!("exchange {first} direct")), "{said}");
    let worker = WorkerProcess::start(std::slice::from_ref(&first), &quorum);
    let said = python(&first, &[]);
    assert!(said.contains(r#"result {"args": ["quorum"]"#), "{said}");
    let listed = queue_listing(&node, &first);
    assert!(listed.contains("quorum"), "{listed}");
    assert!(
        !worker.logs().contains("PRECONDITION_FAILED"),
        "{}",
        worker.logs()
    );
    drop(worker);

    // The worker first: Celery then declares the queue the worker made.
    let second = unique("qq-worker-first");
    let worker = WorkerProcess::start(std::slice::from_ref(&second), &quorum);
    let said = python(&second, &[]);
    assert!(said.contains(r#"result {"args": ["quorum"]"#), "{said}");
    assert!(queue_listing(&node, &second).contains("quorum"));
    // Our dead-letter queue stays classic and argument-free.
    let dead = queue_listing(&node, &format!("{second}.dead"));
    assert!(dead.contains("classic") && dead.contains("[]"), "{dead}");
    drop(worker);

    // And the default stays classic and argument-free, as today's Celery queues are.
    let classic = unique("qq-default-classic");
    let worker = WorkerProcess::start(
        std::slice::from_ref(&classic),
        &[("RABBITMQ_URL", node.url.as_str())],
    );
    let listed = queue_listing(&node, &classic);
    assert!(
        listed.contains("classic") && listed.contains("[]"),
        "{listed}"
    );
    drop(worker);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_message_that_reaches_the_delivery_limit_ends_in_the_dead_letter_queue() {
    let _serial = SERIAL.lock().await;
    let node = RabbitNode::start();
    let queue = unique("qq-poison");
    let env = [
        ("RABBITMQ_URL", node.url.as_str()),
        ("WORKER_QUEUE_TYPE", "quorum"),
        ("WORKER_MAX_DELIVERIES", "2"),
    ];
    let (_conn, channel) = channel_to(&node.url).await;
    let mut worker = WorkerProcess::start(std::slice::from_ref(&queue), &env);
    // A task that never settles: the worker dies under it each time (SIGKILL).
    let task = OutgoingTask::new("worker.sleep", vec![120.into()], Default::default());
    publish_task_to(&channel, &queue, &task).await;
    for _ in 0..2 {
        wait_taken(&channel, &queue).await;
        worker.child.kill().expect("SIGKILL the worker");
        let _ = worker.child.wait();
        worker = WorkerProcess::start(std::slice::from_ref(&queue), &env);
    }
    let dead = format!("{queue}.dead");
    let start = Instant::now();
    let mut letters = Vec::new();
    while letters.is_empty() && start.elapsed() < Duration::from_secs(30) {
        letters = drain(&channel, &dead).await;
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(letters.len(), 1, "the message is parked: {}", worker.logs());
    let (headers, body) = &letters[0];
    assert_eq!(
        headers["x-dead-letter-reason"], "delivery_limit",
        "{headers:?}"
    );
    assert_eq!(headers["id"], task.id.as_str());
    assert_eq!(body, &task_message(&queue, &task).body);
    assert!(
        worker.logs().contains("reached the delivery limit"),
        "{}",
        worker.logs()
    );
    let result = wait_result(&task.id, Some("FAILURE"), Duration::from_secs(10))
        .await
        .expect("its FAILURE is stored");
    assert!(
        result["result"]["exc_message"]
            .to_string()
            .contains("delivered 2 times"),
        "{result}"
    );
    assert_eq!(
        message_count(&channel, &queue).await,
        0,
        "gone from the queue"
    );
}

async fn publish_task_to(channel: &Channel, queue: &str, task: &OutgoingTask) {
    let message = task_message(queue, task);
    publish_raw(channel, queue, &message.body, message.amqp_properties()).await;
}

/// Wait until the worker holds the queue's message (none ready: it is delivered, unacked).
async fn wait_taken(channel: &Channel, queue: &str) {
    let start = Instant::now();
    loop {
        let ready = channel
            .queue_declare(
                queue.into(),
                QueueDeclareOptions {
                    passive: true,
                    ..Default::default()
                },
                FieldTable::default(),
            )
            .await
            .expect("the queue exists")
            .message_count();
        if ready == 0 {
            // Delivered; give the worker a moment to start running it.
            tokio::time::sleep(Duration::from_millis(500)).await;
            return;
        }
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "the worker never took the message"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
