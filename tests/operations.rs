//! The operations surface of a running worker: /healthz, /readyz, /metrics (parsed as
//! Prometheus text), /results/{id} against `worker result`, and no secret in `worker config`,
//! /readyz or the logs.

mod harness;

use std::time::Duration;

use harness::*;
use serde_json::Value;

const PG_URL: &str = "postgresql://postgres@127.0.0.1:5432/postgres";

async fn get(url: &str) -> (u16, String) {
    let r = reqwest::get(url).await.expect("HTTP GET");
    (r.status().as_u16(), r.text().await.expect("body"))
}

fn counter(metrics: &str, name: &str, task: &str) -> f64 {
    let lines = metrics.lines().map(|l| Ok(l.to_owned()));
    let scrape =
        prometheus_parse::Scrape::parse(lines).expect("/metrics parses as Prometheus text");
    scrape
        .samples
        .iter()
        .filter(|s| s.metric == name && s.labels.get("task") == Some(task))
        .map(|s| match s.value {
            prometheus_parse::Value::Counter(v)
            | prometheus_parse::Value::Untyped(v)
            | prometheus_parse::Value::Gauge(v) => v,
            _ => 0.0,
        })
        .sum()
}

#[tokio::test(flavor = "multi_thread")]
async fn health_readiness_metrics_and_results_over_http() {
    let queue = unique("ops");
    let worker = WorkerProcess::start(std::slice::from_ref(&queue), &[("DATABASE_URL", PG_URL)]);
    let base = format!("http://{}", worker.http_addr());

    assert_eq!(get(&format!("{base}/healthz")).await.0, 200);
    let (code, body) = get(&format!("{base}/readyz")).await;
    assert_eq!(code, 200, "{body}");
    let ready: Value = serde_json::from_str(&body).unwrap();
    for dep in ["broker", "redis", "postgres"] {
        assert_eq!(ready["checks"][dep]["ok"], true, "{body}");
    }

    let (_, before) = get(&format!("{base}/metrics")).await;
    // Every per-task, per-queue series exists from startup at 0, so the README's error-rate
    // query (failed / started) has data before the first failure.
    for name in [
        "worker_tasks_started_total",
        "worker_tasks_succeeded_total",
        "worker_tasks_failed_total",
        "worker_tasks_retried_total",
        "worker_tasks_with_errors_total",
    ] {
        for task in ["worker.ping", "worker.fail", "worker.sleep"] {
            let line = format!("{name}{{queue=\"{queue}\",task=\"{task}\"}} 0");
            assert!(
                before.lines().any(|l| l == line),
                "{line} missing:\n{before}"
            );
        }
    }
    let line = format!("worker_panics_total{{queue=\"{queue}\"}} 0");
    assert!(before.lines().any(|l| l == line), "{line} missing");
    assert!(
        before.contains("worker_task_duration_seconds_count{task=\"worker.fail\"} 0"),
        "histogram not initialised"
    );
    let started_before = counter(&before, "worker_tasks_started_total", "worker.ping");
    let q = queue.clone();
    let id = tokio::task::spawn_blocking(move || {
        let out = cli(&[
            "send",
            "worker.ping",
            "--queue",
            &q,
            "--wait",
            "--timeout",
            "30",
        ]);
        assert_eq!(out.status.code(), Some(0), "{}", stdout(&out));
        let out = cli(&[
            "send",
            "worker.fail",
            "--queue",
            &q,
            "--wait",
            "--timeout",
            "30",
        ]);
        assert_eq!(out.status.code(), Some(1));
        stdout(&out)
            .lines()
            .next()
            .unwrap()
            .trim_start_matches("id:")
            .trim()
            .to_owned()
    })
    .await
    .unwrap();
    let (_, after) = get(&format!("{base}/metrics")).await;
    assert_eq!(
        counter(&after, "worker_tasks_started_total", "worker.ping"),
        started_before + 1.0,
        "{after}"
    );
    assert_eq!(
        counter(&after, "worker_tasks_succeeded_total", "worker.ping"),
        started_before + 1.0
    );
    assert!(counter(&after, "worker_tasks_failed_total", "worker.fail") >= 1.0);
    assert!(
        after.contains("worker_task_duration_seconds_bucket"),
        "histogram missing"
    );
    assert!(
        after.contains("process_resident_memory_bytes"),
        "process metrics missing"
    );
    assert!(
        after.contains("worker_dependency_up{dependency=\"redis\"} 1"),
        "{after}"
    );

    // /results/{id} is what `worker result --json` prints.
    let (code, body) = get(&format!("{base}/results/{id}")).await;
    assert_eq!(code, 200);
    let over_http: Value = serde_json::from_str(&body).unwrap();
    let out = tokio::task::spawn_blocking(move || cli(&["result", &id, "--json"]))
        .await
        .unwrap();
    let from_cli: Value = serde_json::from_str(stdout(&out).trim()).unwrap();
    assert_eq!(over_http, from_cli);
    assert_eq!(over_http["result"]["exc_type"], "ValueError");
    let (code, body) = get(&format!("{base}/results/{}", uuid::Uuid::new_v4())).await;
    assert_eq!(code, 404, "{body}");

    let (_c, channel) = amqp().await;
    delete_queue(&channel, &queue).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn secrets_never_appear_in_config_readyz_or_logs() {
    let queue = unique("secrets");
    // Known secrets: a PostgreSQL password (trust auth ignores it) and a bot token for the
    // running worker; made-up broker and Redis passwords for `worker config`.
    let token = "123456:SECRET-telegram-token";
    let pg = "postgresql://postgres:pg-SECRET-pw@127.0.0.1:5432/postgres";
    let env = [
        ("DATABASE_URL", pg),
        ("TELEGRAM_BOT_TOKEN", token),
        ("RUST_LOG", "debug"),
    ];
    let worker = WorkerProcess::start(std::slice::from_ref(&queue), &env);
    let base = format!("http://{}", worker.http_addr());
    let (_, readyz) = get(&format!("{base}/readyz")).await;

    let config = std::process::Command::new(env!("CARGO_BIN_EXE_worker"))
        .args(["config", "--json"])
        .env(
            "RABBITMQ_URL",
            "amqp://admin:amqp-SECRET-pw@rabbit:5672/%2f",
        )
        .env("REDIS_URL", "redis://:redis-SECRET-pw@redis:6379/0")
        .env("DATABASE_URL", pg)
        .env("TELEGRAM_BOT_TOKEN", token)
        .output()
        .unwrap();
    let config_text = stdout(&config);
    let doc: Value = serde_json::from_str(&config_text).expect("config --json");
    assert_eq!(doc["RABBITMQ_URL"], "amqp://admin:***@rabbit:5672/%2f");
    assert_eq!(doc["TELEGRAM_BOT_TOKEN"], "***");

    let q = queue.clone();
    tokio::task::spawn_blocking(move || {
        let out = cli(&[
            "send",
            "worker.ping",
            "--queue",
            &q,
            "--wait",
            "--timeout",
            "30",
        ]);
        assert_eq!(out.status.code(), Some(0));
    })
    .await
    .unwrap();
    let logs = worker.wait_for_log_count("task finished", 1, Duration::from_secs(5));
    for secret in [
        "SECRET-telegram-token",
        "pg-SECRET-pw",
        "amqp-SECRET-pw",
        "redis-SECRET-pw",
    ] {
        assert!(
            !config_text.contains(secret),
            "{secret} in `worker config`:\n{config_text}"
        );
        assert!(!readyz.contains(secret), "{secret} in /readyz:\n{readyz}");
        assert!(!logs.contains(secret), "{secret} in the logs:\n{logs}");
    }
    assert!(
        logs.contains("task finished"),
        "the logs were captured:\n{logs}"
    );
    let (_c, channel) = amqp().await;
    delete_queue(&channel, &queue).await;
}

#[test]
fn config_file_fills_what_the_environment_leaves_unset() {
    let path = std::env::temp_dir().join(format!("{}.toml", unique("config")));
    std::fs::write(
        &path,
        "WORKER_CONCURRENCY = 7\nWORKER_QUEUES = [\"a\", \"b\"]\nRABBITMQ_URL = \"amqp://app:file-SECRET@rabbit:5672/%2f\"\nRESULT_EXPIRES = 60\n",
    )
    .unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_worker"))
        .args(["config", "--json", "--config", path.to_str().unwrap()])
        .env_remove("WORKER_CONCURRENCY")
        .env_remove("WORKER_QUEUES")
        .env_remove("RABBITMQ_URL")
        .env("RESULT_EXPIRES", "120") // the environment wins over the file
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    let text = stdout(&out);
    let doc: Value = serde_json::from_str(&text).unwrap();
    assert_eq!(doc["WORKER_CONCURRENCY"], 7);
    assert_eq!(doc["WORKER_QUEUES"], "a,b");
    assert_eq!(doc["RESULT_EXPIRES"], 120);
    assert_eq!(doc["RABBITMQ_URL"], "amqp://app:***@rabbit:5672/%2f");
    assert!(!text.contains("file-SECRET"));

    std::fs::write(&path, "worker_concurrency = 7\n").unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_worker"))
        .args(["config", "--config", path.to_str().unwrap()])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(
        stderr(&out).contains("use the environment variable names"),
        "{}",
        stderr(&out)
    );
    let _ = std::fs::remove_file(&path);
}
