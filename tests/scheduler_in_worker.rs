//! The scheduler inside `worker run`: ticks become tasks the same worker runs, `/schedules` and
//! `worker schedules --json` show the last run with its result state, and `worker
//! check-schedules` accepts the shipped file and refuses a broken one with its line.

mod harness;

use std::time::Duration;

use harness::*;
use serde_json::Value;

#[tokio::test(flavor = "multi_thread")]
async fn ticks_run_in_the_worker_and_are_inspectable() {
    let queue = unique("sched-run");
    let prefix = format!("{queue}:");
    let file = std::env::temp_dir().join(format!("{queue}.toml"));
    std::fs::write(&file, format!("[[schedule]]\nname = \"ping-every-second\"\ntask = \"worker.ping\"\nevery = \"1s\"\nqueue = \"{queue}\"\n")).unwrap();
    let path = file.to_string_lossy().into_owned();
    let env = [
        ("WORKER_NO_SCHEDULER", "false"),
        ("SCHEDULES_FILE", path.as_str()),
        ("WORKER_KEY_PREFIX", prefix.as_str()),
        // The scheduler's claims and last runs live in PostgreSQL.
        ("DATABASE_URL", scheduler::SCHEDULER_DATABASE_URL),
    ];
    scheduler::scheduler_pool().await.close().await;
    let worker = WorkerProcess::start(std::slice::from_ref(&queue), &env);
    let base = format!("http://{}", worker.http_addr());

    let mut last = Value::Null;
    for _ in 0..50 {
        tokio::time::sleep(Duration::from_millis(200)).await;
        let body = reqwest::get(format!("{base}/schedules"))
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        last = serde_json::from_str(&body).unwrap();
        if last[0]["last_run"]["state"] == "SUCCESS" {
            break;
        }
    }
    assert_eq!(last[0]["name"], "ping-every-second", "{last}");
    assert_eq!(
        last[0]["last_run"]["state"],
        "SUCCESS",
        "{last}\n{}",
        worker.logs()
    );
    assert_eq!(last[0]["next"].as_array().map(Vec::len), Some(3));
    let metrics = reqwest::get(format!("{base}/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metrics.contains(
            "worker_schedule_last_tick_timestamp_seconds{schedule=\"ping-every-second\"}"
        ),
        "{metrics}"
    );

    let (p, f) = (prefix.clone(), path.clone());
    let out = tokio::task::spawn_blocking(move || {
        cli(&[
            "schedules",
            "--json",
            "--schedules",
            &f,
            "--key-prefix",
            &p,
            "--database-url",
            scheduler::SCHEDULER_DATABASE_URL,
        ])
    })
    .await
    .unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let listed: Value = serde_json::from_str(&stdout(&out)).unwrap();
    assert!(listed[0]["last_run"]["task_id"].is_string(), "{listed}");
    // One task per tick: a second tick comes a second later.
    for _ in 0..50 {
        if worker.logs().matches("task finished").count() >= 2 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        worker.logs().matches("task finished").count() >= 2,
        "{}",
        worker.logs()
    );

    drop(worker);
    let _ = std::fs::remove_file(&file);
    scheduler::clean_redis(&prefix).await;
    let (_c, channel) = amqp().await;
    delete_queue(&channel, &queue).await;
}

#[test]
fn check_schedules_accepts_the_shipped_file_and_refuses_a_broken_one() {
    let shipped = root().join("schedules.toml");
    let out = cli(&["check-schedules", shipped.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let text = stdout(&out);
    for name in [
        "process-reminders",
        "auto-close-shifts",
        "cleanup-cache",
        "plan-next-year-timeslots",
    ] {
        assert!(text.contains(name), "{name} missing:\n{text}");
    }
    let broken = std::env::temp_dir().join(format!("{}.toml", unique("broken")));
    std::fs::write(
        &broken,
        "[[schedule]]\nname = \"x\"\ntask = \"worker.ping\"\ncronn = \"* * * * *\"\n",
    )
    .unwrap();
    let out = cli(&["check-schedules", broken.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("line 4"), "{}", stderr(&out));
    assert!(stderr(&out).contains("cronn"), "{}", stderr(&out));
    let _ = std::fs::remove_file(&broken);
}

#[tokio::test(flavor = "multi_thread")]
async fn the_scheduler_alone_serves_health_readiness_and_tick_metrics() {
    let queue = unique("sched-alone");
    let prefix = format!("{queue}:");
    let file = std::env::temp_dir().join(format!("{queue}.toml"));
    std::fs::write(&file, format!("[[schedule]]\nname = \"alone-every-second\"\ntask = \"worker.ping\"\nevery = \"1s\"\nqueue = \"{queue}\"\n")).unwrap();
    let path = file.to_string_lossy().into_owned();
    scheduler::scheduler_pool().await.close().await;
    let scheduler = WorkerProcess::spawn(
        &["scheduler"],
        &[
            ("SCHEDULES_FILE", path.as_str()),
            ("WORKER_KEY_PREFIX", prefix.as_str()),
            ("DATABASE_URL", scheduler::SCHEDULER_DATABASE_URL),
        ],
    );
    assert_eq!(scheduler.ready["scheduler"], true, "{}", scheduler.ready);
    assert_eq!(scheduler.ready["queues"], serde_json::json!([]));
    let base = format!("http://{}", scheduler.http_addr());
    let health = reqwest::get(format!("{base}/healthz")).await.unwrap();
    assert_eq!(health.status(), 200);
    let ready = reqwest::get(format!("{base}/readyz")).await.unwrap();
    let status = ready.status();
    let body: Value = ready.json().await.unwrap();
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["checks"]["broker"]["ok"], true, "{body}");
    assert_eq!(body["checks"]["redis"]["ok"], true, "{body}");
    // The scheduler's state is in PostgreSQL, so readiness checks it.
    assert_eq!(body["checks"]["postgres"]["ok"], true, "{body}");

    let (_c, channel) = amqp().await;
    // Declared first: a passive declare of a missing queue would close the channel.
    worker::topology::declare_celery_queue(&channel, &queue)
        .await
        .unwrap();
    let ticked = wait_until(Duration::from_secs(10), || async {
        message_count(&channel, &queue).await >= 1
    })
    .await;
    assert!(ticked, "no tick published:\n{}", scheduler.logs());
    // The tick's gauges are set once it is recorded in PostgreSQL, a moment after the publish.
    let mut metrics = String::new();
    for _ in 0..50 {
        metrics = reqwest::get(format!("{base}/metrics"))
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        if metrics.contains("worker_schedule_last_tick_timestamp_seconds{schedule=") {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        metrics.contains(
            "worker_schedule_last_tick_timestamp_seconds{schedule=\"alone-every-second\"}"
        ),
        "{metrics}"
    );
    assert!(
        metrics.contains(
            "worker_schedule_next_tick_timestamp_seconds{schedule=\"alone-every-second\"}"
        ),
        "{metrics}"
    );
    assert!(
        metrics
            .lines()
            .any(|l| l == "worker_schedule_reloads_rejected_total 0"),
        "{metrics}"
    );
    // An invalid edit is refused, and counted.
    std::fs::write(
        &file,
        "[[schedule]]\nname = \"alone-every-second\"\ncronn = \"x\"\n",
    )
    .unwrap();
    let counted = wait_until(Duration::from_secs(10), || async {
        reqwest::get(format!("{base}/metrics"))
            .await
            .unwrap()
            .text()
            .await
            .unwrap()
            .lines()
            .any(|l| l == "worker_schedule_reloads_rejected_total 1")
    })
    .await;
    assert!(
        counted,
        "rejected reload not counted:\n{}",
        scheduler.logs()
    );

    drop(scheduler);
    let _ = std::fs::remove_file(&file);
    scheduler::clean_redis(&prefix).await;
    delete_queue(&channel, &queue).await;
}
