//! StaffProBot's jobs end to end: a fresh database migrated by `worker migrate`, seeded shifts,
//! and auto-close-shifts sent by `worker send --wait` and by Python's `send_task`.

mod harness;

use harness::*;
use serde_json::Value;
use sqlx::Row;

/// One owner, one Moscow object open 09:00-18:00 at 100.00/h; returns (user id, object id).
async fn seed_object(pool: &sqlx::PgPool) -> (i32, i32) {
    let telegram_id = i64::from(fastrand_id());
    let user: i32 = sqlx::query("INSERT INTO users (telegram_id, first_name, role) VALUES ($1, 'Anna', 'employee') RETURNING id")
        .bind(telegram_id)
        .fetch_one(pool)
        .await
        .unwrap()
        .get(0);
    let object: i32 = sqlx::query(
        "INSERT INTO objects (name, owner_id, opening_time, closing_time, hourly_rate, timezone) \
         VALUES ('Склад <1>', $1, '09:00', '18:00', 100.00, 'Europe/Moscow') RETURNING id",
    )
    .bind(user)
    .fetch_one(pool)
    .await
    .unwrap()
    .get(0);
    (user, object)
}

fn fastrand_id() -> u32 {
    (uuid::Uuid::new_v4().as_u128() % 1_000_000_000) as u32
}

/// An active shift that started at 10:00 Moscow time `days_ago` days ago.
async fn seed_shift(pool: &sqlx::PgPool, user: i32, object: i32, days_ago: i32) -> i32 {
    sqlx::query(
        "INSERT INTO shifts (user_id, object_id, start_time, status, hourly_rate) VALUES \
         ($1, $2, ((now() AT TIME ZONE 'Europe/Moscow')::date - $3 + time '10:00') AT TIME ZONE 'Europe/Moscow', 'active', 100.00) \
         RETURNING id",
    )
    .bind(user)
    .bind(object)
    .bind(days_ago)
    .fetch_one(pool)
    .await
    .unwrap()
    .get(0)
}

#[tokio::test(flavor = "multi_thread")]
async fn auto_close_shifts_from_the_cli_and_from_python() {
    let db = TestDatabase::create().await;
    let pool = db.pool().await;
    let (user, object) = seed_object(&pool).await;
    let first = seed_shift(&pool, user, object, 2).await;
    let second = seed_shift(&pool, user, object, 3).await;
    let queue = unique("jobs-shifts");
    let worker = WorkerProcess::start(
        std::slice::from_ref(&queue),
        &[("DATABASE_URL", db.url.as_str())],
    );

    let q = queue.clone();
    let out = tokio::task::spawn_blocking(move || {
        cli(&[
            "send",
            "core.celery.tasks.shift_tasks.auto_close_shifts",
            "--queue",
            &q,
            "--wait",
            "--timeout",
            "60",
            "--json",
        ])
    })
    .await
    .unwrap();
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}{}\n{}",
        stdout(&out),
        stderr(&out),
        worker.logs()
    );
    let doc: Value = serde_json::from_str(stdout(&out).trim()).unwrap();
    assert_eq!(doc["status"], "SUCCESS");
    assert_eq!(doc["result"]["success"], true, "{doc}");
    assert_eq!(doc["result"]["closed_count"], 2, "{doc}");

    for id in [first, second] {
        let row = sqlx::query(
            "SELECT status, total_hours::text, total_payment::text FROM shifts WHERE id = $1",
        )
        .bind(id)
        .fetch_one(&pool)
        .await
        .unwrap();
        let (status, hours, payment): (String, String, String) =
            (row.get(0), row.get(1), row.get(2));
        assert_eq!(
            (status.as_str(), hours.as_str(), payment.as_str()),
            ("completed", "8.00", "800.00")
        );
    }

    // The same task from Python: a new shift is closed, the old ones are not touched again.
    let third = seed_shift(&pool, user, object, 1).await;
    let q = queue.clone();
    let out = tokio::task::spawn_blocking(move || {
        run_python(
            "send_task.py",
            &["core.celery.tasks.shift_tasks.auto_close_shifts", &q],
        )
    })
    .await
    .unwrap();
    assert!(out.status.success(), "{}{}", stdout(&out), stderr(&out));
    let doc: Value = serde_json::from_str(stdout(&out).trim()).unwrap();
    assert_eq!(doc["result"]["closed_count"], 1, "{doc}");
    let status: String = sqlx::query("SELECT status FROM shifts WHERE id = $1")
        .bind(third)
        .fetch_one(&pool)
        .await
        .unwrap()
        .get(0);
    assert_eq!(status, "completed");

    // Typed arguments: a wrong one is a TypeError naming the argument.
    let q = queue.clone();
    let out = tokio::task::spawn_blocking(move || {
        cli(&[
            "send",
            "core.celery.tasks.shift_tasks.calculate_shift_payment",
            "--args",
            "[\"x\"]",
            "--queue",
            &q,
            "--wait",
            "--json",
        ])
    })
    .await
    .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let doc: Value = serde_json::from_str(stdout(&out).trim()).unwrap();
    assert_eq!(doc["result"]["exc_type"], "TypeError");
    assert!(
        doc["result"]["exc_message"][0]
            .as_str()
            .unwrap()
            .contains("'shift_id'"),
        "{doc}"
    );

    drop(worker);
    pool.close().await;
    let (_c, channel) = amqp().await;
    delete_queue(&channel, &queue).await;
    db.drop_now().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_job_that_cannot_reach_its_database_fails_and_is_retried_as_transient() {
    let queue = unique("jobs-nodb");
    let missing = format!(
        "postgresql://postgres@127.0.0.1:5432/worker_missing_{}",
        uuid::Uuid::new_v4().simple()
    );
    let worker = WorkerProcess::start(
        std::slice::from_ref(&queue),
        &[("DATABASE_URL", missing.as_str())],
    );
    let (_c, channel) = amqp().await;
    let name = "core.celery.tasks.shift_tasks.auto_close_shifts";
    // A first run is retried: RETRY, with the error Python sees.
    let first = worker::wire::OutgoingTask::new(name, Vec::new(), serde_json::Map::new());
    publish_task(&channel, &queue, &first).await;
    let r = wait_result(&first.id, Some("RETRY"), std::time::Duration::from_secs(15))
        .await
        .expect("RETRY");
    assert_eq!(r["result"]["exc_type"], "OperationalError", "{r}");
    // One whose retries are used up fails: FAILURE, not a SUCCESS listing the error.
    let mut last = worker::wire::OutgoingTask::new(name, Vec::new(), serde_json::Map::new());
    last.retries = 5;
    publish_task(&channel, &queue, &last).await;
    let r = wait_result(
        &last.id,
        Some("FAILURE"),
        std::time::Duration::from_secs(15),
    )
    .await
    .expect("FAILURE");
    assert_eq!(r["result"]["exc_type"], "OperationalError", "{r}");
    assert!(
        r["traceback"].as_str().unwrap().contains("does not exist"),
        "{r}"
    );
    drop(worker);
    delete_queue(&channel, &queue).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_run_with_row_errors_is_a_success_counted_for_alerts() {
    let db = TestDatabase::create().await;
    let pool = db.pool().await;
    let (user, object) = seed_object(&pool).await;
    // 8 hours at the largest rate NUMERIC(10,2) holds: the payment does not fit, so the shift
    // is closed without totals and flagged in `errors`, not crashed.
    let long = seed_shift(&pool, user, object, 2).await;
    sqlx::query("UPDATE shifts SET hourly_rate = 99999999.99 WHERE id = $1")
        .bind(long)
        .execute(&pool)
        .await
        .unwrap();
    let queue = unique("jobs-rowerr");
    let worker = WorkerProcess::start(
        std::slice::from_ref(&queue),
        &[("DATABASE_URL", db.url.as_str())],
    );
    let q = queue.clone();
    let out = tokio::task::spawn_blocking(move || {
        cli(&[
            "send",
            "core.celery.tasks.shift_tasks.auto_close_shifts",
            "--queue",
            &q,
            "--wait",
            "--timeout",
            "60",
            "--json",
        ])
    })
    .await
    .unwrap();
    let doc: Value = serde_json::from_str(stdout(&out).trim()).unwrap();
    assert_eq!(doc["status"], "SUCCESS", "{doc}");
    assert_eq!(doc["result"]["success"], false, "{doc}");
    let errors = doc["result"]["errors"].as_array().unwrap();
    assert!(
        errors
            .iter()
            .any(|e| e.as_str().unwrap().contains(&format!("shift {long}"))),
        "{doc}"
    );
    let metrics = reqwest::get(format!("http://{}/metrics", worker.http_addr()))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let line = metrics
        .lines()
        .find(|l| {
            l.starts_with("worker_tasks_with_errors_total")
                && l.contains("auto_close_shifts")
                && l.contains(&queue)
        })
        .unwrap_or_else(|| panic!("no worker_tasks_with_errors_total line:\n{metrics}"));
    assert!(line.ends_with(" 1"), "{line}");
    drop(worker);
    pool.close().await;
    let (_c, channel) = amqp().await;
    delete_queue(&channel, &queue).await;
    db.drop_now().await;
}
