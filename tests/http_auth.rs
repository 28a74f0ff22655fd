//! The HTTP server's protection, against a running worker: `WORKER_HTTP_TOKEN` (bearer or
//! basic) for everything but the probes, `/metrics` behind it on request, the connection cap,
//! and the timeout that cuts off a client that stalls mid-request.

mod harness;

use std::time::{Duration, Instant};

use base64::Engine;
use harness::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const TOKEN: &str = "tok-8c1f2e9a7b";

/// A fresh client per request: no pooled connection can mask what the server does.
async fn get(url: &str, auth: Option<&str>) -> reqwest::Response {
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(0)
        .build()
        .unwrap();
    let mut request = client.get(url);
    if let Some(value) = auth {
        request = request.header("Authorization", value);
    }
    request.send().await.expect("HTTP GET")
}

fn basic(user: &str, password: &str) -> String {
    let encoded = base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"));
    format!("Basic {encoded}")
}

/// A schedules file with one schedule on `queue` that will not fire during the test.
fn quiet_schedules(queue: &str) -> std::path::PathBuf {
    let file = std::env::temp_dir().join(format!("{queue}.toml"));
    std::fs::write(
        &file,
        format!(
            "[[schedule]]\nname = \"yearly\"\ntask = \"worker.ping\"\ncron = \"0 3 1 12 *\"\nqueue = \"{queue}\"\ncatch_up = \"skip\"\n"
        ),
    )
    .unwrap();
    file
}

/// A stored result to ask for: the id of a `worker.ping` run on `queue`.
async fn a_result(queue: &str) -> String {
    let queue = queue.to_owned();
    tokio::task::spawn_blocking(move || {
        let out = cli(&[
            "send",
            "worker.ping",
            "--queue",
            &queue,
            "--wait",
            "--timeout",
            "30",
        ]);
        assert_eq!(out.status.code(), Some(0), "{}", stdout(&out));
        stdout(&out)
            .lines()
            .next()
            .unwrap()
            .trim_start_matches("id:")
            .trim()
            .to_owned()
    })
    .await
    .unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn without_a_token_everything_is_open() {
    let queue = unique("http-open");
    let worker = WorkerProcess::start(std::slice::from_ref(&queue), &[]);
    let base = format!("http://{}", worker.http_addr());
    let id = a_result(&queue).await;
    assert_eq!(
        get(&format!("{base}/results/{id}"), None).await.status(),
        200
    );
    // The scheduler is off in this process: 404, not 401.
    assert_eq!(get(&format!("{base}/schedules"), None).await.status(), 404);
    assert_eq!(get(&format!("{base}/metrics"), None).await.status(), 200);
    assert_eq!(get(&format!("{base}/healthz"), None).await.status(), 200);
    let (_c, channel) = amqp().await;
    delete_queue(&channel, &queue).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn with_a_token_only_the_probes_are_open() {
    let queue = unique("http-token");
    let schedules = quiet_schedules(&queue);
    let prefix = format!("{queue}:");
    let worker = WorkerProcess::start(
        std::slice::from_ref(&queue),
        &[
            ("DATABASE_URL", PG_ADMIN_URL),
            ("WORKER_HTTP_TOKEN", TOKEN),
            ("WORKER_NO_SCHEDULER", "false"),
            ("SCHEDULES_FILE", schedules.to_str().unwrap()),
            ("WORKER_KEY_PREFIX", prefix.as_str()),
        ],
    );
    let base = format!("http://{}", worker.http_addr());
    let id = a_result(&queue).await;

    for path in [format!("/results/{id}"), "/schedules".to_owned()] {
        let url = format!("{base}{path}");
        for wrong in [
            None,
            Some("Bearer not-the-token".to_owned()),
            Some(format!("Bearer {TOKEN}x")),
            Some(basic(TOKEN, "not-the-token")),
            Some(TOKEN.to_owned()),
        ] {
            let r = get(&url, wrong.as_deref()).await;
            assert_eq!(r.status(), 401, "{path} with {wrong:?}");
            let challenges: Vec<_> = r
                .headers()
                .get_all("www-authenticate")
                .iter()
                .map(|v| v.to_str().unwrap().to_owned())
                .collect();
            assert!(
                challenges.iter().any(|c| c.starts_with("Bearer"))
                    && challenges.iter().any(|c| c.starts_with("Basic")),
                "{challenges:?}"
            );
            assert!(!r.text().await.unwrap().contains(TOKEN));
        }
        let bearer = format!("Bearer {TOKEN}");
        assert_eq!(get(&url, Some(&bearer)).await.status(), 200, "{path}");
        for user in ["", "prometheus"] {
            let r = get(&url, Some(&basic(user, TOKEN))).await;
            assert_eq!(r.status(), 200, "{path} basic as {user:?}");
        }
    }
    // A path that matches no route is closed too: nothing is open by accident.
    assert_eq!(get(&format!("{base}/nothing"), None).await.status(), 401);
    for open in ["/healthz", "/readyz", "/metrics"] {
        let r = get(&format!("{base}{open}"), None).await;
        assert_eq!(r.status(), 200, "{open}");
    }
    assert!(!worker.logs().contains(TOKEN), "{}", worker.logs());
    drop(worker);

    let worker = WorkerProcess::start(
        std::slice::from_ref(&queue),
        &[
            ("DATABASE_URL", PG_ADMIN_URL),
            ("WORKER_HTTP_TOKEN", TOKEN),
            ("WORKER_HTTP_METRICS_AUTH", "true"),
        ],
    );
    let base = format!("http://{}", worker.http_addr());
    assert_eq!(get(&format!("{base}/metrics"), None).await.status(), 401);
    let bearer = format!("Bearer {TOKEN}");
    assert_eq!(
        get(&format!("{base}/metrics"), Some(&bearer))
            .await
            .status(),
        200
    );
    for open in ["/healthz", "/readyz"] {
        assert_eq!(get(&format!("{base}{open}"), None).await.status(), 200);
    }
    let (_c, channel) = amqp().await;
    delete_queue(&channel, &queue).await;
    let _ = std::fs::remove_file(&schedules);
}

#[tokio::test(flavor = "multi_thread")]
async fn connections_beyond_the_cap_wait_and_health_answers_once_they_go() {
    let queue = unique("http-cap");
    let worker = WorkerProcess::start(
        std::slice::from_ref(&queue),
        &[
            ("WORKER_HTTP_MAX_CONNECTIONS", "4"),
            ("WORKER_HTTP_TIMEOUT", "30"),
        ],
    );
    let addr = worker.http_addr();
    let healthz = format!("http://{addr}/healthz");
    assert_eq!(get(&healthz, None).await.status(), 200);

    // Four connections that say nothing hold every slot; more queue behind them.
    let mut idle = Vec::new();
    for _ in 0..12 {
        idle.push(TcpStream::connect(&addr).await.unwrap());
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    let held = tokio::time::timeout(Duration::from_millis(700), get(&healthz, None)).await;
    assert!(
        held.is_err(),
        "a fifth connection was served while four held the cap"
    );

    drop(idle);
    let start = Instant::now();
    let r = tokio::time::timeout(Duration::from_secs(1), get(&healthz, None))
        .await
        .expect("/healthz answers within a second once the connections are gone");
    assert_eq!(r.status(), 200);
    assert!(start.elapsed() < Duration::from_secs(1));
    assert!(worker.is_alive_now());
    let (_c, channel) = amqp().await;
    delete_queue(&channel, &queue).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_client_that_stalls_mid_request_is_cut_off_after_the_timeout() {
    let queue = unique("http-slow");
    let worker = WorkerProcess::start(
        std::slice::from_ref(&queue),
        &[("WORKER_HTTP_TIMEOUT", "1")],
    );
    let addr = worker.http_addr();

    for (what, sent) in [
        (
            "half a request",
            &b"GET /healthz HTTP/1.1\r\nHost: worker\r\n"[..],
        ),
        ("nothing", &b""[..]),
    ] {
        let mut stream = TcpStream::connect(&addr).await.unwrap();
        stream.write_all(sent).await.unwrap();
        let start = Instant::now();
        let mut answer = Vec::new();
        let read = tokio::time::timeout(Duration::from_secs(5), stream.read_to_end(&mut answer))
            .await
            .unwrap_or_else(|_| panic!("{what}: the connection was still open after 5 s"));
        let elapsed = start.elapsed();
        // Closed (with or without a 408 first), or reset.
        let _ = read;
        let answer = String::from_utf8_lossy(&answer);
        assert!(
            answer.is_empty() || answer.starts_with("HTTP/1.1 408"),
            "{what}: {answer}"
        );
        assert!(
            elapsed >= Duration::from_millis(800) && elapsed < Duration::from_secs(3),
            "{what}: cut off after {elapsed:?}"
        );
    }
    // A whole request on a fresh connection is still answered.
    assert_eq!(
        get(&format!("http://{addr}/healthz"), None).await.status(),
        200
    );
    let (_c, channel) = amqp().await;
    delete_queue(&channel, &queue).await;
}
