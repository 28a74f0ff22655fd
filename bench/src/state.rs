//! What this run started and created, written down as it happens so that `bench cleanup` (called
//! from `scripts/bench`'s trap) can stop and delete it even if `bench run` itself died.

use std::fs::OpenOptions;
use std::io::Write;
use std::path::PathBuf;

use anyhow::Context;

pub struct State {
    pub dir: PathBuf,
}

impl State {
    pub fn new(dir: PathBuf) -> anyhow::Result<Self> {
        std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        Ok(Self { dir })
    }

    fn append(&self, file: &str, line: &str) -> anyhow::Result<()> {
        let path = self.dir.join(file);
        let mut f = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .with_context(|| format!("opening {}", path.display()))?;
        writeln!(f, "{line}")?;
        Ok(())
    }

    pub fn record_pid(&self, pid: u32) -> anyhow::Result<()> {
        self.append("pids", &pid.to_string())
    }

    /// A queue (and exchange of the same name, and `<queue>.dead`) to delete at the end.
    pub fn record_queue(&self, queue: &str) -> anyhow::Result<()> {
        self.append("queues", queue)
    }

    pub fn lines(&self, file: &str) -> Vec<String> {
        std::fs::read_to_string(self.dir.join(file))
            .unwrap_or_default()
            .lines()
            .map(str::to_owned)
            .filter(|l| !l.is_empty())
            .collect()
    }
}
