//! Beyond one machine, with real services the tests start themselves (`scripts/services/`):
//! Redis behind Sentinel failed over in the middle of a run, and TLS to Redis, RabbitMQ and
//! PostgreSQL with a throwaway CA, where a wrong CA is refused with a clear message and exit
//! code 2. Slow and service-heavy: the tests run one at a time (`SERIAL`) in their own binary,
//! and every private instance is stopped in `Drop`, also when an assertion fails.

mod harness;

use std::time::{Duration, Instant};

use harness::services::{RabbitNode, RedisServer, SentinelSet, TlsCa};
use harness::*;
use lapin::options::ConfirmSelectOptions;
use lapin::tcp::OwnedTLSConfig;
use lapin::{Channel, Connection, ConnectionProperties};
use serde_json::Value;
use worker::wire::OutgoingTask;

static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// The stored result of `id` on `conn`, polled until it is SUCCESS or `timeout` passes.
async fn success_on(
    conn: &mut redis::aio::MultiplexedConnection,
    id: &str,
    timeout: Duration,
) -> Option<Value> {
    let key = format!("celery-task-meta-{id}");
    let deadline = Instant::now() + timeout;
    loop {
        let raw: Option<String> = redis::cmd("GET")
            .arg(&key)
            .query_async(conn)
            .await
            .unwrap_or(None);
        if let Some(doc) = raw.and_then(|r| serde_json::from_str::<Value>(&r).ok())
            && doc["status"] == "SUCCESS"
        {
            return Some(doc);
        }
        if Instant::now() >= deadline {
            return None;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn echo(n: usize) -> OutgoingTask {
    OutgoingTask::new("worker.echo", vec![n.into()], Default::default())
}

#[tokio::test(flavor = "multi_thread")]
async fn a_sentinel_failover_in_the_middle_of_a_run_loses_no_result() {
    let _serial = SERIAL.lock().await;
    let mut set = SentinelSet::start();
    let queue = unique("sentinel-run");
    let undelivered = unique("sentinel-undelivered");
    let worker = WorkerProcess::start(
        std::slice::from_ref(&queue),
        &[
            ("REDIS_URL", set.sentinel_url.as_str()),
            ("WORKER_REDIS_MASTER_NAME", set.master_name.as_str()),
            ("WORKER_UNDELIVERED_RESULTS_QUEUE", undelivered.as_str()),
        ],
    );
    worker.wait_for_log(
        "connected to the Redis master Sentinel names",
        Duration::from_secs(5),
    );
    let old_master = set.master_port.clone();
    // What docs/deployment.md asks of a Sentinel setup: a master cut off from its replica
    // refuses writes (NOREPLICAS) instead of taking writes its demotion would discard.
    let mut master = redis::Client::open(format!("redis://127.0.0.1:{old_master}/0"))
        .expect("master URL")
        .get_multiplexed_async_connection()
        .await
        .expect("connect to the master");
    let _: () = redis::cmd("CONFIG")
        .arg(&["SET", "min-replicas-to-write", "1"])
        .query_async(&mut master)
        .await
        .expect("CONFIG SET min-replicas-to-write");

    // Tasks keep coming before, during and after the failover.
    let (_conn, channel) = amqp().await;
    let mut ids = Vec::new();
    for n in 0..60 {
        let task = echo(n);
        ids.push(task.id.clone());
        publish_task(&channel, &queue, &task).await;
    }
    let failover = tokio::task::spawn_blocking(move || {
        let port = set.failover();
        (set, port)
    });
    let mut n = 60;
    while !failover.is_finished() {
        let task = echo(n);
        ids.push(task.id.clone());
        publish_task(&channel, &queue, &task).await;
        n += 1;
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let (set, new_master) = failover.await.expect("failover ran");
    assert_ne!(new_master, old_master, "the master moved");
    for _ in 0..60 {
        let task = echo(n);
        ids.push(task.id.clone());
        publish_task(&channel, &queue, &task).await;
        n += 1;
    }

    // Every result is on the new master.
    let mut conn = redis::Client::open(format!("redis://127.0.0.1:{new_master}/0"))
        .expect("new master URL")
        .get_multiplexed_async_connection()
        .await
        .expect("connect to the new master");
    let mut missing = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(60);
    for id in &ids {
        let left = deadline.saturating_duration_since(Instant::now());
        if success_on(&mut conn, id, left).await.is_none() {
            missing.push(id.clone());
        }
    }
    assert!(
        missing.is_empty(),
        "{} of {} results missing on the new master: {missing:?}\n{}",
        missing.len(),
        ids.len(),
        worker.logs()
    );
    assert!(
        worker.logs().contains("the Redis master moved"),
        "the worker followed the failover: {}",
        worker.logs()
    );
    drop(worker);
    drop(set);
}

/// A confirmed channel on a TLS listener whose certificate verifies against `ca`.
async fn amqps(url: &str, ca: &str) -> (Connection, Channel) {
    let config = OwnedTLSConfig {
        identity: None,
        cert_chain: Some(std::fs::read_to_string(ca).expect("read CA")),
    };
    let conn = Connection::connect_with_config(
        url,
        ConnectionProperties::default(),
        config,
        lapin::runtime::default_runtime().expect("runtime"),
    )
    .await
    .expect("connect over TLS");
    let channel = conn.create_channel().await.expect("channel");
    channel
        .confirm_select(ConfirmSelectOptions::default())
        .await
        .expect("confirm.select");
    (conn, channel)
}

async fn readyz(worker: &WorkerProcess) -> Value {
    reqwest::get(format!("http://{}/readyz", worker.http_addr()))
        .await
        .expect("GET /readyz")
        .json()
        .await
        .expect("/readyz is JSON")
}

#[tokio::test(flavor = "multi_thread")]
async fn tls_to_redis_rabbitmq_and_postgres_and_a_wrong_ca_is_refused() {
    let _serial = SERIAL.lock().await;
    let ca = TlsCa::make();
    let tls = [
        ("TLS_CERT", ca.cert.as_str()),
        ("TLS_KEY", ca.key.as_str()),
        ("TLS_CA", ca.ca.as_str()),
    ];
    let redis = RedisServer::start_with_env(&[], &tls);
    let redis_url = redis.tls_url.clone().expect("a TLS port");
    assert_eq!(
        redis.port, "0",
        "TLS only: no plain-text port to fall back to"
    );
    let rabbit = RabbitNode::start_with_env(&tls);
    let rabbit_url = rabbit.tls_url.clone().expect("a TLS listener");
    // The local cluster's own certificate (self-signed, CN and SAN localhost) is the CA.
    let pg_ca = "/etc/ssl/certs/ssl-cert-snakeoil.pem";
    let pg_url = format!(
        "postgresql://postgres@localhost:5432/postgres?sslmode=verify-full&sslrootcert={pg_ca}"
    );

    let queue = unique("tls-run");
    let env = [
        ("RABBITMQ_URL", rabbit_url.as_str()),
        ("WORKER_RABBITMQ_CA_FILE", ca.ca.as_str()),
        ("REDIS_URL", redis_url.as_str()),
        ("WORKER_REDIS_CA_FILE", ca.ca.as_str()),
        ("DATABASE_URL", pg_url.as_str()),
    ];
    let worker = WorkerProcess::start(std::slice::from_ref(&queue), &env);
    let (_conn, channel) = amqps(&rabbit_url, &ca.ca).await;
    let mut ids = Vec::new();
    for n in 0..20 {
        let task = echo(n);
        ids.push(task.id.clone());
        publish_task(&channel, &queue, &task).await;
    }
    let client = redis::Client::build_with_tls(
        redis_url.as_str(),
        redis::TlsCertificates {
            client_tls: None,
            root_cert: Some(std::fs::read(&ca.ca).expect("read CA")),
        },
    )
    .expect("rediss URL");
    let mut conn = client
        .get_multiplexed_async_connection()
        .await
        .expect("connect over TLS");
    for id in &ids {
        assert!(
            success_on(&mut conn, id, Duration::from_secs(30))
                .await
                .is_some(),
            "{id} has no SUCCESS: {}",
            worker.logs()
        );
    }
    let body = readyz(&worker).await;
    for check in ["broker", "redis", "postgres"] {
        assert_eq!(body["checks"][check]["ok"], true, "{check}: {body}");
    }
    drop(worker);

    // PostgreSQL with a CA that did not sign its certificate: the TLS handshake fails.
    let wrong_pg = format!(
        "postgresql://postgres@localhost:5432/postgres?sslmode=verify-ca&sslrootcert={}",
        ca.wrong_ca
    );
    let mut wrong_env = env;
    wrong_env[4] = ("DATABASE_URL", wrong_pg.as_str());
    let worker = WorkerProcess::start(std::slice::from_ref(&queue), &wrong_env);
    let body = readyz(&worker).await;
    assert_eq!(body["checks"]["postgres"]["ok"], false, "{body}");
    assert_eq!(
        body["checks"]["postgres"]["error"], "certificate verify failed",
        "{body}"
    );
    drop(worker);

    // Redis or RabbitMQ with the wrong CA: exit 2 at once, saying so, no plain-text retry.
    for (setting, service) in [
        ("WORKER_REDIS_CA_FILE", "Redis"),
        ("WORKER_RABBITMQ_CA_FILE", "RabbitMQ"),
    ] {
        let mut wrong = env.to_vec();
        for kv in &mut wrong {
            if kv.0 == setting {
                kv.1 = ca.wrong_ca.as_str();
            }
        }
        let run = run_for(
            &["run", "--queues", &unique("never")],
            &wrong,
            Duration::from_secs(20),
        );
        assert_eq!(run.code, Some(2), "{setting}: {}", run.stderr);
        assert!(
            run.stderr.contains(&format!("{service} at"))
                && run.stderr.contains("certificate verify failed")
                && run.stderr.contains(setting),
            "{setting}: {}",
            run.stderr
        );
        assert!(!run.stderr.contains("unreachable"), "{}", run.stderr);
    }
    drop(rabbit);
    drop(redis);
}
