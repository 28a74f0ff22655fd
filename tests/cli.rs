//! `worker send` and `worker result` round trips with their exit codes, and the dead-letter
//! commands `list` and `replay`.

mod harness;

use harness::*;

#[tokio::test(flavor = "multi_thread")]
async fn send_and_result_round_trip_with_exit_codes() {
    let queue = unique("cli");
    let worker = WorkerProcess::start(std::slice::from_ref(&queue), &[]);
    let q = queue.clone();
    tokio::task::spawn_blocking(move || {
        // --wait prints the result; success exits 0.
        let out = cli(&[
            "send",
            "worker.echo",
            "--args",
            "[1, \"two\"]",
            "--queue",
            &q,
            "--wait",
            "--timeout",
            "30",
        ]);
        assert_eq!(
            out.status.code(),
            Some(0),
            "{}{}",
            stdout(&out),
            stderr(&out)
        );
        assert!(
            stdout(&out).contains("state:   SUCCESS"),
            "{}",
            stdout(&out)
        );
        assert!(stdout(&out).contains(r#"[1,"two"]"#), "{}", stdout(&out));

        // Without --wait it prints the id; `result --wait --json` then gives the document.
        let out = cli(&["send", "worker.ping", "--queue", &q]);
        assert_eq!(out.status.code(), Some(0));
        let id = stdout(&out).trim().to_owned();
        assert_eq!(id.len(), 36, "an id: {id}");
        let out = cli(&["result", &id, "--wait", "--timeout", "30", "--json"]);
        assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
        let doc: serde_json::Value =
            serde_json::from_str(stdout(&out).trim()).expect("--json prints JSON");
        assert_eq!(doc["status"], "SUCCESS");
        assert_eq!(doc["result"], "pong");
        assert_eq!(doc["task_id"], id.as_str());
        assert_eq!(doc["name"], "worker.ping");

        // A failure exits 1 and shows the error.
        let out = cli(&[
            "send",
            "worker.fail",
            "--args",
            "[\"boom\"]",
            "--queue",
            &q,
            "--wait",
            "--timeout",
            "30",
        ]);
        assert_eq!(out.status.code(), Some(1), "{}", stdout(&out));
        assert!(
            stdout(&out).contains("builtins.ValueError: boom"),
            "{}",
            stdout(&out)
        );

        // Unknown id: pending, exit 2; a wait that times out: exit 2.
        let out = cli(&["result", &uuid::Uuid::new_v4().to_string()]);
        assert_eq!(out.status.code(), Some(2));
        assert!(stdout(&out).contains("PENDING"));
        let out = cli(&[
            "send",
            "worker.sleep",
            "--args",
            "[5]",
            "--queue",
            &q,
            "--wait",
            "--timeout",
            "1",
        ]);
        assert_eq!(out.status.code(), Some(2), "{}", stdout(&out));
        assert!(stdout(&out).contains("timed out"), "{}", stdout(&out));

        // Bad input is refused with a message saying what to do.
        let out = cli(&["send", "worker.echo", "--args", "{not json", "--queue", &q]);
        assert_eq!(out.status.code(), Some(2));
        assert!(
            stderr(&out).contains("--args must be a JSON list"),
            "{}",
            stderr(&out)
        );
        let out = cli(&["send", "no.such.task"]);
        assert_eq!(out.status.code(), Some(2));
        assert!(stderr(&out).contains("pass --queue"), "{}", stderr(&out));
    })
    .await
    .unwrap();
    drop(worker);
    let (_conn, channel) = amqp().await;
    delete_queue(&channel, &queue).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn dead_letters_can_be_listed_and_replayed() {
    let queue = unique("cli-dead");
    let worker = WorkerProcess::start(std::slice::from_ref(&queue), &[]);
    let q = queue.clone();
    tokio::task::spawn_blocking(move || {
        let out = cli(&[
            "send",
            "core.celery.tasks.not_here",
            "--queue",
            &q,
            "--wait",
            "--timeout",
            "30",
        ]);
        assert_eq!(out.status.code(), Some(1), "{}", stdout(&out));
        assert!(
            stdout(&out).contains("celery.exceptions.NotRegistered"),
            "{}",
            stdout(&out)
        );
        let id = stdout(&out)
            .lines()
            .next()
            .unwrap()
            .trim_start_matches("id:")
            .trim()
            .to_owned();

        let out = cli(&["dead-letters", "list", "--queue", &q, "--json"]);
        assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
        let lines: Vec<serde_json::Value> = stdout(&out)
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        assert_eq!(lines.len(), 1, "{}", stdout(&out));
        assert_eq!(lines[0]["task_id"], id.as_str());
        assert_eq!(lines[0]["reason"], "not_registered");

        // Listing leaves them in place; replay sends them back (and, still unknown, they return).
        let out = cli(&["dead-letters", "list", "--queue", &q, "--json"]);
        assert_eq!(stdout(&out).lines().count(), 1);
        let out = cli(&["dead-letters", "replay", "--queue", &q]);
        assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
        assert!(stdout(&out).contains("1 replayed"), "{}", stdout(&out));
    })
    .await
    .unwrap();
    let (_conn, channel) = amqp().await;
    let mut seen = 0;
    for _ in 0..100 {
        seen = message_count(&channel, &format!("{queue}.dead")).await;
        if seen == 1 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert_eq!(
        seen, 1,
        "the replayed message was processed again and dead-lettered again"
    );
    let logs = worker.wait_for_log_count(
        "Received unregistered task",
        2,
        std::time::Duration::from_secs(5),
    );
    assert_eq!(
        logs.matches("Received unregistered task").count(),
        2,
        "{logs}"
    );
    drop(worker);
    delete_queue(&channel, &queue).await;
}
