//! The Redis result backend against real Redis: a stored SUCCESS is never overwritten, a late
//! STARTED or RETRY never replaces a FAILURE or REVOKED, every write is PUBLISHed on the key's
//! channel (what Python's `.get()` waits on), results expire, and `ignore_result` messages store
//! nothing.

mod harness;

use std::time::Duration;

use futures::StreamExt;
use harness::*;
use lapin::BasicProperties;
use lapin::types::ShortString;
use redis::AsyncCommands;
use serde_json::{Map, Value, json};
use worker::results::{ResultStore, StoreOutcome};
use worker::wire::{Origin, OutgoingTask, ResultMeta, TaskError, TaskMessage, json_to_table};

/// Who wrote a result, for results written by the tests themselves.
fn origin(message: &TaskMessage) -> Origin<'_> {
    Origin {
        message,
        queue: "q",
        hostname: "h",
        extended: true,
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn success_is_never_overwritten_and_every_write_is_published() {
    let client = redis::Client::open(REDIS_URL).unwrap();
    let prefix = format!("{}:", unique("results"));
    let store = ResultStore::connect(REDIS_URL, &prefix, 60).await.unwrap();
    let message = TaskMessage::minimal(&uuid::Uuid::new_v4().to_string(), Some("worker.ping"));
    let origin = origin(&message);

    let mut pubsub = client.get_async_pubsub().await.unwrap();
    pubsub.subscribe(store.key(&message.id)).await.unwrap();
    let mut published = pubsub.into_on_message();

    assert_eq!(
        store.store(&ResultMeta::started(origin)).await.unwrap(),
        StoreOutcome::Written
    );
    assert_eq!(
        store
            .store(&ResultMeta::success(json!("pong"), origin))
            .await
            .unwrap(),
        StoreOutcome::Written
    );
    // A redelivered message's STARTED must not replace the SUCCESS.
    assert_eq!(
        store.store(&ResultMeta::started(origin)).await.unwrap(),
        StoreOutcome::KeptSuccess
    );
    let stored = store.get(&message.id).await.unwrap().unwrap();
    assert_eq!(stored.status.as_str(), "SUCCESS");
    assert_eq!(stored.result, json!("pong"));

    let mut statuses = Vec::new();
    for _ in 0..2 {
        let msg = tokio::time::timeout(Duration::from_secs(5), published.next())
            .await
            .unwrap()
            .unwrap();
        let payload: String = msg.get_payload().unwrap();
        let doc: Value = serde_json::from_str(&payload).unwrap();
        assert_eq!(
            doc["task_id"],
            message.id.as_str(),
            "Python raises KeyError without task_id"
        );
        statuses.push(doc["status"].as_str().unwrap().to_owned());
    }
    assert_eq!(statuses, ["STARTED", "SUCCESS"]);

    let mut raw = redis().await;
    let ttl: i64 = raw.ttl(store.key(&message.id)).await.unwrap();
    assert!((1..=60).contains(&ttl), "ttl {ttl}");
    let _: () = raw.del(store.key(&message.id)).await.unwrap();
}

/// The executor sends STARTED without waiting for it, and RETRY after republishing: either can
/// reach Redis after the task's final state, and must then change nothing.
#[tokio::test(flavor = "multi_thread")]
async fn late_intermediate_states_never_replace_a_final_one() {
    let prefix = format!("{}:", unique("results"));
    let store = ResultStore::connect(REDIS_URL, &prefix, 60).await.unwrap();
    let err = TaskError::runtime_error("boom");
    for final_state in ["FAILURE", "REVOKED"] {
        let message = TaskMessage::minimal(&uuid::Uuid::new_v4().to_string(), Some("worker.fail"));
        let origin = origin(&message);
        let final_meta = match final_state {
            "FAILURE" => ResultMeta::failure(&err, origin),
            _ => ResultMeta::revoked(&TaskError::expired(), origin),
        };
        assert_eq!(
            store.store(&final_meta).await.unwrap(),
            StoreOutcome::Written
        );
        for late in [ResultMeta::started(origin), ResultMeta::retry(&err, origin)] {
            assert_eq!(
                store.store(&late).await.unwrap(),
                StoreOutcome::KeptFinal,
                "{} over {final_state}",
                late.status.as_str()
            );
        }
        let stored = store.get(&message.id).await.unwrap().unwrap();
        assert_eq!(stored.status.as_str(), final_state);
        // A final state may still follow a final state (a rerun that succeeds after a FAILURE).
        if final_state == "FAILURE" {
            assert_eq!(
                store
                    .store(&ResultMeta::success(json!("pong"), origin))
                    .await
                    .unwrap(),
                StoreOutcome::Written
            );
            let stored = store.get(&message.id).await.unwrap().unwrap();
            assert_eq!(stored.status.as_str(), "SUCCESS");
        }
    }
}

/// The store script reads the stored document's own `status`: a task whose arguments contain
/// the text `"status":"SUCCESS"` still gets its outcome stored after STARTED.
#[tokio::test(flavor = "multi_thread")]
async fn the_stored_status_decides_not_text_in_the_arguments() {
    let prefix = format!("{}:", unique("results"));
    let store = ResultStore::connect(REDIS_URL, &prefix, 60).await.unwrap();
    for outcome in ["FAILURE", "SUCCESS"] {
        let mut message =
            TaskMessage::minimal(&uuid::Uuid::new_v4().to_string(), Some("worker.echo"));
        message.args = vec![json!({"status": "SUCCESS"}), json!(r#""status":"SUCCESS""#)];
        let origin = origin(&message);
        assert_eq!(
            store.store(&ResultMeta::started(origin)).await.unwrap(),
            StoreOutcome::Written
        );
        let last = match outcome {
            "FAILURE" => ResultMeta::failure(&TaskError::value_error("no"), origin),
            _ => ResultMeta::success(json!("done"), origin),
        };
        assert_eq!(store.store(&last).await.unwrap(), StoreOutcome::Written);
        let stored = store.get(&message.id).await.unwrap().unwrap();
        assert_eq!(stored.status.as_str(), outcome);
    }
}

/// The statuses published on a task's result channel until it is ready, in order.
async fn published_statuses(
    client: &redis::Client,
    id: &str,
    send: impl AsyncFnOnce(),
) -> Vec<String> {
    let mut pubsub = client.get_async_pubsub().await.unwrap();
    pubsub
        .subscribe(format!("celery-task-meta-{id}"))
        .await
        .unwrap();
    let mut messages = pubsub.into_on_message();
    send().await;
    let mut statuses = Vec::new();
    while let Ok(Some(msg)) = tokio::time::timeout(Duration::from_secs(30), messages.next()).await {
        let doc: Value = serde_json::from_str(&msg.get_payload::<String>().unwrap()).unwrap();
        let status = doc["status"].as_str().unwrap_or_default().to_owned();
        let ready = status == "SUCCESS" || status == "FAILURE";
        statuses.push(status);
        if ready {
            break;
        }
    }
    statuses
}

/// STARTED is written once a task has run `WORKER_TRACK_STARTED_AFTER_MS`: a quick task goes
/// straight to SUCCESS, a slower one shows STARTED first (default 5 ms), and 0 always does. The
/// quick case uses a 1 s delay, so a busy CI machine cannot stretch a no-op task past it.
#[tokio::test(flavor = "multi_thread")]
async fn started_is_written_for_tasks_that_outlast_the_delay() {
    let client = redis::Client::open(REDIS_URL).unwrap();
    let (_conn, channel) = amqp().await;
    // Load the store script first: after a Redis restart (the outage tests) its cache is empty,
    // and a STARTED retried after NOSCRIPT could land behind the SUCCESS (and be refused).
    let warm = TaskMessage::minimal(&uuid::Uuid::new_v4().to_string(), Some("worker.ping"));
    ResultStore::connect(REDIS_URL, &format!("{}:", unique("warm")), 5)
        .await
        .unwrap()
        .store(&ResultMeta::started(origin(&warm)))
        .await
        .unwrap();
    for (after_ms, seconds, expected) in [
        (Some("1000"), 0.0, vec!["SUCCESS"]),
        (None, 0.3, vec!["STARTED", "SUCCESS"]),
        (Some("0"), 0.0, vec!["STARTED", "SUCCESS"]),
    ] {
        let queue = unique("started-after");
        let env: Vec<(&str, &str)> = after_ms
            .map(|ms| ("WORKER_TRACK_STARTED_AFTER_MS", ms))
            .into_iter()
            .collect();
        let worker = WorkerProcess::start(std::slice::from_ref(&queue), &env);
        let t = OutgoingTask::new("worker.sleep", vec![Value::from(seconds)], Map::new());
        let statuses = published_statuses(&client, &t.id, async || {
            publish_task(&channel, &queue, &t).await;
        })
        .await;
        assert_eq!(
            statuses,
            expected,
            "after_ms={after_ms:?} seconds={seconds}\n{}",
            worker.logs()
        );
        delete_queue(&channel, &queue).await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn ignore_result_stores_nothing() {
    let queue = unique("ignore");
    let worker = WorkerProcess::start(std::slice::from_ref(&queue), &[]);
    let (_conn, channel) = amqp().await;
    let publish = |id: &str, ignore: bool| {
        let headers: Map<String, Value> =
            json!({"lang": "py", "task": "worker.ping", "id": id, "ignore_result": ignore})
                .as_object()
                .cloned()
                .unwrap();
        BasicProperties::default()
            .with_content_type(ShortString::from("application/json"))
            .with_headers(json_to_table(&headers))
    };
    let ignored = uuid::Uuid::new_v4().to_string();
    let kept = uuid::Uuid::new_v4().to_string();
    publish_raw(&channel, &queue, b"[[], {}, null]", publish(&ignored, true)).await;
    publish_raw(&channel, &queue, b"[[], {}, null]", publish(&kept, false)).await;
    // With one queue and in-order delivery, by the time the second is stored the first has run.
    let r = wait_result(&kept, Some("SUCCESS"), Duration::from_secs(30)).await;
    assert!(r.is_some(), "{}", worker.logs());
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        wait_result(&ignored, None, Duration::from_millis(10)).await,
        None
    );
    let logs = worker.wait_for_log_count("task finished", 2, Duration::from_secs(5));
    assert_eq!(logs.matches("task finished").count(), 2, "{logs}");
    delete_queue(&channel, &queue).await;
}
