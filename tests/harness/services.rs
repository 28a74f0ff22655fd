//! Private service instances for fault tests (scripts/services/): a RabbitMQ node or a Redis
//! server of the test's own, started and stopped by their state dir (never the shared ones),
//! stopped when the test ends, even when it fails.

use std::collections::HashMap;
use std::process::Command;

use super::root;

fn script(name: &str) -> std::path::PathBuf {
    root().join("scripts/services").join(name)
}

/// Run a service script and parse its `KEY=value` lines.
fn run(name: &str, args: &[&str]) -> HashMap<String, String> {
    let out = Command::new(script(name))
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("run {name}: {e}"));
    assert!(
        out.status.success(),
        "{name} {args:?} failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect()
}

/// One private RabbitMQ node (`scripts/services/rabbitmq-node`).
pub struct RabbitNode {
    pub dir: String,
    pub url: String,
}

impl RabbitNode {
    pub fn start() -> Self {
        let kv = run("rabbitmq-node", &["start"]);
        Self {
            dir: kv["DIR"].clone(),
            url: kv["URL"].clone(),
        }
    }

    /// Stop the node gracefully and boot it again (same name, port and data).
    pub fn restart(&self) {
        run("rabbitmq-node", &["halt", &self.dir]);
        run("rabbitmq-node", &["resume", &self.dir]);
    }
}

impl Drop for RabbitNode {
    fn drop(&mut self) {
        let _ = Command::new(script("rabbitmq-node"))
            .args(["stop", &self.dir])
            .output();
    }
}

/// One private Redis server (`scripts/services/redis-instance`).
pub struct RedisServer {
    pub dir: String,
    pub url: String,
}

impl RedisServer {
    /// Started with extra `redis-server` arguments (`--maxmemory 4mb`, ...).
    pub fn start(args: &[&str]) -> Self {
        let mut all = vec!["start"];
        all.extend_from_slice(args);
        let kv = run("redis-instance", &all);
        Self {
            dir: kv["DIR"].clone(),
            url: kv["URL"].clone(),
        }
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        let _ = Command::new(script("redis-instance"))
            .args(["stop", &self.dir])
            .output();
    }
}
