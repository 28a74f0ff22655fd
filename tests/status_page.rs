//! The status page (`/status`), its JSON (`/api/...`) and the CLI equivalents, against a real
//! worker, RabbitMQ and Redis; the page itself in headless Chromium driven over WebDriver
//! (chromedriver's HTTP API, spoken with reqwest), with screenshots saved under
//! `target/screenshots/` for a person to look at.
//!
//! Each test makes the state it then checks the page against: a failure it caused (whose
//! exception text is hostile HTML), a dead letter it made, the depths of its own queues.

mod harness;

use std::path::PathBuf;
use std::process::{Child, Command, Output, Stdio};
use std::time::Duration;

use base64::Engine;
use harness::*;
use lapin::types::{AMQPValue, FieldTable, LongString};
use serde_json::{Value, json};
use worker::wire::OutgoingTask;

const TOKEN: &str = "status-tok-5d2e81";
/// An exception text that would run script if the page did not escape it.
const HOSTILE: &str = "<img src=x onerror=alert(1)><script>alert(2)</script>";
/// A task name nobody registers, which would be markup if the page did not escape it.
const UNKNOWN_TASK: &str = "status.<i>unknown</i>";

fn screenshots() -> PathBuf {
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| root().join("target"));
    let dir = target.join("screenshots");
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// The worker CLI with extra environment.
fn cli_env(args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_worker"));
    cmd.args(args)
        .env("RABBITMQ_URL", RABBITMQ_URL)
        .env("REDIS_URL", REDIS_URL)
        .env("LOG_FORMAT", "text");
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.output().expect("run worker CLI")
}

fn sent_id(out: &Output) -> String {
    stdout(out)
        .lines()
        .next()
        .unwrap_or_default()
        .trim_start_matches("id:")
        .trim()
        .to_owned()
}

/// A schedules file: `ping-later` publishes `worker.ping` to `queue`, yearly (never during the
/// test, so every message there comes from "run now").
fn schedules_file(queue: &str) -> PathBuf {
    let file = std::env::temp_dir().join(format!("{}.toml", unique("status-schedules")));
    std::fs::write(
        &file,
        format!(
            "[[schedule]]\nname = \"ping-later\"\ntask = \"worker.ping\"\ncron = \"0 3 1 12 *\"\nqueue = \"{queue}\"\ncatch_up = \"skip\"\n"
        ),
    )
    .unwrap();
    file
}

/// What a test sets up: a worker on `queue` (token required, scheduler on) and the state the
/// page must show.
struct Scene {
    /// `None` once stopped.
    worker: Option<WorkerProcess>,
    queue: String,
    /// Where the schedule publishes (not consumed: its depth counts "run now").
    sched_queue: String,
    prefix: String,
    schedules: PathBuf,
    failed_id: String,
    dead_id: String,
    /// Its own database (the schedule pauses' table is created there).
    db: Option<TestDatabase>,
}

impl Scene {
    async fn new(name: &str) -> Self {
        let queue = unique(name);
        let sched_queue = format!("{queue}-sched");
        let prefix = format!("{}:", unique("status-prefix"));
        let schedules = schedules_file(&sched_queue);
        let db = TestDatabase::create().await;
        let worker = start_worker(&queue, &prefix, &schedules, &db.url);
        let key_prefix = prefix.clone();
        // A failure we cause, its exception hostile HTML.
        let kwargs = json!({ "message": HOSTILE }).to_string();
        let q = queue.clone();
        let (failed, dead) = tokio::task::spawn_blocking(move || {
            let failed = cli_env(
                &[
                    "send",
                    "worker.fail",
                    "--queue",
                    &q,
                    "--kwargs",
                    &kwargs,
                    "--wait",
                    "--timeout",
                    "30",
                ],
                &[("WORKER_KEY_PREFIX", key_prefix.as_str())],
            );
            assert_eq!(failed.status.code(), Some(1), "{}", stdout(&failed));
            // A dead letter we make: a task nobody registered.
            let dead = cli_env(
                &[
                    "send",
                    UNKNOWN_TASK,
                    "--queue",
                    &q,
                    "--wait",
                    "--timeout",
                    "30",
                ],
                &[],
            );
            assert_eq!(dead.status.code(), Some(1), "{}", stdout(&dead));
            (sent_id(&failed), sent_id(&dead))
        })
        .await
        .unwrap();
        Self {
            worker: Some(worker),
            queue,
            sched_queue,
            prefix,
            schedules,
            failed_id: failed,
            dead_id: dead,
            db: Some(db),
        }
    }

    fn worker(&self) -> &WorkerProcess {
        self.worker.as_ref().expect("the worker runs")
    }

    fn base(&self) -> String {
        format!("http://{}", self.worker().http_addr())
    }

    /// Stop the worker, then remove the test's queues, Redis key and file.
    async fn cleanup(mut self) {
        drop(self.worker.take());
        let (_c, channel) = amqp().await;
        delete_queue(&channel, &self.queue).await;
        delete_queue(&channel, &self.sched_queue).await;
        let mut redis = redis().await;
        let _: () = redis::cmd("DEL")
            .arg(format!("{}failures", self.prefix))
            .query_async(&mut redis)
            .await
            .unwrap_or(());
        let _ = std::fs::remove_file(&self.schedules);
        if let Some(db) = self.db.take() {
            db.drop_now().await;
        }
    }

    fn db_url(&self) -> String {
        self.db.as_ref().map(|d| d.url.clone()).unwrap_or_default()
    }
}

fn start_worker(
    queue: &str,
    prefix: &str,
    schedules: &std::path::Path,
    database_url: &str,
) -> WorkerProcess {
    let schedules = schedules.to_str().unwrap().to_owned();
    // Its own remote-control namespace and node name: the workers list is then exactly ours
    // (and no other test's worker holds our node's mailbox).
    let namespace = prefix.trim_end_matches(':').to_owned();
    let node = format!("status@{namespace}");
    WorkerProcess::start(
        &[queue.to_owned()],
        &[
            ("WORKER_HTTP_TOKEN", TOKEN),
            ("WORKER_KEY_PREFIX", prefix),
            ("WORKER_NO_SCHEDULER", "false"),
            ("SCHEDULES_FILE", &schedules),
            ("DATABASE_URL", database_url),
            ("WORKER_CONTROL_EXCHANGE", &namespace),
            ("WORKER_HOSTNAME", &node),
        ],
    )
}

fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .pool_max_idle_per_host(0)
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap()
}

async fn api(base: &str, path: &str) -> Value {
    let r = client()
        .get(format!("{base}{path}"))
        .bearer_auth(TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200, "{path}");
    r.json().await.unwrap()
}

fn row<'a>(queues: &'a Value, name: &str) -> &'a Value {
    queues
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["name"] == name)
        .unwrap_or_else(|| panic!("no row for {name}: {queues}"))
}

/// A dead letter made by hand in `<queue>.dead`: a `worker.ping` that runs once replayed.
async fn hand_made_dead_letter(queue: &str) -> String {
    let (_c, channel) = amqp().await;
    let task = OutgoingTask::new("worker.ping", vec![], serde_json::Map::new());
    let message = task_message(queue, &task);
    let mut props = message.amqp_properties();
    let mut headers = props.headers().clone().unwrap_or_default();
    headers.insert(
        "x-dead-letter-reason".into(),
        AMQPValue::LongString(LongString::from("made_by_test")),
    );
    headers.insert(
        "x-original-queue".into(),
        AMQPValue::LongString(LongString::from(queue)),
    );
    props = props.with_headers(FieldTable::from(headers.inner().clone()));
    publish_raw(&channel, &format!("{queue}.dead"), &message.body, props).await;
    task.id
}

// ---- the JSON API and the CLI ----

#[tokio::test(flavor = "multi_thread")]
async fn the_api_shows_the_real_state_behind_the_token_and_its_actions_work() {
    let mut scene = Scene::new("status-api").await;
    let base = scene.base();

    // The token is required for every page and API path; actions are POST only.
    for path in ["/status", "/api/status", "/api/queues", "/api/failures"] {
        let r = client().get(format!("{base}{path}")).send().await.unwrap();
        assert_eq!(r.status(), 401, "{path} without the token");
    }
    let r = client()
        .post(format!("{base}/api/schedules/ping-later/run"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    let r = client()
        .get(format!("{base}/api/schedules/ping-later/run"))
        .bearer_auth(TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 405, "an action is never a GET");

    // Queue depths and consumers as RabbitMQ has them.
    let queues = api(&base, "/api/queues").await;
    assert_eq!(row(&queues, &scene.queue)["depth"]["consumers"], 1);
    assert_eq!(
        row(&queues, &format!("{}.dead", scene.queue))["depth"]["messages"],
        1
    );
    assert_eq!(
        row(&queues, &format!("{}.dead", scene.queue))["role"],
        "dead_letters"
    );
    assert!(
        row(&queues, "worker.results.undelivered")["depth"].is_object(),
        "{queues}"
    );
    // The schedule's queue was never declared: shown missing, and looking did not create it.
    assert!(
        row(&queues, &scene.sched_queue)["depth"].is_null(),
        "{queues}"
    );
    let (_c, channel) = amqp_channel().await;
    let passive = channel
        .queue_declare(
            scene.sched_queue.as_str().into(),
            lapin::options::QueueDeclareOptions {
                passive: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await;
    assert!(passive.is_err(), "looking at a missing queue created it");

    // The failure we caused, with its exception.
    let failures = api(&base, "/api/failures?since=1h").await;
    let ours: Vec<&Value> = failures
        .as_array()
        .unwrap()
        .iter()
        .filter(|f| f["task_id"] == scene.failed_id.as_str())
        .collect();
    assert_eq!(ours.len(), 1, "{failures}");
    assert_eq!(ours[0]["kind"], "failure");
    assert_eq!(ours[0]["exception"], HOSTILE);
    assert_eq!(ours[0]["task"], "worker.fail");

    // The dead letter, with its reason.
    let letters = api(&base, "/api/dead-letters").await;
    let group = &letters.as_array().unwrap()[0];
    assert_eq!(group["queue"], scene.queue.as_str());
    assert_eq!(group["letters"][0]["task_id"], scene.dead_id.as_str());
    assert_eq!(group["letters"][0]["reason"], "not_registered");

    // Workers online: this one answers.
    let workers = api(&base, "/api/workers").await;
    let host = scene.worker().ready["hostname"]
        .as_str()
        .unwrap()
        .to_owned();
    let pid = scene.worker().ready["pid"].clone();
    assert!(
        workers
            .as_array()
            .unwrap()
            .iter()
            .any(|w| w["node"] == host.as_str() && w["pid"] == pid),
        "{workers}"
    );

    // Retries are kept too: a task that asks to be retried, three times, then fails.
    let q = scene.queue.clone();
    let prefix = scene.prefix.clone();
    let retried = tokio::task::spawn_blocking(move || {
        let kwargs = json!({"message": "try again", "retry_countdown": 0.05}).to_string();
        let out = cli_env(
            &[
                "send",
                "worker.fail",
                "--queue",
                &q,
                "--kwargs",
                &kwargs,
                "--wait",
                "--timeout",
                "30",
            ],
            &[("WORKER_KEY_PREFIX", prefix.as_str())],
        );
        assert_eq!(out.status.code(), Some(1), "{}", stdout(&out));
        sent_id(&out)
    })
    .await
    .unwrap();
    let mut kinds = Vec::new();
    for _ in 0..40 {
        let failures = api(&base, "/api/failures?since=1h").await;
        kinds = failures
            .as_array()
            .unwrap()
            .iter()
            .filter(|f| f["task_id"] == retried.as_str())
            .map(|f| {
                (
                    f["kind"].as_str().unwrap().to_owned(),
                    f["retries"].as_u64().unwrap(),
                )
            })
            .collect();
        if kinds.len() == 4 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    kinds.sort();
    assert_eq!(
        kinds,
        vec![
            ("failure".to_owned(), 3),
            ("retry".to_owned(), 0),
            ("retry".to_owned(), 1),
            ("retry".to_owned(), 2)
        ]
    );

    // "Run now" publishes the schedule's task once, with the beat headers.
    let r = client()
        .post(format!("{base}/api/schedules/ping-later/run"))
        .bearer_auth(TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let run: Value = r.json().await.unwrap();
    let (_c2, confirm) = amqp().await;
    let seen = drain(&confirm, &scene.sched_queue).await;
    assert_eq!(seen.len(), 1);
    assert_eq!(seen[0].0["id"], run["task_id"]);
    assert_eq!(seen[0].0["task"], "worker.ping");
    assert_eq!(seen[0].0["schedule"], "ping-later");
    let r = client()
        .post(format!("{base}/api/schedules/no-such/run"))
        .bearer_auth(TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);

    // Pause and resume through the API: the listing says so.
    let post = |path: &str| {
        client()
            .post(format!("{base}{path}"))
            .bearer_auth(TOKEN)
            .send()
    };
    assert_eq!(
        post("/api/schedules/ping-later/pause")
            .await
            .unwrap()
            .status(),
        200
    );
    let listed = api(&base, "/api/schedules").await;
    assert_eq!(listed[0]["paused"], true, "{listed}");
    assert_eq!(
        post("/api/schedules/no-such/pause").await.unwrap().status(),
        404
    );
    assert_eq!(
        post("/api/schedules/ping-later/resume")
            .await
            .unwrap()
            .status(),
        200
    );
    let listed = api(&base, "/api/schedules").await;
    assert_eq!(listed[0]["paused"], false, "{listed}");

    // A cross-site POST is refused even with the credentials.
    let r = client()
        .post(format!("{base}/api/schedules/ping-later/run"))
        .bearer_auth(TOKEN)
        .header("Origin", "http://evil.example")
        .header("Sec-Fetch-Site", "cross-site")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 403);
    assert!(drain(&confirm, &scene.sched_queue).await.is_empty());

    // Replay through the API: the hand-made letter runs and succeeds.
    let ping = hand_made_dead_letter(&scene.queue).await;
    let r = client()
        .post(format!("{base}/api/dead-letters/{}/replay", scene.queue))
        .bearer_auth(TOKEN)
        .header("Content-Type", "application/x-www-form-urlencoded")
        .body(format!("task_id={ping}"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert!(
        wait_result(&ping, Some("SUCCESS"), Duration::from_secs(20))
            .await
            .is_some_and(|v| v["status"] == "SUCCESS"),
        "the replayed letter did not run"
    );
    // Delete through the API: the unknown task's letter is gone, nothing else.
    let r = client()
        .post(format!("{base}/api/dead-letters/{}/delete", scene.queue))
        .bearer_auth(TOKEN)
        .header("Content-Type", "application/x-www-form-urlencoded")
        .body(format!("task_id={}", scene.dead_id))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(
        message_count(&channel, &format!("{}.dead", scene.queue)).await,
        0
    );
    let r = client()
        .post(format!("{base}/api/dead-letters/not-ours/delete"))
        .bearer_auth(TOKEN)
        .header("Content-Type", "application/x-www-form-urlencoded")
        .body("task_id=x")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404, "an action names only this worker's queues");

    // The failures survive a restart: they are in Redis, not in the process.
    drop(scene.worker.take());
    let worker = start_worker(
        &scene.queue,
        &scene.prefix,
        &scene.schedules,
        &scene.db_url(),
    );
    let base = format!("http://{}", worker.http_addr());
    let failures = api(&base, "/api/failures?since=1h").await;
    assert!(
        failures
            .as_array()
            .unwrap()
            .iter()
            .any(|f| f["task_id"] == scene.failed_id.as_str()),
        "{failures}"
    );
    drop(worker);
    scene.cleanup().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn the_cli_shows_queues_failures_and_runs_and_removes() {
    let scene = Scene::new("status-cli").await;
    let q = scene.queue.clone();
    let sched_queue = scene.sched_queue.clone();
    let prefix = scene.prefix.clone();
    let failed_id = scene.failed_id.clone();
    let schedules = scene.schedules.to_str().unwrap().to_owned();
    tokio::task::spawn_blocking(move || {
        let env = [("WORKER_KEY_PREFIX", prefix.as_str())];
        // `worker queues`: depths as RabbitMQ has them, a missing queue shown and not created.
        let out = cli_env(&["queues", "--queue", &q, "--json"], &env);
        assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
        let rows: Value = serde_json::from_str(&stdout(&out)).unwrap();
        assert_eq!(row(&rows, &format!("{q}.dead"))["depth"]["messages"], 1);
        assert_eq!(row(&rows, &q)["depth"]["consumers"], 1);
        let never = format!("{q}-never");
        let out = cli_env(&["queues", "--queue", &never], &env);
        assert!(stdout(&out).contains("missing"), "{}", stdout(&out));

        // `dead-letters list` on a queue that has none: reported, not created.
        let out = cli_env(&["dead-letters", "list", "--queue", &never], &env);
        assert_eq!(out.status.code(), Some(0));
        assert!(stderr(&out).contains("no such queue"), "{}", stderr(&out));
        let out = cli_env(&["queues", "--queue", &never, "--json"], &env);
        let rows: Value = serde_json::from_str(&stdout(&out)).unwrap();
        assert!(row(&rows, &format!("{never}.dead"))["depth"].is_null());

        // `worker failures --since 1h`.
        let out = cli_env(&["failures", "--since", "1h", "--json"], &env);
        assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
        let ours: Vec<Value> = stdout(&out)
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .filter(|f: &Value| f["task_id"] == failed_id.as_str())
            .collect();
        assert_eq!(ours.len(), 1, "{}", stdout(&out));
        assert_eq!(ours[0]["exception"], HOSTILE);
        let out = cli_env(&["failures", "--since", "bogus"], &env);
        assert_eq!(out.status.code(), Some(2));

        // `worker schedules run NAME`.
        let out = cli_env(
            &["schedules", "run", "--schedules", &schedules, "ping-later"],
            &env,
        );
        assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
        let id = sent_id(&out);
        let out = cli_env(
            &["schedules", "run", "--schedules", &schedules, "nope"],
            &env,
        );
        assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
        (id, sched_queue, q)
    })
    .await
    .map(|(id, sched_queue, q)| async move {
        let (_c, channel) = amqp().await;
        let seen = drain(&channel, &sched_queue).await;
        assert_eq!(seen.len(), 1);
        assert_eq!(seen[0].0["id"], id.as_str());
        assert_eq!(seen[0].0["task"], "worker.ping");
        q
    })
    .unwrap()
    .await;

    // `dead-letters delete|purge`: refused without --yes; with it, removed.
    let q = scene.queue.clone();
    let dead_id = scene.dead_id.clone();
    let extra = hand_made_dead_letter(&q).await;
    tokio::task::spawn_blocking(move || {
        for cmd in ["delete", "purge"] {
            let out = cli(&["dead-letters", cmd, "--queue", &q]);
            assert_eq!(out.status.code(), Some(2), "{cmd} without --yes");
            assert!(stderr(&out).contains("--yes"), "{}", stderr(&out));
        }
        let out = cli(&[
            "dead-letters",
            "delete",
            "--queue",
            &q,
            "--id",
            &dead_id,
            "--yes",
            "--json",
        ]);
        assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
        assert_eq!(stdout(&out).lines().count(), 1, "{}", stdout(&out));
        assert!(stdout(&out).contains(&dead_id));
        let out = cli(&["dead-letters", "list", "--queue", &q, "--json"]);
        assert!(stdout(&out).contains(&extra) && !stdout(&out).contains(&dead_id));
        let out = cli(&["dead-letters", "purge", "--queue", &q, "--yes"]);
        assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
        assert!(stdout(&out).contains("1 purged"), "{}", stdout(&out));
    })
    .await
    .unwrap();
    let (_c, channel) = amqp().await;
    assert_eq!(
        message_count(&channel, &format!("{}.dead", scene.queue)).await,
        0
    );
    scene.cleanup().await;
}

// ---- the page in a browser ----

/// Debian's chromium and chromedriver, installed by the project's script when missing.
fn ensure_chromium() {
    let have = |bin: &str| {
        Command::new("sh")
            .args(["-c", &format!("command -v {bin}")])
            .stdout(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    };
    if have("chromium") && have("chromedriver") {
        return;
    }
    let status = Command::new(root().join("scripts/install-chromium"))
        .status()
        .expect("run scripts/install-chromium");
    assert!(status.success(), "scripts/install-chromium failed");
}

/// chromedriver on a free loopback port, and one headless Chromium session.
struct Browser {
    driver: Child,
    base: String,
    session: String,
    http: reqwest::Client,
    profile: PathBuf,
}

const ELEMENT: &str = "element-6066-11e4-a52e-4f735466cecf";

impl Browser {
    async fn start() -> Self {
        ensure_chromium();
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let driver = Command::new("chromedriver")
            .args([format!("--port={port}"), "--allowed-ips=127.0.0.1".into()])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start chromedriver");
        let base = format!("http://127.0.0.1:{port}");
        let http = reqwest::Client::new();
        let up = wait_until(Duration::from_secs(15), || {
            let http = http.clone();
            let url = format!("{base}/status");
            async move { http.get(url).send().await.is_ok() }
        })
        .await;
        assert!(up, "chromedriver did not start");
        let profile = std::env::temp_dir().join(unique("chromium-profile"));
        let args = vec![
            "--headless".to_owned(),
            "--no-sandbox".into(),
            "--disable-gpu".into(),
            "--disable-quic".into(),
            "--no-first-run".into(),
            "--disable-background-networking".into(),
            "--disable-component-update".into(),
            "--disable-sync".into(),
            "--disable-dev-shm-usage".into(),
            format!("--user-data-dir={}", profile.display()),
            "--window-size=1200,1400".into(),
        ];
        let caps = json!({"capabilities": {"alwaysMatch": {
            "browserName": "chrome",
            "goog:chromeOptions": {"binary": "/usr/bin/chromium", "args": args}
        }}});
        let r: Value = http
            .post(format!("{base}/session"))
            .json(&caps)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        let session = r["value"]["sessionId"]
            .as_str()
            .unwrap_or_else(|| panic!("no WebDriver session: {r}"))
            .to_owned();
        Self {
            driver,
            base,
            session,
            http,
            profile,
        }
    }

    async fn call(&self, method: reqwest::Method, path: &str, body: Option<Value>) -> Value {
        let url = format!("{}/session/{}{path}", self.base, self.session);
        let mut req = self.http.request(method, url);
        if let Some(body) = body {
            req = req.json(&body);
        }
        let r: Value = req.send().await.unwrap().json().await.unwrap();
        r["value"].clone()
    }

    async fn open(&self, url: &str) {
        self.call(reqwest::Method::POST, "/url", Some(json!({ "url": url })))
            .await;
    }

    async fn source(&self) -> String {
        self.call(reqwest::Method::GET, "/source", None)
            .await
            .as_str()
            .unwrap_or_default()
            .to_owned()
    }

    async fn find_all(&self, css: &str) -> Vec<String> {
        let v = self
            .call(
                reqwest::Method::POST,
                "/elements",
                Some(json!({"using": "css selector", "value": css})),
            )
            .await;
        v.as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|e| e[ELEMENT].as_str().map(str::to_owned))
                    .collect()
            })
            .unwrap_or_default()
    }

    async fn text(&self, css: &str) -> String {
        let Some(id) = self.find_all(css).await.into_iter().next() else {
            panic!("no element {css}: {}", self.source().await);
        };
        self.call(reqwest::Method::GET, &format!("/element/{id}/text"), None)
            .await
            .as_str()
            .unwrap_or_default()
            .to_owned()
    }

    /// The page's note once it starts with `prefix` (a click's form POST and redirect finish
    /// after WebDriver's click returns, so poll).
    async fn note(&self, prefix: &str) -> String {
        let mut last = String::new();
        for _ in 0..100 {
            if let Some(id) = self.find_all("#note").await.into_iter().next() {
                let v = self
                    .call(reqwest::Method::GET, &format!("/element/{id}/text"), None)
                    .await;
                last = v.as_str().unwrap_or_default().to_owned();
                if last.starts_with(prefix) {
                    return last;
                }
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!(
            "no note starting {prefix:?} (last: {last:?}): {}",
            self.source().await
        );
    }

    async fn click(&self, css: &str) {
        let Some(id) = self.find_all(css).await.into_iter().next() else {
            panic!("no element {css}: {}", self.source().await);
        };
        self.call(
            reqwest::Method::POST,
            &format!("/element/{id}/click"),
            Some(json!({})),
        )
        .await;
    }

    async fn resize(&self, width: u32, height: u32) {
        self.call(
            reqwest::Method::POST,
            "/window/rect",
            Some(json!({"width": width, "height": height})),
        )
        .await;
    }

    async fn screenshot(&self, name: &str) -> PathBuf {
        let b64 = self.call(reqwest::Method::GET, "/screenshot", None).await;
        let png = base64::engine::general_purpose::STANDARD
            .decode(b64.as_str().unwrap_or_default())
            .expect("screenshot is base64");
        assert!(png.starts_with(b"\x89PNG"), "not a PNG");
        let path = screenshots().join(name);
        std::fs::write(&path, png).unwrap();
        path
    }

    async fn close(mut self) {
        let _ = self
            .http
            .delete(format!("{}/session/{}", self.base, self.session))
            .send()
            .await;
        let _ = self.driver.kill();
        let _ = self.driver.wait();
        let _ = std::fs::remove_dir_all(&self.profile);
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn the_page_in_chromium_shows_the_state_and_run_now_and_replay_work() {
    let scene = Scene::new("status-page").await;
    let ping = hand_made_dead_letter(&scene.queue).await;
    let browser = Browser::start().await;
    let addr = scene.worker().http_addr();
    // Basic auth with the token as password, as a person's browser would send it.
    let page = format!("http://op:{TOKEN}@{addr}/status");
    browser.open(&page).await;
    let html = browser.source().await;

    // What it shows is what is there: the failure (escaped), the dead letters, the depths.
    assert!(html.contains(&scene.failed_id), "{html}");
    assert!(
        html.contains("&lt;img src=x onerror=alert(1)&gt;&lt;script&gt;"),
        "the hostile exception is not shown escaped: {html}"
    );
    assert!(browser.find_all("img").await.is_empty(), "an <img> got in");
    assert!(browser.find_all("i").await.is_empty(), "an <i> got in");
    assert!(html.contains("status.&lt;i&gt;unknown&lt;/i&gt;"), "{html}");
    assert_eq!(
        browser.find_all("script").await.len(),
        0,
        "a <script> got in"
    );
    let dead_row = format!("tr.queue[data-queue=\"{}.dead\"] td.messages", scene.queue);
    assert_eq!(browser.text(&dead_row).await, "2");
    let consumers = format!("tr.queue[data-queue=\"{}\"] td.consumers", scene.queue);
    assert_eq!(browser.text(&consumers).await, "1");
    assert!(html.contains(&scene.dead_id) && html.contains("not_registered"));
    assert!(html.contains(&ping) && html.contains("made_by_test"));
    assert!(html.contains("ping-later"));
    assert!(html.contains(scene.worker().ready["hostname"].as_str().unwrap()));
    assert!(html.contains("name=\"viewport\""));
    // Tall enough for the whole page in one picture.
    browser.resize(1200, 2400).await;
    browser.screenshot("status-page.png").await;
    browser.resize(390, 844).await;
    browser.screenshot("status-page-phone.png").await;
    browser.resize(1200, 1400).await;

    // Click "Run now": the schedule's task is published once.
    browser
        .click("tr.schedule[data-schedule=\"ping-later\"] button")
        .await;
    browser.note("Published").await;
    let (_c, channel) = amqp().await;
    let seen = drain(&channel, &scene.sched_queue).await;
    assert_eq!(seen.len(), 1, "run now published {} messages", seen.len());
    assert_eq!(seen[0].0["task"], "worker.ping");
    assert_eq!(seen[0].0["schedule"], "ping-later");
    browser.screenshot("status-page-run-now.png").await;

    // Click "Pause": the page shows it paused, with "Resume"; click that, and it is not.
    browser
        .click("tr.schedule[data-schedule=\"ping-later\"] button.pause")
        .await;
    browser.note("Paused").await;
    assert_eq!(
        browser
            .find_all("tr.schedule[data-schedule=\"ping-later\"] button.resume")
            .await
            .len(),
        1
    );
    browser.screenshot("status-page-paused.png").await;
    browser
        .click("tr.schedule[data-schedule=\"ping-later\"] button.resume")
        .await;
    browser.note("Resumed").await;
    assert_eq!(
        browser
            .find_all("tr.schedule[data-schedule=\"ping-later\"] button.pause")
            .await
            .len(),
        1
    );

    // Click "Replay" on the hand-made letter: it runs and succeeds; the other stays.
    browser
        .click(&format!(
            "tr.dead-letter[data-task-id=\"{ping}\"] button.replay"
        ))
        .await;
    browser.note("Replayed 1").await;
    assert!(
        wait_result(&ping, Some("SUCCESS"), Duration::from_secs(20))
            .await
            .is_some_and(|v| v["status"] == "SUCCESS"),
        "the replayed letter did not run"
    );
    browser.open(&page).await;
    assert_eq!(browser.text(&dead_row).await, "1");
    assert!(
        browser
            .find_all(&format!("tr.dead-letter[data-task-id=\"{ping}\"]"))
            .await
            .is_empty()
    );
    browser.screenshot("status-page-replayed.png").await;

    browser.close().await;
    scene.cleanup().await;
}

// ---- the failure log's bounds ----

#[tokio::test(flavor = "multi_thread")]
async fn the_failure_log_keeps_the_newest_thousand_with_a_ttl_and_cuts_long_exceptions() {
    let queue = unique("status-bounds");
    let prefix = format!("{}:", unique("status-bounds-prefix"));
    let worker = WorkerProcess::start(
        std::slice::from_ref(&queue),
        &[
            ("WORKER_KEY_PREFIX", prefix.as_str()),
            // 1,010 FAILURE results: let Redis forget them soon.
            ("RESULT_EXPIRES", "120"),
        ],
    );
    let (_c, channel) = amqp().await;
    let long = "x".repeat(100_000);
    for i in 0..1010 {
        let message = if i == 1009 {
            long.clone()
        } else {
            format!("failure {i}")
        };
        let mut kwargs = serde_json::Map::new();
        kwargs.insert("message".into(), Value::from(message));
        let task = OutgoingTask::new("worker.fail", vec![], kwargs);
        publish_task(&channel, &queue, &task).await;
    }
    let key = format!("{prefix}failures");
    let mut redis = redis().await;
    // Wait for every write (the long one included: it was published last, so it runs among the
    // last 16), then a moment more: the count must have stopped at the cap.
    let done = wait_until(Duration::from_secs(60), || {
        let mut redis = redis.clone();
        let key = key.clone();
        async move {
            let members: Vec<String> = redis::cmd("ZRANGE")
                .arg(&key)
                .arg(0)
                .arg(-1)
                .query_async(&mut redis)
                .await
                .unwrap_or_default();
            members.len() >= 1000 && members.iter().any(|m| m.contains("xxxx"))
        }
    })
    .await;
    assert!(done, "the failures were not all recorded");
    assert!(
        wait_until(Duration::from_secs(30), || async {
            message_count(&channel, &queue).await == 0
        })
        .await
    );
    tokio::time::sleep(Duration::from_secs(1)).await;
    let count: usize = redis::cmd("ZCARD")
        .arg(&key)
        .query_async(&mut redis)
        .await
        .unwrap();
    assert_eq!(count, 1000, "the log is capped at the newest 1,000");
    let ttl: i64 = redis::cmd("TTL")
        .arg(&key)
        .query_async(&mut redis)
        .await
        .unwrap();
    assert!(ttl > 0 && ttl <= 7 * 24 * 3600, "TTL {ttl}");
    let members: Vec<String> = redis::cmd("ZRANGE")
        .arg(&key)
        .arg(0)
        .arg(-1)
        .query_async(&mut redis)
        .await
        .unwrap();
    let longest = members.iter().map(String::len).max().unwrap();
    assert!(longest < 5 * 1024, "an entry of {longest} bytes");
    drop(worker);
    let _: () = redis::cmd("DEL")
        .arg(&key)
        .query_async(&mut redis)
        .await
        .unwrap();
    delete_queue(&channel, &queue).await;
}
