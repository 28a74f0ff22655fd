//! Python Celery 5.7 producers and `AsyncResult` against the Rust worker: values come back,
//! failures re-raise with the right type, STARTED is visible, unknown tasks raise
//! `NotRegistered` and their message waits in `<queue>.dead`.

mod harness;

use std::time::Duration;

use harness::*;

#[tokio::test(flavor = "multi_thread")]
async fn python_celery_round_trips_through_the_worker() {
    let base = unique("compat");
    let queues: Vec<String> = ["notifications", "shifts", "analytics"]
        .iter()
        .map(|q| format!("{base}-{q}"))
        .collect();
    let worker = WorkerProcess::start(&queues, &[]);
    let args = queues.clone();
    let out = tokio::task::spawn_blocking(move || {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        run_python("celery_compat.py", &args)
    })
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
        "ok ping",
        "ok kombu types",
        "ok failure is ValueError",
        "ok argument mismatch is TypeError",
        "ok STARTED while running",
        "ok countdown",
        "ok NotRegistered",
    ] {
        assert!(text.contains(check), "missing {check:?} in:\n{text}");
    }

    // The unregistered task's message sits in the dead-letter queue, with its reason.
    let id = text
        .lines()
        .find_map(|l| l.strip_prefix("unregistered-id "))
        .expect("python printed the unregistered id")
        .trim()
        .to_owned();
    let (_conn, channel) = amqp().await;
    let dead = drain(&channel, &format!("{}.dead", queues[0])).await;
    assert_eq!(dead.len(), 1, "dead letters: {dead:?}");
    let (headers, _) = &dead[0];
    assert_eq!(headers["id"], id.as_str());
    assert_eq!(headers["x-dead-letter-reason"], "not_registered");
    assert!(headers.contains_key("x-dead-letter-at"));
    // Panics (naming the missing line) when no error naming the task is logged.
    worker.wait_for_log("unregistered task", Duration::from_secs(5));
    for q in &queues {
        delete_queue(&channel, q).await;
    }
}
