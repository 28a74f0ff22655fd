//! Real Flower 2.2 (from .venv) against two replicas of our worker on the shared RabbitMQ, each with this test's
//! own event exchange and remote-control namespace: the worker starts with events off, Flower's
//! periodic `enable_events` turns them on (heartbeats make it count the worker online), its
//! `inspect` lists the worker's registered tasks and active queues, its task pages (built from
//! our events) show state, name, worker, args, result or exception, and a revoke through its API
//! of a task waiting on a countdown ends REVOKED.

mod harness;

use std::net::TcpListener;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use chrono::Utc;
use harness::*;
use serde_json::{Map, Value, json};
use worker::wire::OutgoingTask;

/// A Flower process, stopped by PID when the test ends.
struct Flower {
    child: Child,
    base: String,
    log: std::path::PathBuf,
}

impl Flower {
    fn start(event_exchange: &str, control_exchange: &str) -> Self {
        // A free loopback port: bound, read, released (Flower binds it a moment later).
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("free port")
            .port();
        let log = std::env::temp_dir().join(format!("{}.log", unique("flower")));
        let file = std::fs::File::create(&log).expect("flower log");
        let child = Command::new(root().join(".venv/bin/celery"))
            .args(["-A", "flower_app", "flower", "--address=127.0.0.1"])
            .arg(format!("--port={port}"))
            .current_dir(root().join("tests/python"))
            .env("PYTHONPATH", root().join("tests/python"))
            .env("RABBITMQ_URL", RABBITMQ_URL)
            .env("REDIS_URL", REDIS_URL)
            .env("EVENT_EXCHANGE", event_exchange)
            .env("CONTROL_EXCHANGE", control_exchange)
            .env("FLOWER_UNAUTHENTICATED_API", "true")
            .stdout(Stdio::null())
            .stderr(file)
            .spawn()
            .expect("start flower from .venv (scripts/test installs it)");
        Self {
            child,
            base: format!("http://127.0.0.1:{port}"),
            log,
        }
    }

    fn logs(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    async fn get(&self, path: &str) -> Option<Value> {
        let r = reqwest::get(format!("{}{path}", self.base)).await.ok()?;
        if !r.status().is_success() {
            return None;
        }
        r.json().await.ok()
    }
}

impl Drop for Flower {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Wait up to `secs` for `path` to answer something `check` accepts; that answer.
async fn wait_for(flower: &Flower, path: &str, secs: u64, check: impl Fn(&Value) -> bool) -> Value {
    let deadline = std::time::Instant::now() + Duration::from_secs(secs);
    let mut last = Value::Null;
    while std::time::Instant::now() < deadline {
        if let Some(v) = flower.get(path).await {
            if check(&v) {
                return v;
            }
            last = v;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    panic!(
        "Flower's {path} never matched; last: {last}\nflower log:\n{}",
        flower.logs()
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn flower_sees_workers_and_tasks_and_revokes() {
    let queue = unique("flower");
    let events = format!("{queue}.ev");
    let control = format!("{queue}-ctl");
    // Two replicas: Flower lists each.
    let nodes = [format!("celery@{queue}-a"), format!("celery@{queue}-b")];
    let (_c, channel) = amqp().await;
    worker::topology::declare_with_dead_letter(&channel, &queue)
        .await
        .expect("declare");

    let flower = Flower::start(&events, &control);
    // Events off at startup: they start with Flower's `enable_events`.
    let replicas: Vec<WorkerProcess> = nodes
        .iter()
        .map(|node| {
            WorkerProcess::start(
                std::slice::from_ref(&queue),
                &[
                    ("WORKER_EVENT_EXCHANGE", events.as_str()),
                    ("WORKER_CONTROL_EXCHANGE", control.as_str()),
                    ("WORKER_HOSTNAME", node.as_str()),
                    // The countdown task waits in memory, where a revoke finds it.
                    ("WORKER_ETA_HOLD", "60"),
                ],
            )
        })
        .collect();

    // Online in Flower: its enable_events reached us and our heartbeats reached it.
    wait_for(&flower, "/api/workers?status=true", 30, |v| {
        nodes.iter().all(|n| v[n.as_str()] == json!(true))
    })
    .await;
    let workers = wait_for(&flower, "/api/workers?refresh=true", 15, |v| {
        nodes.iter().all(|n| {
            v[n.as_str()]["registered"].is_array() && v[n.as_str()]["active_queues"].is_array()
        })
    })
    .await;
    for node in &nodes {
        let me = &workers[node.as_str()];
        let registered: Vec<&str> = me["registered"]
            .as_array()
            .unwrap()
            .iter()
            .filter_map(Value::as_str)
            .collect();
        assert!(
            registered.contains(&"worker.echo") && registered.contains(&"worker.fail"),
            "{me}"
        );
        assert!(
            me["active_queues"]
                .as_array()
                .unwrap()
                .iter()
                .any(|q| q["name"] == queue.as_str()),
            "{me}"
        );
    }
    let one_of_ours = |w: &Value| nodes.iter().any(|n| w == n.as_str());

    let ok = OutgoingTask::new("worker.echo", vec![json!(2), json!("two")], Map::new());
    let failing = OutgoingTask::new("worker.fail", vec![json!("flower sees this")], Map::new());
    let mut later = OutgoingTask::new("worker.ping", vec![], Map::new());
    later.eta = Some(Utc::now() + chrono::Duration::seconds(8));
    for t in [&ok, &failing, &later] {
        publish_task(&channel, &queue, t).await;
    }

    let info = |id: &str| format!("/api/task/info/{id}");
    let done = wait_for(&flower, &info(&ok.id), 20, |v| v["state"] == "SUCCESS").await;
    assert_eq!(done["name"], "worker.echo", "{done}");
    assert!(one_of_ours(&done["worker"]), "{done}");
    // The producer's `argsrepr`, shown as it sent it (as Celery does).
    assert!(
        done["args"]
            .as_str()
            .is_some_and(|a| a.contains('2') && a.contains("two")),
        "{done}"
    );
    assert!(
        done["result"].as_str().is_some_and(|r| r.contains("'two'")),
        "{done}"
    );
    assert!(done["runtime"].as_f64().is_some(), "{done}");

    let failed = wait_for(&flower, &info(&failing.id), 20, |v| v["state"] == "FAILURE").await;
    assert_eq!(failed["name"], "worker.fail", "{failed}");
    assert_eq!(
        failed["exception"], "ValueError('flower sees this')",
        "{failed}"
    );
    assert!(failed["traceback"].as_str().is_some(), "{failed}");

    // The countdown task is known to Flower (task-received) and waits: revoke it from Flower.
    wait_for(&flower, &info(&later.id), 10, |v| v["state"] == "RECEIVED").await;
    let revoked = reqwest::Client::new()
        .post(format!("{}/api/task/revoke/{}", flower.base, later.id))
        .send()
        .await
        .expect("POST revoke");
    assert!(revoked.status().is_success(), "{revoked:?}");
    let gone = wait_for(&flower, &info(&later.id), 20, |v| v["state"] == "REVOKED").await;
    assert!(one_of_ours(&gone["worker"]), "{gone}");
    let stored = wait_result(&later.id, Some("REVOKED"), Duration::from_secs(5)).await;
    assert!(stored.is_some(), "REVOKED not stored");

    // The task list holds all three, with their states.
    let tasks = flower.get("/api/tasks").await.expect("/api/tasks");
    assert_eq!(tasks[ok.id.as_str()]["state"], "SUCCESS", "{tasks}");
    assert_eq!(tasks[failing.id.as_str()]["state"], "FAILURE", "{tasks}");
    assert_eq!(tasks[later.id.as_str()]["state"], "REVOKED", "{tasks}");

    // A graceful shutdown (SIGTERM) of one replica: Flower counts it offline (worker-offline,
    // tests/events.rs checks it is sent), the other stays online.
    let status = Command::new("kill")
        .args(["-TERM", &replicas[0].child.id().to_string()])
        .status()
        .expect("kill");
    assert!(status.success());
    wait_for(&flower, "/api/workers?status=true", 15, |v| {
        v[nodes[0].as_str()] == json!(false) && v[nodes[1].as_str()] == json!(true)
    })
    .await;
    drop(replicas);

    drop(flower);
    delete_queue(&channel, &queue).await;
    for exchange in [
        events.clone(),
        format!("{control}.pidbox"),
        format!("reply.{control}.pidbox"),
    ] {
        let _ = channel
            .exchange_delete(exchange.as_str().into(), Default::default())
            .await;
    }
}
