//! Remote control over kombu's mailbox with a real Celery 5.7 client (`app.control`), and the
//! `worker inspect` / `worker revoke` commands: each test has its own control exchange
//! (Celery's `control_exchange`, our WORKER_CONTROL_EXCHANGE), its own queue, node names and
//! Redis key prefix, so parallel tests never hear each other.

mod harness;

use std::time::Duration;

use harness::*;
use serde_json::Value;

/// One test's names.
struct Names {
    namespace: String,
    queue: String,
    prefix: String,
}

impl Names {
    fn new(what: &str) -> Self {
        let base = unique(what);
        Self {
            namespace: format!("{base}-ctl"),
            queue: format!("{base}-q"),
            prefix: format!("{base}:"),
        }
    }

    fn node(&self, n: &str) -> String {
        format!("{n}@{}", self.queue)
    }

    fn start(&self, node: &str, extra: &[(&str, &str)]) -> WorkerProcess {
        let mut env = vec![
            ("WORKER_CONTROL_EXCHANGE", self.namespace.as_str()),
            ("WORKER_HOSTNAME", node),
            ("WORKER_KEY_PREFIX", self.prefix.as_str()),
        ];
        env.extend_from_slice(extra);
        let w = WorkerProcess::start(std::slice::from_ref(&self.queue), &env);
        // The mailbox has its own connection: wait until it listens too.
        w.wait_for_log("remote control mailbox listening", Duration::from_secs(20));
        w
    }

    /// Run a check of tests/python/remote_control.py; its stdout.
    async fn python(&self, check: &str, args: &[&str], workers: &[&WorkerProcess]) -> String {
        let mut all = vec![self.namespace.clone(), check.to_owned()];
        all.extend(args.iter().map(|s| s.to_string()));
        let out = tokio::task::spawn_blocking(move || {
            let refs: Vec<&str> = all.iter().map(String::as_str).collect();
            run_python("remote_control.py", &refs)
        })
        .await
        .unwrap();
        let text = stdout(&out);
        let logs: Vec<String> = workers.iter().map(|w| w.logs()).collect();
        assert!(
            out.status.success(),
            "python {check} failed:\n{text}\n{}\nworker logs:\n{}",
            stderr(&out),
            logs.join("\n-----\n")
        );
        text
    }

    async fn cleanup(&self) {
        let (_conn, channel) = amqp().await;
        delete_queue(&channel, &self.queue).await;
        for ex in [
            format!("{}.pidbox", self.namespace),
            format!("reply.{}.pidbox", self.namespace),
        ] {
            let _ = channel
                .exchange_delete(ex.as_str().into(), Default::default())
                .await;
        }
        clean_prefix(&self.prefix).await;
    }
}

async fn clean_prefix(prefix: &str) {
    let mut redis = redis().await;
    let _: Result<(), _> = redis::cmd("DEL")
        .arg(format!("{prefix}revoked"))
        .arg(format!("{prefix}delayed"))
        .arg(format!("{prefix}delayed:inflight"))
        .query_async(&mut redis)
        .await;
}

fn result_line(text: &str) -> Value {
    let line = text
        .lines()
        .find_map(|l| l.strip_prefix("result "))
        .unwrap_or_else(|| panic!("no result line in:\n{text}"));
    serde_json::from_str(line).unwrap()
}

/// The stored result document of `id`.
async fn stored(id: &str) -> Option<Value> {
    let mut redis = redis().await;
    let raw: Option<String> = redis::cmd("GET")
        .arg(format!("celery-task-meta-{id}"))
        .query_async(&mut redis)
        .await
        .unwrap();
    raw.map(|s| serde_json::from_str(&s).unwrap())
}

#[tokio::test(flavor = "multi_thread")]
async fn inspect_calls_are_answered_by_each_replica() {
    let t = Names::new("rc-inspect");
    let (a, b) = (t.node("a"), t.node("b"));
    let wa = t.start(&a, &[]);
    let wb = t.start(&b, &[]);
    let nodes = format!("{a},{b}");
    let text = t.python("inspect", &[&nodes, &t.queue], &[&wa, &wb]).await;
    for check in [
        "ok ping",
        "ok registered",
        "ok stats",
        "ok active_queues",
        "ok active",
        "ok reserved",
        "ok scheduled",
        "ok revoked",
        "ok conf",
        "ok query_task",
        "ok enable_events/disable_events",
        "ok unknown command",
        "ok destination",
    ] {
        assert!(text.contains(check), "missing {check:?} in:\n{text}");
    }
    t.cleanup().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_task_revoked_before_its_eta_never_runs() {
    let t = Names::new("rc-eta");
    let w = t.start(&t.node("a"), &[]);
    // Held in memory (eta within WORKER_ETA_HOLD, 5 s by default)...
    let text = t.python("revoke_before_eta", &[&t.queue, "4"], &[&w]).await;
    assert!(text.contains("ok scheduled shows the held task"), "{text}");
    assert!(text.contains("ok never ran"), "{text}");
    let held = result_line(&text)["id"].as_str().unwrap().to_owned();
    // ...and parked in the delayed store, then published again when due.
    let text = t.python("revoke_before_eta", &[&t.queue, "7"], &[&w]).await;
    assert!(text.contains("ok never ran"), "{text}");
    let parked = result_line(&text)["id"].as_str().unwrap().to_owned();
    for id in [&held, &parked] {
        let doc = stored(id).await.expect("a result is stored");
        assert_eq!(doc["status"], "REVOKED", "{doc}");
        assert_eq!(doc["result"]["exc_type"], "TaskRevokedError", "{doc}");
        assert_eq!(doc["result"]["exc_module"], "celery.exceptions", "{doc}");
        assert_eq!(doc["result"]["exc_message"][0], "revoked", "{doc}");
    }
    // The worker saw both messages come and discarded them.
    let logs = w.wait_for_log_count("Discarding revoked task", 2, Duration::from_secs(10));
    assert!(logs.contains(&parked) && logs.contains(&held), "{logs}");
    t.cleanup().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn revoke_with_terminate_stops_a_running_task_within_a_second() {
    let t = Names::new("rc-term");
    let w = t.start(&t.node("a"), &[]);
    let text = t.python("terminate", &[&t.queue], &[&w]).await;
    assert!(text.contains("ok active shows the running task"), "{text}");
    assert!(text.contains("ok query_task finds it active"), "{text}");
    let r = result_line(&text);
    assert!(r["took"].as_f64().unwrap() < 1.0, "{r}");
    let doc = stored(r["id"].as_str().unwrap()).await.unwrap();
    assert_eq!(doc["status"], "REVOKED", "{doc}");
    assert_eq!(doc["result"]["exc_type"], "TaskRevokedError", "{doc}");
    assert_eq!(doc["result"]["exc_message"][0], "terminated", "{doc}");
    // The worker is free again at once: a new task runs.
    let out = tokio::task::spawn_blocking({
        let (ns, q) = (t.namespace.clone(), t.queue.clone());
        move || run_python("remote_control.py", &[&ns, "terminate", &q])
    })
    .await
    .unwrap();
    assert!(out.status.success(), "{}\n{}", stdout(&out), stderr(&out));
    t.cleanup().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_revoke_reaches_both_replicas_and_survives_a_restart() {
    let t = Names::new("rc-two");
    let (a, b) = (t.node("a"), t.node("b"));
    let wa = t.start(&a, &[]);
    let wb = t.start(&b, &[]);
    let id = uuid::Uuid::new_v4().to_string();
    let nodes = format!("{a},{b}");
    let text = t.python("revoke_id", &[&id, &nodes], &[&wa, &wb]).await;
    assert!(text.contains("ok every replica took the revoke"), "{text}");
    assert!(text.contains("ok every replica lists it"), "{text}");
    // Sent again under that id, six times: whichever replica gets each copy drops it.
    let text = t
        .python("send_with_id", &[&t.queue, &id, "6"], &[&wa, &wb])
        .await;
    assert!(text.contains("ok sent again, still not run"), "{text}");
    let discarded = wa.logs().matches("Discarding revoked task").count()
        + wb.logs().matches("Discarding revoked task").count();
    assert_eq!(discarded, 6, "a: {}\nb: {}", wa.logs(), wb.logs());

    // Both replicas go; a new one (a new node name, a fresh process) still knows the id.
    drop(wa);
    drop(wb);
    let c = t.node("c");
    let wc = t.start(&c, &[]);
    let text = t.python("revoked_on", &[&id, &c], &[&wc]).await;
    assert!(text.contains("ok revoked after restart"), "{text}");
    let text = t
        .python("send_with_id", &[&t.queue, &id, "1"], &[&wc])
        .await;
    assert!(text.contains("ok sent again, still not run"), "{text}");
    wc.wait_for_log("Discarding revoked task", Duration::from_secs(5));
    // The bound is in Redis too: the key expires by itself.
    let mut redis = redis().await;
    let ttl: i64 = redis::cmd("PTTL")
        .arg(format!("{}revoked", t.prefix))
        .query_async(&mut redis)
        .await
        .unwrap();
    assert!(ttl > 0 && ttl <= 3 * 3600 * 1000, "{ttl}");
    t.cleanup().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn worker_inspect_and_worker_revoke_round_trip() {
    let t = Names::new("rc-cli");
    let node = t.node("a");
    let w = t.start(&node, &[]);
    let cli_env = |args: &[&str]| {
        std::process::Command::new(env!("CARGO_BIN_EXE_worker"))
            .args(args)
            .env("RABBITMQ_URL", RABBITMQ_URL)
            .env("REDIS_URL", REDIS_URL)
            .env("WORKER_CONTROL_EXCHANGE", &t.namespace)
            .env("LOG_FORMAT", "text")
            .output()
            .expect("run worker CLI")
    };
    let out = cli_env(&["inspect", "ping", "--json", "--timeout", "3"]);
    assert!(out.status.success(), "{}\n{}", stdout(&out), stderr(&out));
    let doc: Value = serde_json::from_str(stdout(&out).trim()).unwrap();
    assert_eq!(doc, serde_json::json!({ node.clone(): {"ok": "pong"} }));

    let out = cli_env(&["inspect", "ping", "--timeout", "3"]);
    let text = stdout(&out);
    assert!(
        text.contains(&format!("->  {node}: OK")) && text.contains("pong"),
        "{text}"
    );
    assert!(text.contains("1 node online."), "{text}");

    let out = cli_env(&["inspect", "registered", "--json", "--timeout", "3"]);
    let doc: Value = serde_json::from_str(stdout(&out).trim()).unwrap();
    let names: Vec<&str> = doc[&node]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(Value::as_str)
        .collect();
    assert!(names.contains(&"worker.sleep"), "{doc}");
    for method in ["stats", "active", "scheduled"] {
        let out = cli_env(&["inspect", method, "--json", "--timeout", "3"]);
        assert!(out.status.success(), "{method}: {}", stderr(&out));
        let doc: Value = serde_json::from_str(stdout(&out).trim()).unwrap();
        assert!(doc.get(&node).is_some(), "{method}: {doc}");
    }

    // No such node: nobody answers, exit 2.
    let out = cli_env(&["inspect", "ping", "-d", "nobody@nowhere", "--timeout", "1"]);
    assert_eq!(out.status.code(), Some(2), "{}", stdout(&out));
    assert!(
        stderr(&out).contains("No nodes replied"),
        "{}",
        stderr(&out)
    );

    // `worker revoke --terminate` of a running worker.sleep: REVOKED within a second.
    let (_conn, channel) = amqp().await;
    let task = worker::wire::OutgoingTask::new(
        "worker.sleep",
        vec![serde_json::json!(30)],
        Default::default(),
    );
    publish_task(&channel, &t.queue, &task).await;
    let running = wait_until(Duration::from_secs(10), || async {
        let out = cli_env(&["inspect", "active", "--json", "--timeout", "2"]);
        stdout(&out).contains(&task.id)
    })
    .await;
    assert!(
        running,
        "the task never showed as active; log:\n{}",
        w.logs()
    );
    let started = std::time::Instant::now();
    let out = cli_env(&[
        "revoke",
        &task.id,
        "--terminate",
        "--json",
        "--timeout",
        "3",
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    let doc: Value = serde_json::from_str(stdout(&out).trim()).unwrap();
    assert_eq!(doc[&node]["ok"], format!("terminate: {}", task.id), "{doc}");
    let revoked = wait_until(Duration::from_secs(5), || async {
        stored(&task.id)
            .await
            .is_some_and(|d| d["status"] == "REVOKED")
    })
    .await;
    assert!(revoked, "not REVOKED; log:\n{}", w.logs());
    // The CLI's own reply wait (up to its timeout after the last reply) is part of `elapsed`;
    // the stored date says when the worker actually stopped the task.
    let doc = stored(&task.id).await.unwrap();
    assert_eq!(doc["result"]["exc_message"][0], "terminated", "{doc}");
    assert!(started.elapsed() < Duration::from_secs(8));

    // Plain `worker revoke` of an id: flagged, listed by `inspect revoked`.
    let other = uuid::Uuid::new_v4().to_string();
    let out = cli_env(&["revoke", &other, "--timeout", "3"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(
        stdout(&out).contains("flagged as revoked"),
        "{}",
        stdout(&out)
    );
    let out = cli_env(&["inspect", "revoked", "--json", "--timeout", "3"]);
    assert!(stdout(&out).contains(&other), "{}", stdout(&out));
    delete_queue(&channel, &t.queue).await;
    t.cleanup().await;
}

/// The same CLI against a Python Celery 5.7 worker: the protocol is kombu's, not ours. And a
/// revoke our worker holds reaches the Python worker as it starts (Celery's mingle `hello`).
#[tokio::test(flavor = "multi_thread")]
async fn worker_inspect_speaks_to_a_python_celery_worker() {
    let t = Names::new("rc-py");
    let node = t.node("py");
    let ours = t.start(&t.node("rs"), &[]);
    let cli = |args: &[&str]| {
        std::process::Command::new(env!("CARGO_BIN_EXE_worker"))
            .args(args)
            .env("RABBITMQ_URL", RABBITMQ_URL)
            .env("WORKER_CONTROL_EXCHANGE", &t.namespace)
            .output()
            .expect("run worker CLI")
    };
    let before = uuid::Uuid::new_v4().to_string();
    let out = cli(&["revoke", &before, "--timeout", "2"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let mut celery = std::process::Command::new(root().join(".venv/bin/celery"))
        .args([
            "-A",
            "remote_control_app",
            "worker",
            "--pool",
            "solo",
            "--without-gossip",
            "-n",
            &node,
            "-Q",
            &t.queue,
            "--loglevel",
            "WARNING",
        ])
        .current_dir(root().join("tests/python"))
        .env("RABBITMQ_URL", RABBITMQ_URL)
        .env("REDIS_URL", REDIS_URL)
        .env("CONTROL_EXCHANGE", &t.namespace)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("start a Python Celery worker");
    let py = |method: &str| {
        let out = cli(&["inspect", method, "--json", "--timeout", "2", "-d", &node]);
        serde_json::from_str::<Value>(stdout(&out).trim()).unwrap_or(Value::Null)
    };
    let answered = wait_until(Duration::from_secs(30), || async {
        py("ping") == serde_json::json!({ node.clone(): {"ok": "pong"} })
    })
    .await;
    let revoked = py("revoked");
    let after = uuid::Uuid::new_v4().to_string();
    let out = cli(&["revoke", &after, "--json", "--timeout", "2", "-d", &node]);
    let _ = celery.kill();
    let _ = celery.wait();
    assert!(
        answered,
        "the Python worker never answered; ours:\n{}",
        ours.logs()
    );
    assert!(
        revoked[&node]
            .as_array()
            .is_some_and(|ids| ids.contains(&Value::from(before.as_str()))),
        "the Python worker did not get our revoke at mingle: {revoked}"
    );
    let doc: Value = serde_json::from_str(stdout(&out).trim()).unwrap();
    assert_eq!(
        doc[&node]["ok"],
        format!("tasks {{'{after}'}} flagged as revoked"),
        "{doc}"
    );
    t.cleanup().await;
}

/// Garbage on the mailbox (not JSON, oversized, wrong shapes, replies asked for elsewhere) is
/// dropped; wrong arguments get error replies; the node answers afterwards.
#[tokio::test(flavor = "multi_thread")]
async fn garbage_on_the_mailbox_is_dropped_and_the_node_keeps_answering() {
    let t = Names::new("rc-bad");
    let node = t.node("a");
    let w = t.start(&node, &[]);
    let (_conn, channel) = amqp().await;
    let exchange = format!("{}.pidbox", t.namespace);
    let deep = format!("{}{}", "[".repeat(5000), "]".repeat(5000));
    let long_method = serde_json::json!({"method": "x".repeat(300)}).to_string();
    let many = serde_json::json!({"method": "ping", "destination": vec!["n"; 2000]}).to_string();
    let elsewhere = serde_json::json!({
        "method": "ping", "arguments": {}, "destination": null, "ticket": "t",
        "reply_to": {"exchange": "amq.direct", "routing_key": "stolen"}
    })
    .to_string();
    let bodies: Vec<Vec<u8>> = vec![
        b"not json".to_vec(),
        vec![0xff, 0xfe, 0x00],
        b"[]".to_vec(),
        b"{\"method\": 7}".to_vec(),
        vec![b' '; 200 * 1024],
        deep.into_bytes(),
        long_method.into_bytes(),
        many.into_bytes(),
        elsewhere.into_bytes(),
    ];
    for body in &bodies {
        channel
            .basic_publish(
                exchange.as_str().into(),
                "".into(),
                Default::default(),
                body,
                lapin::BasicProperties::default(),
            )
            .await
            .expect("publish")
            .await
            .expect("confirm");
    }
    let text = t.python("bad_arguments", &[&node], &[&w]).await;
    assert!(text.contains("ok bad arguments"), "{text}");
    assert!(w.is_alive_now(), "{}", w.logs());
    let logs = w.wait_for_log_count(
        "ignoring an unreadable remote control message",
        8,
        Duration::from_secs(5),
    );
    assert!(logs.contains("names another reply exchange"), "{logs}");
    t.cleanup().await;
}
