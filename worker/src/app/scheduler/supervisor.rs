//! Runs one loop per enabled schedule and keeps the set in step with `schedules.toml`.
//!
//! Hot reload watches the file by polling its contents (every second by default) rather than
//! with inotify (`notify`): editors save by rename, Kubernetes ConfigMaps swap a symlink, and
//! network or container filesystems may deliver no events at all — re-reading a small file once
//! a second catches every one of those cases with no platform-specific code. SIGHUP forces a
//! reload at once.
//!
//! A reload is all or nothing: an invalid file is refused with a message naming the file, the
//! line and the problem, and the schedules already running keep running. A valid file stops
//! removed schedules, starts added ones, restarts changed ones, and leaves unchanged ones alone
//! (their loops, and any tick they are in the middle of, are untouched).

use std::collections::HashMap;
use std::sync::Arc;

use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tracing::{error, info, warn};

use super::file::{Warning, parse_schedules};
use super::runner::{Shared, Start, run_schedule};
use super::schedule::Schedule;
use super::{ScheduleFileError, SchedulerError, SchedulerSettings};
use crate::metrics::METRICS;

struct Running {
    schedule: Arc<Schedule>,
    stop: CancellationToken,
    handle: JoinHandle<()>,
}

/// The supervisor's view of the file and the loops it started.
struct Supervisor {
    settings: SchedulerSettings,
    shared: Arc<Shared>,
    running: HashMap<String, Running>,
    /// Contents last seen on disk, valid or not, so an unchanged file is not re-parsed and an
    /// invalid one is reported once rather than every second.
    last_text: Option<String>,
    /// Last read error reported, for the same reason.
    last_read_error: Option<String>,
}

pub(crate) async fn run(
    settings: SchedulerSettings,
    shared: Shared,
    shutdown: CancellationToken,
) -> Result<(), SchedulerError> {
    let text = std::fs::read_to_string(&settings.path).map_err(|source| {
        SchedulerError::File(ScheduleFileError::Read {
            path: settings.path.clone(),
            source,
        })
    })?;
    let (schedules, warnings) = parse_schedules(
        &text,
        &settings.path,
        settings.default_timezone,
        &settings.known_tasks,
    )?;
    log_warnings(&warnings);
    let mut supervisor = Supervisor {
        settings,
        shared: Arc::new(shared),
        running: HashMap::new(),
        last_text: Some(text),
        last_read_error: None,
    };
    supervisor.apply(schedules, Start::Boot).await;

    let mut hangup = hangup_signal();
    let mut poll = supervisor.settings.poll_interval.map(|every| {
        let mut interval = tokio::time::interval(every);
        interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        interval
    });
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => break,
            _ = next_poll(&mut poll) => {
                supervisor.reload(false).await;
                supervisor.restart_crashed();
            }
            _ = next_hangup(&mut hangup) => {
                info!(path = %supervisor.settings.path.display(), "SIGHUP: reloading schedules");
                supervisor.reload(true).await;
            }
        }
    }

    for running in supervisor.running.values() {
        running.stop.cancel();
    }
    for (_, running) in supervisor.running.drain() {
        // A loop finishes the publish it is in the middle of, then returns.
        let _ = running.handle.await;
    }
    info!("scheduler stopped");
    Ok(())
}

impl Supervisor {
    async fn reload(&mut self, forced: bool) {
        let path = &self.settings.path;
        let text = match std::fs::read_to_string(path) {
            Ok(text) => {
                self.last_read_error = None;
                text
            }
            Err(err) => {
                // Editors replace files by rename: a brief absence is normal, keep going.
                let message = err.to_string();
                if self.last_read_error.as_deref() != Some(message.as_str()) {
                    warn!(path = %path.display(), error = %message, "cannot read schedules file; keeping the current schedules");
                    self.last_read_error = Some(message);
                }
                return;
            }
        };
        if !forced && self.last_text.as_deref() == Some(text.as_str()) {
            return;
        }
        self.last_text = Some(text.clone());
        match parse_schedules(
            &text,
            path,
            self.settings.default_timezone,
            &self.settings.known_tasks,
        ) {
            Ok((schedules, warnings)) => {
                log_warnings(&warnings);
                self.apply(schedules, Start::Reload).await;
            }
            Err(err) => {
                METRICS.schedule_reloads_rejected.inc();
                error!("schedules file rejected, the previous schedules keep running:\n{err}");
            }
        }
    }

    /// Makes the running loops match `schedules`.
    async fn apply(&mut self, schedules: Vec<Schedule>, start: Start) {
        let wanted: HashMap<String, Schedule> = schedules
            .into_iter()
            .filter(|schedule| schedule.enabled)
            .map(|schedule| (schedule.name.clone(), schedule))
            .collect();

        let mut stopped = Vec::new();
        let mut changed = Vec::new();
        let names: Vec<String> = self.running.keys().cloned().collect();
        for name in names {
            let keep = wanted
                .get(&name)
                .zip(self.running.get(&name))
                .is_some_and(|(new, old)| new.same_definition(&old.schedule));
            if keep {
                continue;
            }
            if let Some(old) = self.running.remove(&name) {
                old.stop.cancel();
                // Wait, so the old and new loops of a changed schedule never overlap.
                let _ = old.handle.await;
                if wanted.contains_key(&name) {
                    changed.push(name);
                } else {
                    stopped.push(name);
                }
            }
        }
        let mut started = Vec::new();
        for (name, schedule) in wanted {
            if self.running.contains_key(&name) {
                continue;
            }
            if !changed.contains(&name) {
                started.push(name.clone());
            }
            self.spawn(Arc::new(schedule), start);
        }
        started.sort();
        info!(
            path = %self.settings.path.display(),
            running = self.running.len(),
            ?started,
            ?changed,
            ?stopped,
            "schedules loaded"
        );
    }

    fn spawn(&mut self, schedule: Arc<Schedule>, start: Start) {
        let stop = CancellationToken::new();
        let handle = tokio::spawn(run_schedule(
            Arc::clone(&schedule),
            Arc::clone(&self.shared),
            start,
            stop.clone(),
        ));
        self.running.insert(
            schedule.name.clone(),
            Running {
                schedule,
                stop,
                handle,
            },
        );
    }

    /// A loop only ends when told to; one that ended otherwise panicked. Restart it rather than
    /// let a schedule silently stop.
    fn restart_crashed(&mut self) {
        let crashed: Vec<Arc<Schedule>> = self
            .running
            .values()
            .filter(|running| running.handle.is_finished() && !running.stop.is_cancelled())
            .map(|running| Arc::clone(&running.schedule))
            .collect();
        for schedule in crashed {
            error!(schedule = %schedule.name, "schedule loop ended unexpectedly; restarting it");
            self.spawn(schedule, Start::Boot);
        }
    }
}

fn log_warnings(warnings: &[Warning]) {
    for warning in warnings {
        warn!("{warning}");
    }
}

async fn next_poll(poll: &mut Option<tokio::time::Interval>) {
    match poll {
        Some(interval) => {
            interval.tick().await;
        }
        None => std::future::pending().await,
    }
}

#[cfg(unix)]
type Hangup = Option<tokio::signal::unix::Signal>;
#[cfg(not(unix))]
type Hangup = Option<()>;

#[cfg(unix)]
fn hangup_signal() -> Hangup {
    use tokio::signal::unix::{SignalKind, signal};
    match signal(SignalKind::hangup()) {
        Ok(hangup) => Some(hangup),
        Err(err) => {
            warn!(error = %err, "cannot listen for SIGHUP; schedules reload on file changes only");
            None
        }
    }
}

#[cfg(not(unix))]
fn hangup_signal() -> Hangup {
    None
}

async fn next_hangup(hangup: &mut Hangup) {
    #[cfg(unix)]
    if let Some(signal) = hangup {
        if signal.recv().await.is_some() {
            return;
        }
        // The signal stream ended: stop listening instead of spinning.
        *hangup = None;
    }
    std::future::pending::<()>().await
}
