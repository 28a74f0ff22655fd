//! Private service instances for fault tests — a Redis with its own settings (or TLS), a
//! RabbitMQ node (optionally with a TLS listener), a Redis Sentinel set, a throwaway TLS CA —
//! started by `scripts/services/` on loopback and stopped by PID when dropped, even when the
//! test fails. The shared services are never touched.

use std::collections::HashMap;
use std::process::Command;

use super::root;

/// Runs `scripts/services/<script> <args>` and returns its `KEY=value` lines.
fn run_script(script: &str, args: &[&str], env: &[(&str, &str)]) -> HashMap<String, String> {
    let path = root().join("scripts/services").join(script);
    let out = Command::new(&path)
        .args(args)
        .envs(env.iter().copied())
        .output()
        .unwrap_or_else(|e| panic!("running {}: {e}", path.display()));
    assert!(
        out.status.success(),
        "{script} {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect()
}

/// A redis-server of the test's own (`scripts/services/redis-instance`).
pub struct RedisServer {
    pub url: String,
    pub port: String,
    /// `rediss://127.0.0.1:<port>/0` when started with `TLS_CERT`.
    pub tls_url: Option<String>,
    args: Vec<String>,
    env: Vec<(String, String)>,
    dir: Option<String>,
}

impl RedisServer {
    /// Start one with these extra server arguments (e.g. `--maxmemory 2mb`).
    pub fn start(args: &[&str]) -> Self {
        Self::start_with_env(args, &[])
    }

    /// Start one with `redis-instance`'s environment too (`TLS_CERT`, `TLS_KEY`, `TLS_CA`, ...).
    pub fn start_with_env(args: &[&str], env: &[(&str, &str)]) -> Self {
        let mut redis = Self {
            url: String::new(),
            port: String::new(),
            tls_url: None,
            args: args.iter().map(|a| (*a).to_owned()).collect(),
            env: env
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect(),
            dir: None,
        };
        redis.start_again();
        redis
    }

    /// Stop the server (SIGTERM by PID): the fault.
    pub fn stop(&mut self) {
        if let Some(dir) = self.dir.take() {
            run_script("redis-instance", &["stop", &dir], &[]);
        }
    }

    /// Start it again on the same port with the same settings (and no data: it keeps none).
    pub fn start_again(&mut self) {
        self.stop();
        let args: Vec<&str> = self.args.iter().map(String::as_str).collect();
        let mut start = vec!["start"];
        start.extend(args);
        let mut env: Vec<(&str, &str)> = self
            .env
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        if !self.port.is_empty() {
            env.push(("PORT", self.port.as_str()));
        }
        let kv = run_script("redis-instance", &start, &env);
        self.url = kv.get("URL").cloned().unwrap_or_default();
        self.port = kv["PORT"].clone();
        self.tls_url = kv.get("TLS_URL").cloned();
        self.dir = Some(kv["DIR"].clone());
    }

    /// A connection to it.
    pub async fn connection(&self) -> redis::aio::MultiplexedConnection {
        redis::Client::open(self.url.as_str())
            .expect("private Redis URL")
            .get_multiplexed_async_connection()
            .await
            .expect("connect to the private Redis")
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A RabbitMQ node of the test's own (`scripts/services/rabbitmq-node`).
pub struct RabbitNode {
    pub url: String,
    /// `amqps://guest:guest@127.0.0.1:<port>/%2f` when started with `TLS_CERT`.
    pub tls_url: Option<String>,
    dir: Option<String>,
}

impl RabbitNode {
    pub fn start() -> Self {
        Self::start_with_env(&[])
    }

    /// Start one with `rabbitmq-node`'s environment (`TLS_CERT`, `TLS_KEY`, `TLS_CA`, ...).
    pub fn start_with_env(env: &[(&str, &str)]) -> Self {
        let kv = run_script("rabbitmq-node", &["start"], env);
        Self {
            url: kv["URL"].clone(),
            tls_url: kv.get("TLS_URL").cloned(),
            dir: Some(kv["DIR"].clone()),
        }
    }

    /// `rabbitmqctl -n <node> args...`: its stdout.
    pub fn ctl(&self, args: &[&str]) -> String {
        let dir = self.dir.as_deref().expect("node running");
        let path = root().join("scripts/services/rabbitmq-node");
        let out = Command::new(&path)
            .args(["ctl", dir])
            .args(args)
            .output()
            .unwrap_or_else(|e| panic!("running {}: {e}", path.display()));
        assert!(
            out.status.success(),
            "rabbitmqctl {args:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Stop the node and boot it again with the same name, ports and data (durable queues and
    /// persistent messages survive).
    pub fn restart(&self) {
        let dir = self.dir.as_deref().expect("node running");
        run_script("rabbitmq-node", &["halt", dir], &[]);
        run_script("rabbitmq-node", &["resume", dir], &[]);
    }
}

impl Drop for RabbitNode {
    fn drop(&mut self) {
        if let Some(dir) = self.dir.take() {
            run_script("rabbitmq-node", &["stop", dir.as_str()], &[]);
        }
    }
}

/// A three-node RabbitMQ cluster of the test's own (`scripts/services/rabbitmq-cluster`),
/// stopped when dropped, even when the test fails.
pub struct RabbitCluster {
    /// Every member's URL, `;`-separated, as RABBITMQ_URL takes them.
    pub urls: String,
    /// Member `i + 1`'s URL and node name.
    pub node_urls: Vec<String>,
    pub node_names: Vec<String>,
    dir: Option<String>,
}

impl RabbitCluster {
    pub fn start() -> Self {
        let kv = run_script("rabbitmq-cluster", &["start"], &[]);
        let size: usize = kv["CLUSTER_SIZE"].parse().expect("CLUSTER_SIZE");
        Self {
            urls: kv["URLS"].clone(),
            node_urls: (1..=size)
                .map(|i| kv[&format!("NODE{i}_URL")].clone())
                .collect(),
            node_names: (1..=size)
                .map(|i| kv[&format!("NODE{i}_NAME")].clone())
                .collect(),
            dir: Some(kv["DIR"].clone()),
        }
    }

    fn dir(&self) -> &str {
        self.dir.as_deref().expect("cluster running")
    }

    /// Stop member `n` (1-based), keeping its data: the fault.
    pub fn stop_node(&self, n: usize) {
        run_script(
            "rabbitmq-cluster",
            &["stop-node", &n.to_string(), self.dir()],
            &[],
        );
    }

    /// Boot member `n` again; it rejoins the cluster.
    pub fn start_node(&self, n: usize) {
        run_script(
            "rabbitmq-cluster",
            &["start-node", &n.to_string(), self.dir()],
            &[],
        );
    }

    /// `rabbitmqctl -n <member n> args...`: its stdout.
    pub fn ctl(&self, n: usize, args: &[&str]) -> String {
        let path = root().join("scripts/services/rabbitmq-cluster");
        let out = Command::new(&path)
            .args(["ctl", &n.to_string(), self.dir()])
            .args(args)
            .output()
            .unwrap_or_else(|e| panic!("running {}: {e}", path.display()));
        assert!(
            out.status.success(),
            "rabbitmqctl {args:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// The member (1-based) that holds the connections whose client properties contain
    /// `needle`, if one does.
    pub fn node_with_connection(&self, needle: &str) -> Option<usize> {
        // Any running member lists the whole cluster's connections (without the panics of the
        // members that are down).
        let live = (1..=self.node_urls.len()).find_map(|n| {
            std::panic::catch_unwind(|| {
                self.ctl(n, &["list_connections", "port", "client_properties"])
            })
            .ok()
        })?;
        // The server port a connection came in on names its member.
        let line = live.lines().find(|l| l.contains(needle))?;
        let port = line.split_whitespace().next()?;
        let at = format!(":{port}/");
        self.node_urls
            .iter()
            .position(|url| url.contains(&at))
            .map(|i| i + 1)
    }
}

impl Drop for RabbitCluster {
    fn drop(&mut self) {
        if let Some(dir) = self.dir.take() {
            // No panic in Drop (a failing test is already unwinding): report and go on.
            let path = root().join("scripts/services/rabbitmq-cluster");
            match Command::new(&path).args(["stop", dir.as_str()]).output() {
                Ok(out) if out.status.success() => {}
                Ok(out) => eprintln!(
                    "rabbitmq-cluster stop {dir} failed: {}",
                    String::from_utf8_lossy(&out.stderr)
                ),
                Err(e) => eprintln!("running {}: {e}", path.display()),
            }
        }
    }
}

/// Redis master, replica and three sentinels (`scripts/services/redis-sentinel-set`).
pub struct SentinelSet {
    /// `sentinel://127.0.0.1:a;sentinel://127.0.0.1:b;sentinel://127.0.0.1:c`.
    pub sentinel_url: String,
    pub master_name: String,
    pub master_port: String,
    dir: Option<String>,
}

impl SentinelSet {
    pub fn start() -> Self {
        let kv = run_script("redis-sentinel-set", &["start"], &[]);
        Self {
            sentinel_url: kv["SENTINEL_URL"].clone(),
            master_name: kv["MASTER_NAME"].clone(),
            master_port: kv["MASTER_PORT"].clone(),
            dir: Some(kv["DIR"].clone()),
        }
    }

    /// `SENTINEL FAILOVER`, waiting until every sentinel agrees; returns the new master's port.
    pub fn failover(&mut self) -> String {
        let dir = self.dir.as_deref().expect("set running");
        let kv = run_script("redis-sentinel-set", &["failover", dir], &[]);
        self.master_port = kv["NEW_MASTER_PORT"].clone();
        self.master_port.clone()
    }
}

impl Drop for SentinelSet {
    fn drop(&mut self) {
        if let Some(dir) = self.dir.take() {
            run_script("redis-sentinel-set", &["stop", dir.as_str()], &[]);
        }
    }
}

/// A throwaway CA with server and client certificates, and an unrelated "wrong" CA
/// (`scripts/services/tls-ca`); the files are removed when dropped.
pub struct TlsCa {
    pub ca: String,
    pub cert: String,
    pub key: String,
    pub client_cert: String,
    pub client_key: String,
    pub wrong_ca: String,
    dir: Option<String>,
}

impl TlsCa {
    pub fn make() -> Self {
        let kv = run_script("tls-ca", &["make"], &[]);
        Self {
            ca: kv["CA"].clone(),
            cert: kv["CERT"].clone(),
            key: kv["KEY"].clone(),
            client_cert: kv["CLIENT_CERT"].clone(),
            client_key: kv["CLIENT_KEY"].clone(),
            wrong_ca: kv["WRONG_CA"].clone(),
            dir: Some(kv["DIR"].clone()),
        }
    }
}

impl Drop for TlsCa {
    fn drop(&mut self) {
        if let Some(dir) = self.dir.take() {
            run_script("tls-ca", &["remove", dir.as_str()], &[]);
        }
    }
}
