//! The worker binary as a child process of a test, killed when the test ends (even when it
//! fails). The worker says it is ready — consuming, with its HTTP server bound — by writing its
//! `--ready-file`; the harness waits for that file and reads the bound address from it, so no
//! test depends on the wording of a log line to know the worker is up.

use std::path::PathBuf;
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

use super::{RABBITMQ_URL, REDIS_URL, unique};

/// How long a worker may take to become ready.
const READY_TIMEOUT: Duration = Duration::from_secs(30);

/// A `worker` child process with its log file.
pub struct WorkerProcess {
    pub child: Child,
    pub log: PathBuf,
    ready_file: PathBuf,
    /// The ready file's document: `pid`, `http_addr`, `queues`, `hostname`, `scheduler`.
    pub ready: Value,
}

impl WorkerProcess {
    /// Start `worker run` on `queues` and wait until it consumes.
    pub fn start(queues: &[String], env: &[(&str, &str)]) -> Self {
        let queues = queues.join(",");
        Self::spawn(&["run", "--queues", &queues], env)
    }

    /// Start the worker binary with `args` (a subcommand that serves: `run`, `scheduler`) and
    /// wait for its ready file. The test environment points it at the local services, binds
    /// HTTP to an ephemeral loopback port and turns the scheduler off; `env` overrides these.
    pub fn spawn(args: &[&str], env: &[(&str, &str)]) -> Self {
        let name = unique("worker");
        let log = std::env::temp_dir().join(format!("{name}.log"));
        let ready_file = std::env::temp_dir().join(format!("{name}.ready.json"));
        let file = std::fs::File::create(&log).expect("create worker log");
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_worker"));
        cmd.args(args)
            .env("RABBITMQ_URL", RABBITMQ_URL)
            .env("REDIS_URL", REDIS_URL)
            .env("RUST_LOG", "info")
            .env("LOG_FORMAT", "text")
            .env("NO_COLOR", "1")
            .env("WORKER_HTTP_ADDR", "127.0.0.1:0")
            .env("WORKER_READY_FILE", &ready_file)
            .env("WORKER_DIAGNOSTIC_TASKS", "true")
            // Tests run in parallel on one broker: each worker is its own remote-control node
            // (the default `celery@<host>` would be shared, and its pidbox queue is exclusive).
            .env("WORKER_HOSTNAME", format!("{name}@test"))
            // The shipped schedules would publish StaffProBot ticks to the real queues.
            .env("WORKER_NO_SCHEDULER", "true")
            // The tests' own large stacks (.cargo/config.toml) must not hide the worker's.
            .env_remove("RUST_MIN_STACK")
            .stdout(Stdio::null())
            .stderr(file.try_clone().expect("clone log handle"));
        for (k, v) in env {
            cmd.env(k, v);
        }
        let child = cmd.spawn().expect("spawn worker binary");
        let mut w = Self {
            child,
            log,
            ready_file,
            ready: Value::Null,
        };
        w.ready = w.wait_ready();
        w
    }

    fn wait_ready(&mut self) -> Value {
        let start = Instant::now();
        loop {
            if let Ok(text) = std::fs::read_to_string(&self.ready_file)
                && let Ok(doc) = serde_json::from_str::<Value>(&text)
            {
                return doc;
            }
            if !self.is_alive() {
                panic!(
                    "worker exited before it was ready ({:?}); log:\n{}",
                    self.child.try_wait(),
                    self.logs()
                );
            }
            if start.elapsed() > READY_TIMEOUT {
                panic!(
                    "worker not ready after {READY_TIMEOUT:?}; log:\n{}",
                    self.logs()
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn logs(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    pub fn wait_for_log(&self, needle: &str, timeout: Duration) {
        self.wait_for_log_count(needle, 1, timeout);
    }

    /// The log once it holds `count` lines with `needle` (the worker writes its log from a
    /// thread of its own, a moment after the event). Panics after `timeout`.
    pub fn wait_for_log_count(&self, needle: &str, count: usize, timeout: Duration) -> String {
        let start = Instant::now();
        loop {
            let logs = self.logs();
            if logs.matches(needle).count() >= count {
                return logs;
            }
            if start.elapsed() > timeout {
                panic!("worker never logged {needle:?} {count} time(s); log:\n{logs}");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// The address the HTTP server bound, from the ready file (the harness asks for port 0).
    pub fn http_addr(&self) -> String {
        self.ready["http_addr"]
            .as_str()
            .unwrap_or_else(|| panic!("no http_addr in the ready file: {}", self.ready))
            .to_owned()
    }

    /// Still running, without needing `&mut` (for use after borrowing the logs).
    pub fn is_alive_now(&self) -> bool {
        // A dead child stays in /proc as a zombie until waited for: look at its state.
        std::fs::read_to_string(format!("/proc/{}/stat", self.child.id()))
            .ok()
            .and_then(|s| {
                s.rsplit(')')
                    .next()
                    .map(|rest| !rest.trim_start().starts_with('Z'))
            })
            .unwrap_or(false)
    }

    /// Still running?
    pub fn is_alive(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }
}

impl Drop for WorkerProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_file(&self.ready_file);
    }
}

/// Run the `worker` CLI to completion.
pub fn cli(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_worker"))
        .args(args)
        .env("RABBITMQ_URL", RABBITMQ_URL)
        .env("REDIS_URL", REDIS_URL)
        .env("LOG_FORMAT", "text")
        .output()
        .expect("run worker CLI")
}

/// What a worker process run by [`run_for`] did.
pub struct Finished {
    /// The exit code; `None` when it was still running at the deadline and was killed.
    pub code: Option<i32>,
    pub stdout: String,
    pub stderr: String,
    pub elapsed: Duration,
}

/// Run the worker binary with `args` and `env` (over a bare environment pointing at nothing
/// but what `env` names, plus text logs) until it exits or `max` passes; then kill it.
pub fn run_for(args: &[&str], env: &[(&str, &str)], max: Duration) -> Finished {
    let name = unique("run-for");
    let out_path = std::env::temp_dir().join(format!("{name}.out"));
    let err_path = std::env::temp_dir().join(format!("{name}.err"));
    let out = std::fs::File::create(&out_path).expect("create stdout file");
    let err = std::fs::File::create(&err_path).expect("create stderr file");
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_worker"));
    cmd.args(args)
        .env("LOG_FORMAT", "text")
        .env("NO_COLOR", "1")
        .env("WORKER_HTTP_ADDR", "127.0.0.1:0")
        .env("WORKER_NO_SCHEDULER", "true")
        .env_remove("RUST_LOG")
        .stdout(out)
        .stderr(err);
    for (k, v) in env {
        cmd.env(k, v);
    }
    let start = Instant::now();
    let mut child = cmd.spawn().expect("spawn worker binary");
    let code = loop {
        if let Ok(Some(status)) = child.try_wait() {
            break status.code();
        }
        if start.elapsed() >= max {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let elapsed = start.elapsed();
    let read = |p: &PathBuf| std::fs::read_to_string(p).unwrap_or_default();
    let finished = Finished {
        code,
        stdout: read(&out_path),
        stderr: read(&err_path),
        elapsed,
    };
    let _ = std::fs::remove_file(&out_path);
    let _ = std::fs::remove_file(&err_path);
    finished
}
