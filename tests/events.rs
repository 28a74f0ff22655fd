//! Celery events on the wire, read by Celery 5.7's own `celery.events.state.State`: with
//! `WORKER_SEND_EVENTS=true` the worker publishes to its event exchange (this test's own) each
//! task's received/started/succeeded, retried/failed, and worker-online/heartbeat, every event
//! stamped as Celery's dispatcher stamps it; `disable_events` from Python's `app.control`
//! stops them, `enable_events` starts them again (`worker-online` first), and a graceful
//! shutdown ends with `worker-offline`.

mod harness;

use std::io::Write;
use std::process::{Command, Stdio};
use std::time::Duration;

use harness::*;
use lapin::options::{
    BasicGetOptions, ExchangeDeclareOptions, QueueBindOptions, QueueDeclareOptions,
};
use lapin::types::FieldTable;
use serde_json::{Map, Value, json};
use worker::wire::OutgoingTask;

/// Every event in `queue` now, with its routing key.
async fn take(channel: &lapin::Channel, queue: &str) -> Vec<(String, Value)> {
    let mut out = Vec::new();
    while let Some(m) = channel
        .basic_get(queue.into(), BasicGetOptions { no_ack: true })
        .await
        .expect("basic.get")
    {
        let body: Value = serde_json::from_slice(&m.delivery.data).expect("an event is JSON");
        out.push((m.delivery.routing_key.to_string(), body));
    }
    out
}

/// Celery's `State` fed with `events`: its summary of workers and tasks.
fn celery_state(events: &[(String, Value)]) -> Value {
    let mut child = Command::new(python())
        .arg(root().join("tests/python/events_state.py"))
        .arg("state")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("python");
    let mut stdin = child.stdin.take().unwrap();
    for (_, e) in events {
        writeln!(stdin, "{e}").unwrap();
    }
    drop(stdin);
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    serde_json::from_str(stdout(&out).trim()).expect("summary")
}

#[tokio::test(flavor = "multi_thread")]
async fn events_as_celery_sends_them_and_disable_events_stops_them() {
    let queue = unique("events");
    let exchange = format!("{queue}.ev");
    let control = format!("{queue}-ctl");
    let node = format!("celery@{queue}");
    let listen = format!("{queue}.listen");
    let (_c, channel) = amqp().await;
    worker::topology::declare_with_dead_letter(&channel, &queue)
        .await
        .expect("declare");
    // Bound before the worker starts, as Flower's receiver binds `#`.
    channel
        .exchange_declare(
            exchange.as_str().into(),
            lapin::ExchangeKind::Topic,
            ExchangeDeclareOptions {
                durable: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await
        .unwrap();
    channel
        .queue_declare(
            listen.as_str().into(),
            QueueDeclareOptions::default(),
            FieldTable::default(),
        )
        .await
        .unwrap();
    channel
        .queue_bind(
            listen.as_str().into(),
            exchange.as_str().into(),
            "#".into(),
            QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await
        .unwrap();

    let worker = WorkerProcess::start(
        std::slice::from_ref(&queue),
        &[
            ("WORKER_SEND_EVENTS", "true"),
            ("WORKER_EVENT_EXCHANGE", exchange.as_str()),
            ("WORKER_CONTROL_EXCHANGE", control.as_str()),
            ("WORKER_HOSTNAME", node.as_str()),
        ],
    );
    let ok = OutgoingTask::new("worker.echo", vec![json!(1)], Map::new());
    let mut kwargs = Map::new();
    kwargs.insert("message".into(), json!("again"));
    kwargs.insert("retry_countdown".into(), json!(0.1));
    let retried = OutgoingTask::new("worker.fail", vec![], kwargs);
    for t in [&ok, &retried] {
        publish_task(&channel, &queue, t).await;
    }
    wait_result(&ok.id, Some("SUCCESS"), Duration::from_secs(15))
        .await
        .expect("SUCCESS");
    wait_result(&retried.id, Some("FAILURE"), Duration::from_secs(15))
        .await
        .expect("FAILURE after its retries");
    // At least one heartbeat after the online event.
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let events = take(&channel, &listen).await;

    let types: Vec<&str> = events
        .iter()
        .filter_map(|(_, e)| e["type"].as_str())
        .collect();
    assert_eq!(types.first(), Some(&"worker-online"), "{types:?}");
    assert!(types.contains(&"worker-heartbeat"), "{types:?}");
    let mut last_clock = 0;
    for (key, e) in &events {
        assert_eq!(
            key,
            &e["type"].as_str().unwrap().replace('-', "."),
            "routing key"
        );
        assert_eq!(e["hostname"], node.as_str(), "{e}");
        assert!(e["timestamp"].is_f64(), "timestamp in float seconds: {e}");
        assert!(e["utcoffset"].is_number(), "{e}");
        assert_eq!(e["pid"], worker.child.id(), "{e}");
        let clock = e["clock"].as_u64().expect("clock");
        assert!(clock > last_clock, "clock moves forward: {e}");
        last_clock = clock;
    }
    let of = |id: &str| -> Vec<&str> {
        events
            .iter()
            .filter(|(_, e)| e["uuid"] == id)
            .filter_map(|(_, e)| e["type"].as_str())
            .collect()
    };
    assert_eq!(
        of(&ok.id),
        ["task-received", "task-started", "task-succeeded"]
    );
    let r = of(&retried.id);
    assert_eq!(
        r.iter().filter(|t| **t == "task-retried").count(),
        3,
        "{r:?}"
    );
    assert_eq!(r.last(), Some(&"task-failed"), "{r:?}");
    let beat = &events
        .iter()
        .find(|(_, e)| e["type"] == "worker-heartbeat")
        .unwrap()
        .1;
    assert_eq!(beat["freq"], 2.0, "{beat}");
    assert_eq!(beat["loadavg"].as_array().map(Vec::len), Some(3), "{beat}");
    for field in ["active", "processed", "sw_ident", "sw_ver", "sw_sys"] {
        assert!(!beat[field].is_null(), "{field} missing: {beat}");
    }

    // Celery's own State reads them as it reads a Python worker's.
    let state = celery_state(&events);
    let w = &state["workers"][node.as_str()];
    assert_eq!(w["alive"], true, "{state}");
    assert_eq!(w["freq"], 2.0, "{state}");
    assert_eq!(w["sw_ident"], "staffprobot-worker", "{state}");
    let t = &state["tasks"][ok.id.as_str()];
    assert_eq!(t["state"], "SUCCESS", "{state}");
    assert_eq!(t["name"], "worker.echo", "{state}");
    assert_eq!(t["worker"], node.as_str(), "{state}");
    assert_eq!(t["result"], "{'args': [1], 'kwargs': {}}", "{state}");
    assert!(t["runtime"].as_f64().is_some(), "{state}");
    let t = &state["tasks"][retried.id.as_str()];
    assert_eq!(t["state"], "FAILURE", "{state}");
    assert_eq!(t["exception"], "ValueError('again')", "{state}");

    // disable_events: Celery's reply, then nothing more, not even heartbeats.
    let out = tokio::task::spawn_blocking({
        let control = control.clone();
        move || run_python("events_state.py", &["disable", &control])
    })
    .await
    .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(
        stdout(&out).contains("task events disabled"),
        "{}",
        stdout(&out)
    );
    tokio::time::sleep(Duration::from_millis(300)).await;
    take(&channel, &listen).await;
    let quiet = OutgoingTask::new("worker.ping", vec![], Map::new());
    publish_task(&channel, &queue, &quiet).await;
    wait_result(&quiet.id, Some("SUCCESS"), Duration::from_secs(10))
        .await
        .expect("SUCCESS");
    tokio::time::sleep(Duration::from_millis(4500)).await;
    let after = take(&channel, &listen).await;
    assert!(after.is_empty(), "events after disable_events: {after:?}");

    // enable_events: online again; SIGTERM: offline last.
    let out = tokio::task::spawn_blocking({
        let control = control.clone();
        move || run_python("events_state.py", &["enable", &control])
    })
    .await
    .unwrap();
    assert!(
        stdout(&out).contains("task events enabled"),
        "{}{}",
        stdout(&out),
        stderr(&out)
    );
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let mut worker = worker;
    let status = Command::new("kill")
        .args(["-TERM", &worker.child.id().to_string()])
        .status()
        .expect("kill");
    assert!(status.success());
    let exited = wait_until(Duration::from_secs(15), || {
        let exited = matches!(worker.child.try_wait(), Ok(Some(_)));
        async move { exited }
    })
    .await;
    assert!(exited, "worker did not stop:\n{}", worker.logs());
    let last: Vec<String> = take(&channel, &listen)
        .await
        .into_iter()
        .filter_map(|(_, e)| e["type"].as_str().map(str::to_owned))
        .collect();
    assert_eq!(
        last.first().map(String::as_str),
        Some("worker-online"),
        "{last:?}"
    );
    assert_eq!(
        last.last().map(String::as_str),
        Some("worker-offline"),
        "{last:?}"
    );

    drop(worker);
    delete_queue(&channel, &queue).await;
    let _ = channel
        .queue_delete(listen.as_str().into(), Default::default())
        .await;
    for exchange in [
        exchange.clone(),
        format!("{control}.pidbox"),
        format!("reply.{control}.pidbox"),
    ] {
        let _ = channel
            .exchange_delete(exchange.as_str().into(), Default::default())
            .await;
    }
}

/// Events that cannot be published never fail or hold up a task: the event exchange exists
/// with another type (RabbitMQ refuses the publisher's declaration with 406, again at each
/// reconnection), and every task still succeeds.
#[tokio::test(flavor = "multi_thread")]
async fn tasks_succeed_when_events_cannot_be_published() {
    let queue = unique("events-refused");
    let exchange = format!("{queue}.ev");
    let (_c, channel) = amqp().await;
    worker::topology::declare_with_dead_letter(&channel, &queue)
        .await
        .expect("declare");
    channel
        .exchange_declare(
            exchange.as_str().into(),
            lapin::ExchangeKind::Fanout,
            ExchangeDeclareOptions::default(),
            FieldTable::default(),
        )
        .await
        .unwrap();
    let worker = WorkerProcess::start(
        std::slice::from_ref(&queue),
        &[
            ("WORKER_SEND_EVENTS", "true"),
            ("WORKER_EVENT_EXCHANGE", exchange.as_str()),
        ],
    );
    worker.wait_for_log("events publisher failed", Duration::from_secs(10));
    let tasks: Vec<OutgoingTask> = (0..20)
        .map(|_| OutgoingTask::new("worker.ping", vec![], Map::new()))
        .collect();
    for t in &tasks {
        publish_task(&channel, &queue, t).await;
    }
    for t in &tasks {
        wait_result(&t.id, Some("SUCCESS"), Duration::from_secs(10))
            .await
            .unwrap_or_else(|| panic!("{} not SUCCESS:\n{}", t.id, worker.logs()));
    }
    let metrics = reqwest::get(format!("http://{}/metrics", worker.http_addr()))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(metrics.contains("worker_events_dropped_total"), "{metrics}");
    assert!(worker.is_alive_now(), "{}", worker.logs());

    drop(worker);
    delete_queue(&channel, &queue).await;
    let _ = channel
        .exchange_delete(exchange.as_str().into(), Default::default())
        .await;
}
