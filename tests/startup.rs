//! Startup: an unreachable broker is logged with its URL (password hidden) and retried with
//! backoff; the process does not panic or exit.

mod harness;

use std::process::{Command, Stdio};
use std::time::Duration;

use harness::*;

#[test]
fn unreachable_broker_is_retried_with_a_redacted_url() {
    let log = std::env::temp_dir().join(format!("{}.log", unique("startup")));
    let file = std::fs::File::create(&log).unwrap();
    // Port 1 on loopback: nothing listens there.
    let mut child = Command::new(env!("CARGO_BIN_EXE_worker"))
        .args(["run", "--queues", "nowhere"])
        .env("RABBITMQ_URL", "amqp://admin:s3cr3t-pw@127.0.0.1:1/%2f")
        .env("REDIS_URL", REDIS_URL)
        .env("LOG_FORMAT", "text")
        .env("WORKER_NO_SCHEDULER", "true")
        .env("NO_COLOR", "1")
        .stdout(Stdio::null())
        .stderr(file)
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_secs(3));
    let alive = matches!(child.try_wait(), Ok(None));
    let _ = child.kill();
    let _ = child.wait();
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(alive, "the worker exited:\n{text}");
    assert!(text.contains("RabbitMQ is unreachable; retrying"), "{text}");
    assert!(text.contains("amqp://admin:***@127.0.0.1:1/%2f"), "{text}");
    assert!(
        text.matches("RabbitMQ is unreachable").count() >= 2,
        "retried: {text}"
    );
    assert!(!text.contains("s3cr3t-pw"), "password leaked: {text}");
    assert!(!text.contains("panicked"), "{text}");
}
