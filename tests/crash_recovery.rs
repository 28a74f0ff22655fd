//! Late acknowledgement under a crash: a worker SIGKILLed in the middle of a task leaves the
//! message unacked, RabbitMQ redelivers it, and the next worker completes it — one SUCCESS.

mod harness;

use std::time::Duration;

use harness::*;

#[tokio::test(flavor = "multi_thread")]
async fn sigkill_mid_task_means_redelivery_not_loss() {
    let queue = unique("crash");
    let mut first = WorkerProcess::start(
        std::slice::from_ref(&queue),
        &[("WORKER_HOSTNAME", "first@test")],
    );
    let q = queue.clone();
    let id = tokio::task::spawn_blocking(move || {
        let out = cli(&["send", "worker.sleep", "--args", "[2]", "--queue", &q]);
        assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
        stdout(&out).trim().to_owned()
    })
    .await
    .unwrap();

    let started = wait_result(&id, Some("STARTED"), Duration::from_secs(30))
        .await
        .expect("STARTED");
    assert_eq!(started["worker"], "first@test");
    first.child.kill().unwrap(); // SIGKILL: no chance to ack or clean up
    first.child.wait().unwrap();

    let (_conn, channel) = amqp().await;
    // RabbitMQ notices the dead connection and puts the message back.
    let second = WorkerProcess::start(
        std::slice::from_ref(&queue),
        &[("WORKER_HOSTNAME", "second@test")],
    );
    let done = wait_result(&id, Some("SUCCESS"), Duration::from_secs(30))
        .await
        .expect("SUCCESS after redelivery");
    assert_eq!(done["worker"], "second@test", "{done}\n{}", second.logs());
    assert_eq!(done["result"], serde_json::json!({"slept": 2.0}));
    let logs = second.wait_for_log_count("task finished", 1, Duration::from_secs(5));
    assert_eq!(logs.matches("task finished").count(), 1, "{logs}");
    assert_eq!(message_count(&channel, &queue).await, 0);
    drop(second);
    delete_queue(&channel, &queue).await;
}
