//! Startup: an unreachable broker is logged with its URL (password hidden) and retried with
//! backoff, one line per attempt; a setting that cannot work — a URL that does not parse, a
//! login the broker refuses — ends the process at once with exit 2 and a message naming it.

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
        .env("WORKER_HTTP_ADDR", "127.0.0.1:0")
        .env("NO_COLOR", "1")
        .env_remove("RUST_LOG")
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
    assert!(!text.contains("s3cr3t-pw"), "password leaked: {text}");
    assert!(!text.contains("panicked"), "{text}");
    // One line per attempt, numbered 1, 2, 3...; nothing from lapin, no ERROR line.
    let attempts: Vec<u32> = text
        .lines()
        .filter(|l| l.contains("RabbitMQ"))
        .filter(|l| !l.contains("starting worker"))
        // The Redis eviction-policy line says results wait in RabbitMQ: not a broker line.
        .filter(|l| !l.contains("maxmemory_policy"))
        .map(|l| {
            assert!(l.contains("RabbitMQ is unreachable; retrying"), "{l}");
            l.split("attempt=")
                .nth(1)
                .and_then(|a| a.split_whitespace().next())
                .and_then(|a| a.parse().ok())
                .unwrap_or_else(|| panic!("no attempt number: {l}"))
        })
        .collect();
    assert!(attempts.len() >= 2, "retried: {text}");
    assert_eq!(
        attempts,
        (1..=attempts.len() as u32).collect::<Vec<_>>(),
        "{text}"
    );
    assert!(!text.contains("lapin"), "lapin's own lines:\n{text}");
    assert!(!text.contains("ERROR"), "{text}");
}

/// `worker run` with `env`, which must exit 2 within a couple of seconds; its stderr.
fn exits_2_at_once(env: &[(&str, &str)]) -> String {
    let mut all = vec![
        ("REDIS_URL", REDIS_URL),
        ("RABBITMQ_URL", RABBITMQ_URL),
        ("DATABASE_URL", PG_ADMIN_URL),
    ];
    all.extend_from_slice(env);
    let run = run_for(
        &["run", "--queues", &unique("never")],
        &all,
        Duration::from_secs(10),
    );
    assert_eq!(run.code, Some(2), "{env:?}: {}", run.stderr);
    assert!(
        run.elapsed < Duration::from_secs(3),
        "{env:?} took {:?}: {}",
        run.elapsed,
        run.stderr
    );
    run.stderr
}

#[test]
fn malformed_urls_exit_2_naming_the_setting() {
    for (setting, value, expected) in [
        ("RABBITMQ_URL", "not a url", "amqp://"),
        ("RABBITMQ_URL", "http://localhost:5672", "amqp://"),
        (
            "RABBITMQ_URL",
            "amqp://guest:Zq7u/Kx9?Mw#Tp@Rv:%2Fw@127.0.0.1:5672/%2f",
            "percent-encoded",
        ),
        // Every broker of a list is checked, not only the first.
        (
            "RABBITMQ_URL",
            "amqp://guest:guest@127.0.0.1:5672/%2f;amqp://guest:Kx9@127.0.0.1:notaport/%2f",
            "broker 2 of 2",
        ),
        ("REDIS_URL", "127.0.0.1:6379", "redis://"),
        ("REDIS_URL", "redis://:pw@127.0.0.1:notaport", "redis://"),
        (
            "DATABASE_URL",
            "postgresql://postgres@127.0.0.1:notaport/x",
            "postgresql://",
        ),
        ("DATABASE_URL", "http://127.0.0.1:5432/x", "postgresql://"),
    ] {
        let stderr = exits_2_at_once(&[(setting, value)]);
        assert!(
            stderr.contains(&format!("{setting} is not a valid")),
            "{setting}={value}: {stderr}"
        );
        assert!(stderr.contains(expected), "says what is expected: {stderr}");
        assert!(!stderr.contains("Kx9"), "{stderr}");
        assert!(!stderr.contains("unreachable"), "{stderr}");
    }
}

#[test]
fn a_wrong_rabbitmq_password_exits_2_saying_authentication_failed() {
    let stderr = exits_2_at_once(&[(
        "RABBITMQ_URL",
        "amqp://guest:wrong-pw-9183@127.0.0.1:5672/%2f",
    )]);
    assert!(
        stderr
            .contains("authentication failed for user guest at 127.0.0.1:5672: check RABBITMQ_URL"),
        "{stderr}"
    );
    assert!(!stderr.contains("unreachable"), "{stderr}");
    assert!(!stderr.contains("wrong-pw-9183"), "{stderr}");
    assert!(!stderr.contains("lapin"), "{stderr}");
}

/// The arguments of the README's first command (`cargo run ... -p worker -- ARGS  # comment`).
fn readme_first_command() -> Vec<String> {
    let readme = std::fs::read_to_string(root().join("README.md")).unwrap();
    let block = readme
        .split("```sh\n")
        .nth(1)
        .expect("README has a sh code block");
    let first = block.lines().next().expect("a first command");
    let command = first.split('#').next().unwrap().trim();
    assert!(
        command.starts_with("cargo run") && command.contains("-p worker"),
        "the README's first command runs the worker: {first:?}"
    );
    let (_, args) = command.split_once(" -- ").expect("arguments after --");
    args.split_whitespace().map(str::to_owned).collect()
}

/// A database that does not exist yet; dropped at the end of the test.
struct MissingDatabase {
    name: String,
}

impl MissingDatabase {
    fn new() -> Self {
        Self {
            name: format!("worker_fresh_{}", uuid::Uuid::new_v4().simple()),
        }
    }

    fn url(&self) -> String {
        format!("postgresql://postgres@127.0.0.1:5432/{}", self.name)
    }

    async fn exists(&self) -> bool {
        let admin = sqlx::PgPool::connect(PG_ADMIN_URL).await.unwrap();
        let n: i64 = sqlx::query_scalar("SELECT count(*) FROM pg_database WHERE datname = $1")
            .bind(&self.name)
            .fetch_one(&admin)
            .await
            .unwrap();
        n == 1
    }

    async fn drop_now(&self) {
        let admin = sqlx::PgPool::connect(PG_ADMIN_URL).await.unwrap();
        let _ = sqlx::query(sqlx::AssertSqlSafe(format!(
            "DROP DATABASE IF EXISTS {} WITH (FORCE)",
            self.name
        )))
        .execute(&admin)
        .await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn the_readme_first_command_creates_the_database_and_runs_a_staffprobot_job() {
    let db = MissingDatabase::new();
    assert!(!db.exists().await);
    let queue = unique("readme");
    let args = readme_first_command();
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let url = db.url();
    // The README's command as it is, on this test's own queue and database.
    let worker = WorkerProcess::spawn(
        &args,
        &[
            ("DATABASE_URL", url.as_str()),
            ("WORKER_QUEUES", queue.as_str()),
        ],
    );
    assert!(
        db.exists().await,
        "the database was created before consuming"
    );

    let out = cli(&[
        "send",
        "core.celery.tasks.shift_tasks.auto_close_shifts",
        "--queue",
        &queue,
        "--wait",
        "--timeout",
        "30",
        "--json",
    ]);
    let doc: serde_json::Value = serde_json::from_str(stdout(&out).trim()).unwrap_or_else(|e| {
        panic!(
            "{e}: {}\n{}\nworker log:\n{}",
            stdout(&out),
            stderr(&out),
            worker.logs()
        )
    });
    assert_eq!(doc["status"], "SUCCESS", "{doc}\n{}", worker.logs());
    assert_eq!(doc["result"]["success"], true, "{doc}");
    assert_eq!(doc["result"]["closed_count"], 0, "{doc}");
    drop(worker);
    db.drop_now().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_missing_database_is_named_at_startup_and_the_worker_still_runs() {
    let db = MissingDatabase::new();
    let queue = unique("nodb");
    let url = db.url();
    let worker = WorkerProcess::start(
        std::slice::from_ref(&queue),
        &[("DATABASE_URL", url.as_str())],
    );
    let logs = worker.wait_for_log_count("does not exist", 1, Duration::from_secs(5));
    let line = logs.lines().find(|l| l.contains("does not exist")).unwrap();
    assert!(line.contains(&db.name), "{line}");
    assert!(line.contains("worker migrate"), "says what to do: {line}");
    assert!(line.contains("--migrate"), "says what to do: {line}");
    assert_eq!(
        logs.matches("does not exist").count(),
        1,
        "one line:\n{logs}"
    );
    assert!(!db.exists().await, "without --migrate nothing is created");

    // Tasks that need no database run; /readyz names PostgreSQL.
    let out = cli(&[
        "send",
        "worker.ping",
        "--queue",
        &queue,
        "--wait",
        "--timeout",
        "20",
    ]);
    assert!(out.status.success(), "{}\n{}", stdout(&out), worker.logs());
    let readyz = reqwest::get(format!("http://{}/readyz", worker.http_addr()))
        .await
        .unwrap();
    assert_eq!(readyz.status(), 503);
    let body: serde_json::Value = readyz.json().await.unwrap();
    assert_eq!(body["checks"]["postgres"]["ok"], false, "{body}");
    // A fixed phrase, not the server's text (which names the database).
    assert_eq!(
        body["checks"]["postgres"]["error"], "database missing",
        "{body}"
    );
    assert!(!body.to_string().contains(&db.name), "{body}");
    assert_eq!(body["checks"]["broker"]["ok"], true, "{body}");
}

#[test]
fn worker_migrate_creates_a_missing_database() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let db = MissingDatabase::new();
    let url = db.url();
    let out = Command::new(env!("CARGO_BIN_EXE_worker"))
        .arg("migrate")
        .env("DATABASE_URL", &url)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(rt.block_on(db.exists()));
    // The scheduler's table is there too.
    let table: Option<String> = rt.block_on(async {
        let pool = sqlx::PgPool::connect(&url).await.unwrap();
        let table = sqlx::query_scalar("SELECT to_regclass('worker_schedule_ticks')::text")
            .fetch_one(&pool)
            .await
            .unwrap();
        pool.close().await;
        table
    });
    assert_eq!(table.as_deref(), Some("worker_schedule_ticks"));
    // Twice is fine: nothing to create, nothing to apply.
    let again = Command::new(env!("CARGO_BIN_EXE_worker"))
        .arg("migrate")
        .env("DATABASE_URL", &url)
        .output()
        .unwrap();
    assert!(again.status.success(), "{}", stderr(&again));
    rt.block_on(db.drop_now());
}

/// kombu publishes with 128 KiB frames, and a content header (properties and Celery's headers)
/// must fit in one frame: the worker's default frame size takes what a Python client sends.
#[tokio::test(flavor = "multi_thread")]
async fn a_message_whose_headers_exceed_16_kib_is_run() {
    use lapin::types::AMQPValue;
    use worker::wire::OutgoingTask;

    let queue = unique("big-headers");
    // (With `?frame_max=16384` in RABBITMQ_URL, this message is a FRAME-ERROR on every
    // connection.)
    let worker = WorkerProcess::start(
        std::slice::from_ref(&queue),
        &[("DATABASE_URL", PG_ADMIN_URL)],
    );
    let task = OutgoingTask::new("worker.ping", Vec::new(), serde_json::Map::new());
    let message = task_message(&queue, &task);
    let props = message.amqp_properties();
    let mut headers = props.headers().clone().unwrap_or_default();
    headers.insert(
        "x-padding".into(),
        AMQPValue::LongString("x".repeat(40 * 1024).into()),
    );
    let (_c, channel) = amqp().await;
    publish_raw(&channel, &queue, &message.body, props.with_headers(headers)).await;
    let done = wait_result(&task.id, Some("SUCCESS"), Duration::from_secs(20)).await;
    assert!(done.is_some(), "no SUCCESS; log:\n{}", worker.logs());
    assert!(!worker.logs().contains("reconnecting"), "{}", worker.logs());
    delete_queue(&channel, &queue).await;
}
