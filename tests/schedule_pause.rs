//! A paused schedule publishes nothing — on two replicas, across a restart — until it is
//! resumed; then it ticks again, each tick once. Real `worker scheduler` processes, RabbitMQ,
//! Redis and PostgreSQL (a fresh database; the pause table is created by the worker).

mod harness;

use std::collections::HashSet;
use std::process::Output;
use std::time::Duration;

use harness::*;

fn cli_env(args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_worker"));
    cmd.args(args)
        .env("RABBITMQ_URL", RABBITMQ_URL)
        .env("REDIS_URL", REDIS_URL)
        .env("LOG_FORMAT", "text");
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.output().expect("run worker CLI")
}

/// Messages now in `queue`, without taking them (0 while it does not exist: nothing was
/// published, since the publisher declares it).
async fn depth(queue: &str) -> u32 {
    let (_c, channel) = amqp_channel().await;
    channel
        .queue_declare(
            queue.into(),
            lapin::options::QueueDeclareOptions {
                passive: true,
                ..Default::default()
            },
            lapin::types::FieldTable::default(),
        )
        .await
        .map(|q| q.message_count())
        .unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread")]
async fn a_paused_schedule_publishes_nothing_on_two_replicas_and_across_a_restart_until_resumed() {
    let db = TestDatabase::create().await;
    let queue = unique("pause-ticks");
    let prefix = format!("{}:", unique("pause-prefix"));
    let file = std::env::temp_dir().join(format!("{}.toml", unique("pause-schedules")));
    std::fs::write(
        &file,
        format!(
            "[[schedule]]\nname = \"every-second\"\ntask = \"worker.ping\"\nevery = \"1s\"\nqueue = \"{queue}\"\ncatch_up = \"skip\"\n"
        ),
    )
    .unwrap();
    let path = file.to_str().unwrap().to_owned();
    let env = [
        ("WORKER_KEY_PREFIX", prefix.as_str()),
        ("DATABASE_URL", db.url.as_str()),
        ("SCHEDULES_FILE", path.as_str()),
    ];
    let out = cli_env(&["schedules", "pause", "every-second"], &env);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert!(stdout(&out).contains("paused"), "{}", stdout(&out));
    let out = cli_env(&["schedules", "pause", "no-such"], &env);
    assert_eq!(out.status.code(), Some(1), "an unknown schedule is refused");

    let mut replicas: Vec<WorkerProcess> = (0..2)
        .map(|_| WorkerProcess::spawn(&["scheduler"], &env))
        .collect();
    tokio::time::sleep(Duration::from_secs(4)).await;
    assert_eq!(depth(&queue).await, 0, "a paused schedule published");
    for r in &replicas {
        assert!(
            r.logs().contains("schedule paused: tick passed over"),
            "{}",
            r.logs()
        );
    }

    // `worker scheduler` serves the status page too, and it says paused, with "Resume".
    let base = format!("http://{}", replicas[0].http_addr());
    let listed: serde_json::Value = reqwest::get(format!("{base}/api/schedules"))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(listed[0]["name"], "every-second");
    assert_eq!(listed[0]["paused"], true, "{listed}");
    let page = reqwest::get(format!("{base}/status"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        page.contains("/status/schedules/every-second/resume"),
        "{page}"
    );

    // A restart keeps it paused: the pause is in PostgreSQL, not in the process.
    drop(replicas.remove(0));
    replicas.push(WorkerProcess::spawn(&["scheduler"], &env));
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(
        depth(&queue).await,
        0,
        "paused, yet published after a restart"
    );

    let out = cli_env(&["schedules", "resume", "every-second"], &env);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert!(
        wait_until(Duration::from_secs(10), || async {
            depth(&queue).await >= 3
        })
        .await,
        "no tick after resume"
    );
    drop(replicas);
    // Each tick once across the two replicas, and none of the ticks passed over while paused.
    let (_c, channel) = amqp().await;
    let seen = drain(&channel, &queue).await;
    let ticks: Vec<String> = seen
        .iter()
        .map(|(h, _)| h["schedule_tick"].as_str().unwrap_or_default().to_owned())
        .collect();
    let distinct: HashSet<&String> = ticks.iter().collect();
    assert_eq!(
        distinct.len(),
        ticks.len(),
        "a tick published twice: {ticks:?}"
    );
    delete_queue(&channel, &queue).await;
    let _ = std::fs::remove_file(&file);
    db.drop_now().await;
}

/// A TCP forwarder to PostgreSQL on a loopback port, which the test cuts to make an outage.
struct Proxy {
    port: u16,
    task: tokio::task::JoinHandle<()>,
}

impl Proxy {
    async fn start(port: u16) -> Self {
        let listener = tokio::net::TcpListener::bind(("127.0.0.1", port))
            .await
            .unwrap();
        let port = listener.local_addr().unwrap().port();
        let task = tokio::spawn(async move {
            let mut links = tokio::task::JoinSet::new();
            loop {
                let Ok((mut client, _)) = listener.accept().await else {
                    break;
                };
                links.spawn(async move {
                    if let Ok(mut server) = tokio::net::TcpStream::connect("127.0.0.1:5432").await {
                        let _ = tokio::io::copy_bidirectional(&mut client, &mut server).await;
                    }
                });
            }
        });
        Self { port, task }
    }

    /// The outage: no new connection, and every open one cut (the JoinSet is dropped).
    fn cut(self) -> u16 {
        self.task.abort();
        self.port
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_paused_schedule_stays_paused_while_postgresql_does_not_answer() {
    let db = TestDatabase::create().await;
    let proxy = Proxy::start(0).await;
    let via_proxy = db
        .url
        .replace("127.0.0.1:5432", &format!("127.0.0.1:{}", proxy.port));
    let queue = unique("pause-outage");
    let prefix = format!("{}:", unique("pause-outage-prefix"));
    let file = std::env::temp_dir().join(format!("{}.toml", unique("pause-outage")));
    std::fs::write(
        &file,
        format!(
            "[[schedule]]\nname = \"every-second\"\ntask = \"worker.ping\"\nevery = \"1s\"\nqueue = \"{queue}\"\ncatch_up = \"skip\"\n"
        ),
    )
    .unwrap();
    let path = file.to_str().unwrap().to_owned();
    let direct = [
        ("WORKER_KEY_PREFIX", prefix.as_str()),
        ("DATABASE_URL", db.url.as_str()),
        ("SCHEDULES_FILE", path.as_str()),
    ];
    let out = cli_env(&["schedules", "pause", "every-second"], &direct);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let scheduler = WorkerProcess::spawn(
        &["scheduler"],
        &[
            ("WORKER_KEY_PREFIX", prefix.as_str()),
            ("DATABASE_URL", via_proxy.as_str()),
            ("SCHEDULES_FILE", path.as_str()),
        ],
    );
    scheduler.wait_for_log("schedule paused: tick passed over", Duration::from_secs(10));

    let port = proxy.cut();
    scheduler.wait_for_log("using the last answer", Duration::from_secs(15));
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(
        depth(&queue).await,
        0,
        "published while PostgreSQL was away"
    );

    // PostgreSQL back (the same port), the schedule resumed: it ticks again.
    let _proxy = Proxy::start(port).await;
    let out = cli_env(&["schedules", "resume", "every-second"], &direct);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert!(
        wait_until(Duration::from_secs(20), || async {
            depth(&queue).await >= 1
        })
        .await,
        "no tick after PostgreSQL came back and the schedule was resumed: {}",
        scheduler.logs()
    );
    drop(scheduler);
    let (_c, channel) = amqp().await;
    delete_queue(&channel, &queue).await;
    let _ = std::fs::remove_file(&file);
    db.drop_now().await;
}
