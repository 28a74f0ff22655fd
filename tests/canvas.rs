//! Celery's canvas on our worker, driven by a real Celery 5.7 client (tests/python/canvas.py):
//! `link` callbacks (result prepended unless immutable, `parent_id`/`root_id`, routed to the
//! queue the signature names, published before the SUCCESS is stored), chains (a failing link
//! fails the later ones, which never run), `link_error` errbacks, groups, the refusal of what
//! the worker cannot honour; and a redelivered message whose SUCCESS is stored: not run again,
//! its callbacks not sent again.

mod harness;

use std::time::Duration;

use harness::*;
use lapin::options::{BasicGetOptions, BasicRejectOptions};
use redis::AsyncCommands;
use serde_json::{Map, Value, json};
use worker::wire::OutgoingTask;

/// The body's args of a raw message.
fn body_args(body: &[u8]) -> Value {
    serde_json::from_slice::<Value>(body).expect("JSON body")[0].clone()
}

fn line<'a>(text: &'a str, name: &str) -> &'a str {
    text.lines()
        .find_map(|l| l.strip_prefix(&format!("{name} ")))
        .unwrap_or_else(|| panic!("python printed no {name:?} line:\n{text}"))
        .trim()
}

#[tokio::test(flavor = "multi_thread")]
async fn celery_canvas_forms_run_on_the_worker() {
    let queue = unique("canvas");
    let parked = format!("{queue}-parked");
    let worker = WorkerProcess::start(std::slice::from_ref(&queue), &[]);
    let (q, p) = (queue.clone(), parked.clone());
    let out = tokio::task::spawn_blocking(move || run_python("canvas.py", &[&q, &p]))
        .await
        .unwrap();
    let text = stdout(&out);
    assert!(
        out.status.success(),
        "python failed:\n{text}\n{}\nworker log:\n{}",
        stderr(&out),
        worker.logs()
    );
    for check in [
        "ok link",
        "ok immutable link",
        "ok link to a named queue",
        "ok several links",
        "ok chain",
        "ok chain failure",
        "ok chain ending in a group",
        "ok group as a link",
        "ok chain as a link",
        "ok link_error",
        "ok group",
        "ok unsupported canvas refused",
        "ok chord",
        "ok chord with a failing part",
        "ok chord with a failing chain in its header",
    ] {
        assert!(text.contains(check), "missing {check:?} in:\n{text}");
    }

    // Only the routed callback reached the parked queue: neither the failed chain's last link
    // nor the failed task's `link` was ever sent.
    let (_conn, channel) = amqp().await;
    let sent = drain(&channel, &parked).await;
    assert_eq!(sent.len(), 1, "parked messages: {sent:?}");
    let (headers, body) = &sent[0];
    let parent = line(&text, "routed-parent");
    assert_eq!(headers["id"], line(&text, "routed-child"));
    assert_eq!(headers["parent_id"], parent);
    assert_eq!(headers["root_id"], parent);
    assert_eq!(headers["task"], "worker.echo");
    assert_eq!(
        body_args(body),
        json!([{"args": ["routed"], "kwargs": {}}, "p"])
    );

    // The refused messages wait in the dead-letter queue with the reason.
    let dead = drain(&channel, &format!("{queue}.dead")).await;
    let reasons: Vec<(&Value, &Value)> = dead
        .iter()
        .map(|(h, _)| (&h["id"], &h["x-dead-letter-reason"]))
        .collect();
    let refused = line(&text, "refused");
    assert!(
        reasons
            .iter()
            .any(|(id, r)| *id == refused && *r == "unsupported_canvas"),
        "dead letters: {reasons:?}"
    );
    // The chain's last link was stored FAILURE without ever running: no worker wrote it.
    let end = wait_result(
        line(&text, "failed-chain-end"),
        Some("FAILURE"),
        Duration::from_secs(5),
    )
    .await
    .expect("the chain's end has a result");
    assert!(end.get("worker").is_none(), "{end}");
    assert_eq!(end["result"]["exc_type"], "ValueError");
    for q in [&queue, &parked] {
        delete_queue(&channel, q).await;
    }
}

/// `worker.echo(1)` with a callback routed to `parked`.
fn echo_with_callback(parked: &str) -> OutgoingTask {
    let mut task = OutgoingTask::new("worker.echo", vec![json!(1)], Map::new());
    task.embed.insert(
        "callbacks".into(),
        json!([{"task": "worker.echo", "args": ["cb"], "kwargs": {},
                "options": {"queue": parked}, "subtask_type": null, "immutable": false}]),
    );
    task
}

/// Publish `task` to `queue` and hand it back once through a second consumer, so that it sits
/// in the queue with AMQP's `redelivered` flag set, as after a worker died before its ack.
async fn publish_redelivered(queue: &str, task: &OutgoingTask) {
    let (_conn, channel) = amqp().await;
    publish_task(&channel, queue, task).await;
    let got = channel
        .basic_get(queue.into(), BasicGetOptions { no_ack: false })
        .await
        .expect("basic.get")
        .expect("the message is in the queue");
    assert!(!got.delivery.redelivered);
    channel
        .basic_reject(
            got.delivery.delivery_tag,
            BasicRejectOptions { requeue: true },
        )
        .await
        .expect("basic.reject");
}

async fn declare(queue: &str) {
    let (_conn, channel) = amqp().await;
    worker::topology::declare_celery_queue(&channel, queue)
        .await
        .expect("declare");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_redelivered_task_that_already_succeeded_runs_once_and_sends_its_callback_once() {
    let queue = unique("dedup");
    let parked = format!("{queue}-parked");
    let task = echo_with_callback(&parked);
    {
        let first = WorkerProcess::start(std::slice::from_ref(&queue), &[]);
        let (_conn, channel) = amqp().await;
        publish_task(&channel, &queue, &task).await;
        let done = wait_result(&task.id, Some("SUCCESS"), Duration::from_secs(15)).await;
        assert!(done.is_some(), "no SUCCESS; log:\n{}", first.logs());
        assert_eq!(message_count(&channel, &parked).await, 1);
        // The worker is gone before the copy below arrives: as if it died before its ack.
    }
    let stored_before = wait_result(&task.id, None, Duration::from_secs(1)).await;
    publish_redelivered(&queue, &task).await;
    let second = WorkerProcess::start(std::slice::from_ref(&queue), &[]);
    second.wait_for_log("already succeeded", Duration::from_secs(15));
    let (_conn, channel) = amqp().await;
    assert!(
        wait_until(Duration::from_secs(5), || async {
            message_count(&channel, &queue).await == 0
        })
        .await,
        "the redelivered message was not acked"
    );
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        message_count(&channel, &parked).await,
        1,
        "the callback was sent again"
    );
    assert!(
        !second.logs().contains("task finished"),
        "the task ran again:\n{}",
        second.logs()
    );
    let stored_after = wait_result(&task.id, None, Duration::from_secs(1)).await;
    assert_eq!(stored_before, stored_after);
    let children = &stored_after.unwrap()["children"];
    assert_eq!(children.as_array().map(Vec::len), Some(1), "{children}");
    for q in [&queue, &parked] {
        delete_queue(&channel, q).await;
    }
}

/// The real fault: the worker is SIGKILLed the moment its SUCCESS reaches Redis, before the
/// ack. A `worker.sleep` delivered first holds the lowest delivery tag, so the echo's ack waits
/// its batching delay (20 ms) while the test, told by the result's PUBLISH, kills the worker.
#[tokio::test(flavor = "multi_thread")]
async fn a_worker_killed_between_store_and_ack_runs_the_task_once_and_its_callback_once() {
    let queue = unique("dedup-kill");
    let parked = format!("{queue}-parked");
    let task = echo_with_callback(&parked);
    let blocker = OutgoingTask::new("worker.sleep", vec![json!(5)], Map::new());
    let mut first = WorkerProcess::start(std::slice::from_ref(&queue), &[]);
    declare(&parked).await;

    let client = redis::Client::open(REDIS_URL).unwrap();
    let mut pubsub = client.get_async_pubsub().await.unwrap();
    pubsub
        .subscribe(format!("celery-task-meta-{}", task.id))
        .await
        .unwrap();
    let (_conn, channel) = amqp().await;
    publish_task(&channel, &queue, &blocker).await;
    first.wait_for_log("worker.sleep", Duration::from_secs(10));
    publish_task(&channel, &queue, &task).await;
    let mut messages = pubsub.on_message();
    loop {
        let msg = tokio::time::timeout(
            Duration::from_secs(15),
            futures::StreamExt::next(&mut messages),
        )
        .await
        .expect("the result was published")
        .expect("pubsub open");
        let doc: Value = serde_json::from_str(&msg.get_payload::<String>().unwrap()).unwrap();
        if doc["status"] == "SUCCESS" {
            break;
        }
    }
    first.child.kill().expect("SIGKILL");
    let _ = first.child.wait();
    drop(messages);
    assert_eq!(
        message_count(&channel, &parked).await,
        1,
        "the callback was sent before SUCCESS was stored"
    );

    let second = WorkerProcess::start(std::slice::from_ref(&queue), &[]);
    second.wait_for_log("already succeeded", Duration::from_secs(15));
    assert!(
        wait_until(Duration::from_secs(15), || async {
            message_count(&channel, &queue).await == 0
        })
        .await,
        "the redelivered messages were not settled:\n{}",
        second.logs()
    );
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        message_count(&channel, &parked).await,
        1,
        "the callback was sent again"
    );
    // The second worker ran the blocker again (it never finished) but not the echo.
    let echo_runs = second
        .logs()
        .lines()
        .filter(|l| l.contains("task finished") && l.contains(task.id.as_str()))
        .count();
    assert_eq!(echo_runs, 0, "the task ran again:\n{}", second.logs());
    for q in [&queue, &parked] {
        delete_queue(&channel, q).await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_redelivered_success_stored_without_children_sends_its_callback_with_the_stored_result() {
    let queue = unique("dedup-nochild");
    let parked = format!("{queue}-parked");
    let task = echo_with_callback(&parked);
    // A SUCCESS stored by someone that sent no callbacks (Celery's check: no children).
    let doc = json!({"status": "SUCCESS", "result": "stored", "traceback": null, "children": [],
                     "date_done": "2026-12-01T00:00:00+00:00", "task_id": task.id});
    let _: () = redis()
        .await
        .set_ex(
            format!("celery-task-meta-{}", task.id),
            doc.to_string(),
            600,
        )
        .await
        .unwrap();
    // Declared first: polling a queue that does not exist yet would close the test's channel.
    declare(&queue).await;
    declare(&parked).await;
    publish_redelivered(&queue, &task).await;
    let worker = WorkerProcess::start(std::slice::from_ref(&queue), &[]);
    worker.wait_for_log("already succeeded", Duration::from_secs(15));
    let (_conn, channel) = amqp().await;
    assert!(
        wait_until(Duration::from_secs(5), || async {
            message_count(&channel, &parked).await == 1
        })
        .await,
        "the callback was not sent; log:\n{}",
        worker.logs()
    );
    let sent = drain(&channel, &parked).await;
    assert_eq!(sent.len(), 1);
    assert_eq!(body_args(&sent[0].1), json!(["stored", "cb"]));
    assert_eq!(sent[0].0["parent_id"], task.id.as_str());
    assert!(
        !worker.logs().contains("task finished"),
        "{}",
        worker.logs()
    );
    for q in [&queue, &parked] {
        delete_queue(&channel, q).await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_chord_in_a_layout_the_worker_does_not_know_is_refused_before_it_runs() {
    let queue = unique("chord-layout");
    let gid = uuid::Uuid::new_v4().to_string();
    let body_id = uuid::Uuid::new_v4().to_string();
    // `result_chord_ordered=False`: the header results are a list, not Celery's default ZSET.
    let jkey = format!("celery-taskset-meta-{gid}.j");
    let mut redis = redis().await;
    let _: () = redis
        .rpush(&jkey, "[1, \"x\", \"SUCCESS\", 1]")
        .await
        .unwrap();
    let _: () = redis.expire(&jkey, 600).await.unwrap();
    let mut task = OutgoingTask::new("worker.echo", vec![json!(1)], Map::new());
    task.extra_headers.insert("group".into(), json!(gid));
    task.extra_headers.insert("group_index".into(), json!(0));
    task.embed.insert(
        "chord".into(),
        json!({"task": "worker.echo", "args": [], "kwargs": {},
               "options": {"task_id": body_id, "group_id": gid, "queue": queue},
               "subtask_type": null, "immutable": false}),
    );
    let worker = WorkerProcess::start(std::slice::from_ref(&queue), &[]);
    let (_conn, channel) = amqp().await;
    publish_task(&channel, &queue, &task).await;
    let failed = wait_result(&task.id, Some("FAILURE"), Duration::from_secs(15))
        .await
        .unwrap_or_else(|| panic!("no FAILURE; log:\n{}", worker.logs()));
    assert_eq!(failed["result"]["exc_type"], "NotImplementedError");
    let text = failed["result"]["exc_message"][0]
        .as_str()
        .unwrap()
        .to_owned();
    assert!(text.contains("result_chord_ordered=False"), "{text}");
    // The body fails with it, so `chord.get()` raises instead of waiting.
    let body = wait_result(&body_id, Some("FAILURE"), Duration::from_secs(5)).await;
    assert!(body.is_some(), "the body has no FAILURE");
    let dead = drain(&channel, &format!("{queue}.dead")).await;
    assert_eq!(dead.len(), 1);
    assert_eq!(dead[0].0["x-dead-letter-reason"], "unsupported_canvas");
    assert!(
        !worker.logs().contains("task finished"),
        "{}",
        worker.logs()
    );
    // Nothing was added to the chord's state.
    let len: i64 = redis.llen(&jkey).await.unwrap();
    assert_eq!(len, 1);
    let _: () = redis.del(&jkey).await.unwrap();
    delete_queue(&channel, &queue).await;
}

/// A Python Celery 5.7 worker (tests/python/canvas_worker.py) on `queue`, killed on drop.
struct PythonWorker {
    child: std::process::Child,
    log: std::path::PathBuf,
}

impl PythonWorker {
    fn start(queue: &str, hostname: &str) -> Self {
        let log = std::env::temp_dir().join(format!("{}.log", unique("celery-worker")));
        let file = std::fs::File::create(&log).expect("log file");
        let child = std::process::Command::new(python())
            .args([
                "-m",
                "celery",
                "-A",
                "canvas_worker",
                "worker",
                "-P",
                "solo",
            ])
            .args([
                "-Q",
                queue,
                "-n",
                hostname,
                "--without-gossip",
                "--without-mingle",
            ])
            .args(["--without-heartbeat", "-l", "info"])
            .current_dir(root().join("tests/python"))
            .env("RABBITMQ_URL", RABBITMQ_URL)
            .env("REDIS_URL", REDIS_URL)
            .stdout(file.try_clone().expect("clone"))
            .stderr(file)
            .spawn()
            .expect("start the Python worker");
        let w = Self { child, log };
        let start = std::time::Instant::now();
        while !w.logs().contains(" ready.") {
            assert!(
                start.elapsed() < Duration::from_secs(60),
                "the Python worker never got ready:\n{}",
                w.logs()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        w
    }

    fn logs(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for PythonWorker {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_python_worker_and_ours_finish_one_chord_between_them() {
    let queue = unique("mixed-chord");
    let ours = WorkerProcess::start(
        std::slice::from_ref(&queue),
        &[("WORKER_HOSTNAME", "rust@canvas")],
    );
    let q = queue.clone();
    let python_worker = tokio::task::spawn_blocking(move || PythonWorker::start(&q, "py@canvas"))
        .await
        .unwrap();
    let q = queue.clone();
    let out = tokio::task::spawn_blocking(move || run_python("mixed_chord.py", &[&q]))
        .await
        .unwrap();
    let text = stdout(&out);
    assert!(
        out.status.success() && text.contains("ok mixed chord"),
        "python failed:\n{text}\n{}\nour worker:\n{}\npython worker:\n{}",
        stderr(&out),
        ours.logs(),
        python_worker.logs()
    );
    let workers: Vec<&str> = text
        .lines()
        .filter_map(|l| l.strip_prefix("part-worker "))
        .collect();
    assert_eq!(workers.len(), 20, "{text}");
    assert!(workers.contains(&"rust@canvas"), "{workers:?}");
    assert!(workers.contains(&"py@canvas"), "{workers:?}");
    assert!(
        text.contains("ok mixed chord with a failing part"),
        "{text}"
    );
    let (_conn, channel) = amqp().await;
    delete_queue(&channel, &queue).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn with_deduplication_off_a_redelivered_task_runs_again() {
    let queue = unique("dedup-off");
    let task = OutgoingTask::new("worker.echo", vec![json!(1)], Map::new());
    let doc = json!({"status": "SUCCESS", "result": "stored", "traceback": null, "children": [],
                     "date_done": "2026-12-01T00:00:00+00:00", "task_id": task.id});
    let _: () = redis()
        .await
        .set_ex(
            format!("celery-task-meta-{}", task.id),
            doc.to_string(),
            600,
        )
        .await
        .unwrap();
    declare(&queue).await;
    publish_redelivered(&queue, &task).await;
    let worker = WorkerProcess::start(
        std::slice::from_ref(&queue),
        &[("WORKER_DEDUPLICATE_SUCCESSFUL_TASKS", "false")],
    );
    worker.wait_for_log("task finished", Duration::from_secs(15));
    assert!(!worker.logs().contains("already succeeded"));
    let (_conn, channel) = amqp().await;
    delete_queue(&channel, &queue).await;
}
