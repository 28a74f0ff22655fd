//! The loop that drives one schedule: sleep until a tick is due, decide, claim, publish.
//!
//! Every replica runs this loop for every enabled schedule; the per-tick claim in Redis (see
//! `store`) picks the one replica that publishes. The loop keeps no leader and no lock between
//! ticks, so a replica that dies costs nothing: the others simply keep claiming.
//!
//! A tick this replica is responsible for (the "target") is retried until it is published by
//! someone, or a newer tick becomes due and supersedes it — never a burst of old ticks.
//! The loop re-reads the wall clock at least every [`MAX_SLEEP`], so a suspended process or a
//! clock jump is noticed as a stall and handled by the catch-up policy.

use std::sync::Arc;
use std::time::Duration;

use crate::adapters::redis_conn::RedisConn;
use chrono::{DateTime, TimeDelta, Utc};
use tokio_util::sync::CancellationToken;
use tracing::{debug, error, info, warn};

use super::decide::{Decision, SkipReason, decide};
use super::schedule::Schedule;
use super::store::{self, Claim, Published};
use super::{TickMessage, TickPublisher};
use crate::metrics::METRICS;

/// A claim is held this long while its claimer publishes; if the claimer dies, another replica
/// can take the tick after it runs out.
const CLAIM_LEASE: TimeDelta = TimeDelta::seconds(30);
/// Publishing must finish well inside the lease, or the claim could pass to another replica
/// while the first publish is still in flight.
const PUBLISH_TIMEOUT: Duration = Duration::from_secs(10);
/// How soon to look again at a tick another replica is publishing.
const RECHECK: TimeDelta = TimeDelta::seconds(1);
/// Longest sleep between looks at the wall clock.
const MAX_SLEEP: TimeDelta = TimeDelta::seconds(30);
const MAX_BACKOFF: TimeDelta = TimeDelta::seconds(30);

/// What every schedule loop of one scheduler shares.
pub(crate) struct Shared {
    pub redis: RedisConn,
    pub publisher: Arc<dyn TickPublisher>,
    pub key_prefix: String,
    /// Identifies this scheduler instance in claim tokens, for debugging stuck claims.
    pub instance: String,
}

/// Why a schedule loop is starting.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Start {
    /// The scheduler is starting: a tick missed while it was down may be caught up.
    Boot,
    /// Added or changed by a hot reload: only ticks from now on count.
    Reload,
}

enum Attempt {
    Published,
    AlreadyPublished,
    HeldByOther,
    Failed,
}

/// Runs one schedule until `stop` is cancelled.
pub(crate) async fn run_schedule(
    schedule: Arc<Schedule>,
    shared: Arc<Shared>,
    start: Start,
    stop: CancellationToken,
) {
    let mut redis = shared.redis.clone();
    let name = schedule.name.as_str();

    // The newest tick published by anyone, as far as this replica knows.
    let mut failures: u32 = 0;
    let mut last_published = loop {
        match store::read_last_run(&mut redis, &shared.key_prefix, name).await {
            Ok(last) => break last.map(|run| run.tick),
            Err(err) => {
                failures += 1;
                warn!(schedule = name, error = %err, "cannot read schedule state from Redis; retrying");
                if !pause(&stop, backoff(failures)).await {
                    return;
                }
            }
        }
    };
    failures = 0;
    // The newest tick that needs no more work (published, or deliberately not published).
    let mut settled = last_published;
    let mut target: Option<DateTime<Utc>> = None;
    let mut allow_catch_up = start == Start::Boot;
    // A tick that fell due while this loop was running is a known miss (a stall), history or not.
    let started_at = Utc::now();
    debug!(schedule = name, last = ?last_published, "schedule started");

    while !stop.is_cancelled() {
        let now = Utc::now();
        if let Some(due) = schedule.latest_at_or_before(now) {
            let fresh = settled.is_none_or(|s| due > s) && target.is_none_or(|t| due > t);
            if fresh {
                if let Some(old) = target.take() {
                    if failures > 0 {
                        warn!(schedule = name, tick = %old, "tick superseded by a newer one before it could be published");
                    } else {
                        debug!(schedule = name, tick = %old, "tick left to the replica that claimed it");
                    }
                    failures = 0;
                }
                let has_history = last_published.is_some() || due > started_at;
                match decide(&schedule, due, now, has_history, allow_catch_up) {
                    Decision::OnTime => target = Some(due),
                    Decision::CatchUp => {
                        info!(schedule = name, tick = %due, late_by = %(now - due), "catching up a missed tick");
                        target = Some(due);
                    }
                    Decision::Skip(reason) => {
                        match reason {
                            SkipReason::Policy | SkipReason::OutsideWindow => {
                                info!(schedule = name, tick = %due, %reason, "missed tick not published")
                            }
                            SkipReason::NoHistory | SkipReason::JustReloaded => {
                                debug!(schedule = name, tick = %due, %reason, "past tick not published")
                            }
                        }
                        settled = Some(due);
                    }
                }
            }
        }
        allow_catch_up = true;

        let mut retry_at = None;
        if let Some(tick) = target {
            match attempt(&schedule, &shared, &mut redis, tick).await {
                Attempt::Published | Attempt::AlreadyPublished => {
                    METRICS
                        .schedule_last_tick
                        .with_label_values(&[name])
                        .set(tick.timestamp() as f64);
                    last_published = last_published.max(Some(tick));
                    settled = settled.max(Some(tick));
                    target = None;
                    failures = 0;
                }
                Attempt::HeldByOther => retry_at = Some(Utc::now() + RECHECK),
                Attempt::Failed => {
                    failures += 1;
                    retry_at = Some(Utc::now() + backoff(failures));
                }
            }
        }

        let now = Utc::now();
        let next = schedule.next_after(now);
        if let Some(next) = next {
            METRICS
                .schedule_next_tick
                .with_label_values(&[name])
                .set(next.timestamp() as f64);
        }
        let mut wake = next.unwrap_or(now + MAX_SLEEP).min(now + MAX_SLEEP);
        if let Some(retry_at) = retry_at {
            wake = wake.min(retry_at);
        }
        // Timers may fire a hair early relative to the wall clock; a millisecond of slack
        // avoids waking just before the tick and sleeping again.
        if !pause(&stop, wake - now + TimeDelta::milliseconds(1)).await {
            break;
        }
    }
    debug!(schedule = name, "schedule stopped");
}

/// Claims `tick` and publishes it if the claim is ours.
async fn attempt(
    schedule: &Schedule,
    shared: &Shared,
    redis: &mut RedisConn,
    tick: DateTime<Utc>,
) -> Attempt {
    let name = schedule.name.as_str();
    let claim_key = store::claim_key(&shared.key_prefix, name, tick);
    let token = format!("claimed:{}:{}", shared.instance, uuid::Uuid::new_v4());
    match store::claim(redis, &claim_key, &token, CLAIM_LEASE).await {
        Err(err) => {
            warn!(schedule = name, tick = %tick, error = %err, "cannot claim tick in Redis; will retry");
            return Attempt::Failed;
        }
        Ok(Claim::AlreadyPublished) => return Attempt::AlreadyPublished,
        Ok(Claim::HeldByOther) => return Attempt::HeldByOther,
        Ok(Claim::Won) => {}
    }

    let message = TickMessage {
        task_id: uuid::Uuid::new_v4().to_string(),
        task: schedule.task.clone(),
        queue: schedule.queue.clone(),
        args: schedule.args.clone(),
        kwargs: schedule.kwargs.clone(),
        expires: schedule.expires.map(|expires| tick + expires),
        schedule: schedule.name.clone(),
        tick,
    };
    let outcome =
        match tokio::time::timeout(PUBLISH_TIMEOUT, shared.publisher.publish(&message)).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(err)) => Err(err.to_string()),
            Err(_) => Err(format!("timed out after {PUBLISH_TIMEOUT:?}")),
        };
    if let Err(problem) = outcome {
        warn!(schedule = name, tick = %tick, error = %problem, "publishing tick failed; releasing the claim so it is retried");
        if let Err(err) = store::release(redis, &claim_key, &token).await {
            // The lease still runs out, after which the tick can be claimed again.
            warn!(schedule = name, tick = %tick, error = %err, "cannot release claim; it will expire");
        }
        return Attempt::Failed;
    }

    let published_at = Utc::now();
    let done = Published {
        claim_key: &claim_key,
        state_key: &store::state_key(&shared.key_prefix, name),
        tick,
        task_id: &message.task_id,
        published_at,
        task: &schedule.task,
        queue: &schedule.queue,
        ttl: store::published_ttl(schedule.catch_up_window),
    };
    // The message is out: recording it matters, or the lease would run out and the tick could
    // be published twice. Retry for a while, well inside the lease.
    let mut tries = 0;
    loop {
        tries += 1;
        match store::finish(redis, &done).await {
            Ok(()) => break,
            Err(err) if tries < 10 => {
                warn!(schedule = name, tick = %tick, error = %err, "cannot record published tick; retrying");
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
            Err(err) => {
                error!(schedule = name, tick = %tick, task_id = %message.task_id, error = %err,
                    "published tick could not be recorded; another replica may publish it again");
                break;
            }
        }
    }
    info!(
        schedule = name,
        task = %schedule.task,
        queue = %schedule.queue,
        tick = %tick,
        task_id = %message.task_id,
        "published scheduled task"
    );
    Attempt::Published
}

fn backoff(failures: u32) -> TimeDelta {
    let exponent = failures.saturating_sub(1).min(5);
    (TimeDelta::seconds(1) * 2_i32.pow(exponent)).min(MAX_BACKOFF)
}

/// Sleeps for `duration` unless stopped first; returns false when stopped.
async fn pause(stop: &CancellationToken, duration: TimeDelta) -> bool {
    // A negative duration (a wake time already passed) means "don't sleep".
    let duration = duration.to_std().unwrap_or(Duration::ZERO);
    tokio::select! {
        _ = stop.cancelled() => false,
        _ = tokio::time::sleep(duration) => true,
    }
}
