//! The processes under test: started in their own process group (so a Celery parent and its
//! prefork children stop together), recorded in the state directory (so `scripts/bench`'s trap
//! can stop them if this binary dies), and measured through `/proc`.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use tokio::process::{Child, Command};

use crate::state::State;

/// A started command and its log.
pub struct Sut {
    pub label: String,
    pub child: Child,
    pub pid: u32,
    pub started: Instant,
    pub log: PathBuf,
}

/// Start `command` (a shell command line, run as `sh -c "exec …"`) in a new process group.
pub fn spawn(
    state: &State,
    label: &str,
    command: &str,
    env: &[(&str, String)],
) -> anyhow::Result<Sut> {
    let log = state.dir.join(format!("{label}.log"));
    let file =
        std::fs::File::create(&log).with_context(|| format!("creating {}", log.display()))?;
    let mut cmd = Command::new("/bin/sh");
    cmd.arg("-c")
        .arg(format!("exec {command}"))
        .stdin(Stdio::null())
        .stdout(file.try_clone()?)
        .stderr(file)
        .process_group(0)
        .kill_on_drop(true);
    for (k, v) in env {
        cmd.env(k, v);
    }
    let started = Instant::now();
    let child = cmd.spawn().with_context(|| format!("starting {command}"))?;
    let pid = child.id().context("child has no pid")?;
    state.record_pid(pid)?;
    Ok(Sut {
        label: label.to_owned(),
        child,
        pid,
        started,
        log,
    })
}

impl Sut {
    /// SIGTERM the whole group, wait up to `grace`, then SIGKILL what is left.
    pub async fn stop(mut self, grace: Duration) {
        stop_group(self.pid, &mut self.child, grace).await;
    }

    /// Fail early with the log's tail when the process died.
    pub fn check_alive(&mut self) -> anyhow::Result<()> {
        if let Ok(Some(status)) = self.child.try_wait() {
            bail!(
                "{} exited early ({status}); log tail:\n{}",
                self.label,
                log_tail(&self.log, 30)
            );
        }
        Ok(())
    }
}

async fn stop_group(pgid: u32, child: &mut Child, grace: Duration) {
    let Ok(pgid) = i32::try_from(pgid) else {
        return;
    };
    // SAFETY: kill(2) with a negative pid signals the process group we created; no memory is
    // touched.
    unsafe {
        libc::kill(-pgid, libc::SIGTERM);
    }
    let _ = tokio::time::timeout(grace, child.wait()).await;
    let deadline = Instant::now() + grace;
    while group_alive(pgid) && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    if group_alive(pgid) {
        // SAFETY: as above.
        unsafe {
            libc::kill(-pgid, libc::SIGKILL);
        }
    }
    let _ = tokio::time::timeout(Duration::from_secs(5), child.wait()).await;
}

/// Kill a recorded process group (the trap's path); returns whether it existed.
pub fn kill_group_now(pgid: i32) -> bool {
    if !group_alive(pgid) {
        return false;
    }
    // SAFETY: signals a process group this tool started (read back from its state file).
    unsafe {
        libc::kill(-pgid, libc::SIGTERM);
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    while group_alive(pgid) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    if group_alive(pgid) {
        // SAFETY: as above.
        unsafe {
            libc::kill(-pgid, libc::SIGKILL);
        }
    }
    true
}

fn group_alive(pgid: i32) -> bool {
    // SAFETY: signal 0 only checks for existence.
    unsafe { libc::kill(-pgid, 0) == 0 }
}

pub fn log_tail(path: &Path, lines: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

/// `pid` and every descendant, from the ppid field of `/proc/*/stat`.
pub fn tree(root: u32) -> Vec<u32> {
    let mut parent_of = HashMap::new();
    if let Ok(dir) = std::fs::read_dir("/proc") {
        for entry in dir.flatten() {
            let Some(pid) = entry
                .file_name()
                .to_str()
                .and_then(|s| s.parse::<u32>().ok())
            else {
                continue;
            };
            if let Some(stat) = read_stat(pid) {
                parent_of.insert(pid, stat.ppid);
            }
        }
    }
    let mut out = vec![root];
    let mut i = 0;
    while i < out.len() {
        let p = out[i];
        out.extend(
            parent_of
                .iter()
                .filter(|&(_, &pp)| pp == p)
                .map(|(&c, _)| c),
        );
        i += 1;
        if out.len() > 1000 {
            break;
        }
    }
    out
}

struct Stat {
    ppid: u32,
    /// utime + stime, clock ticks.
    cpu_ticks: u64,
}

fn read_stat(pid: u32) -> Option<Stat> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name is in parentheses and may contain spaces: split after the last ')'.
    let rest = &text[text.rfind(')')? + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // rest starts at field 3 (state); ppid is field 4, utime 14, stime 15.
    let ppid = fields.get(1)?.parse().ok()?;
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    Some(Stat {
        ppid,
        cpu_ticks: utime + stime,
    })
}

/// VmRSS and VmHWM of one process, in KiB.
pub fn memory_kib(pid: u32) -> Option<(u64, u64)> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let field = |name: &str| {
        text.lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse::<u64>().ok())
    };
    Some((field("VmRSS:")?, field("VmHWM:")?))
}

/// Summed RSS and summed high-water marks of processes, KiB.
pub fn memory_sum_kib(pids: &[u32]) -> (u64, u64) {
    pids.iter()
        .filter_map(|&p| memory_kib(p))
        .fold((0, 0), |(r, h), (r2, h2)| (r + r2, h + h2))
}

/// CPU seconds used so far by these processes.
pub fn cpu_secs(pids: &[u32]) -> f64 {
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
    let ticks: u64 = pids
        .iter()
        .filter_map(|&p| read_stat(p))
        .map(|s| s.cpu_ticks)
        .sum();
    ticks as f64 / hz
}

/// Processes whose command name is `comm` (the broker's `beam.smp`, `redis-server`).
pub fn pids_named(comm: &str) -> Vec<u32> {
    let mut out = Vec::new();
    if let Ok(dir) = std::fs::read_dir("/proc") {
        for entry in dir.flatten() {
            let Some(pid) = entry
                .file_name()
                .to_str()
                .and_then(|s| s.parse::<u32>().ok())
            else {
                continue;
            };
            if std::fs::read_to_string(format!("/proc/{pid}/comm"))
                .is_ok_and(|c| c.trim_end() == comm)
            {
                out.push(pid);
            }
        }
    }
    out
}

/// CPU seconds of the system under test, the broker and Redis, at one moment.
#[derive(Debug, Clone, Copy, Default)]
pub struct CpuSnapshot {
    pub sut: f64,
    pub broker: f64,
    pub redis: f64,
}

/// Who to read CPU time from.
#[derive(Debug, Clone, Default)]
pub struct CpuProbe {
    pub sut: Vec<u32>,
    pub broker: Vec<u32>,
    pub redis: Vec<u32>,
}

impl CpuProbe {
    pub fn new(sut_root: u32) -> Self {
        Self {
            sut: tree(sut_root),
            broker: pids_named("beam.smp"),
            redis: pids_named("redis-server"),
        }
    }

    pub fn read(&self) -> CpuSnapshot {
        CpuSnapshot {
            sut: cpu_secs(&self.sut),
            broker: cpu_secs(&self.broker),
            redis: cpu_secs(&self.redis),
        }
    }
}
