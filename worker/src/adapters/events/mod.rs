//! Celery's event dispatcher: task and worker events on the `celeryev` topic exchange, for
//! Flower and `celery events` (documents in [`crate::wire::events`]).
//!
//! Events must never slow or fail a task. The executor hands each one to [`Events::send`],
//! which only looks at a flag and does a `try_send` into a bounded channel; one publisher task
//! ([`run`]), on a connection of its own, stamps and publishes them. When the channel is full
//! (the broker is slow or away, the publisher reconnecting) the event is dropped and counted in
//! `worker_events_dropped_total`: events are a live view, not a record (results are that).
//!
//! Off by default. On from startup with `WORKER_SEND_EVENTS=true` (Celery's
//! `worker_send_task_events`), or when remote control's `enable_events` arrives (Flower
//! broadcasts it every few seconds); `disable_events` turns them off. While on, the publisher
//! sends `worker-online` once, `worker-heartbeat` every [`HEARTBEAT`] (Celery's default), and
//! `worker-offline` when the worker shuts down.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use lapin::options::{BasicPublishOptions, ExchangeDeclareOptions};
use lapin::types::FieldTable;
use lapin::{BasicProperties, Channel, ExchangeKind};
use tokio::sync::mpsc;
use tracing::{info, warn};

use crate::adapters::broker::BrokerError;
use crate::adapters::broker::connection::{self, OnRefusal};
use crate::app::engine::inflight::{Inflight, Phase as HeldPhase};
use crate::metrics::METRICS;
use crate::shutdown::{Phase, Shutdown};
use crate::wire::events::{Event, EventMessage, Source, WorkerEvent, WorkerState, utcoffset_hours};

/// Celery's `worker_heartbeat` default: Flower counts a worker offline after missing a few.
pub(crate) const HEARTBEAT: Duration = Duration::from_secs(2);

/// Events waiting for the publisher; beyond this they are dropped.
const CAPACITY: usize = 4096;

/// The executor's side: cheap, never waits.
pub(crate) struct Events {
    enabled: Arc<AtomicBool>,
    tx: mpsc::Sender<Event>,
}

impl Events {
    /// A handle and the receiving end for [`run`]; `enabled` is shared with remote control.
    pub(crate) fn new(enabled: Arc<AtomicBool>) -> (Arc<Self>, mpsc::Receiver<Event>) {
        let (tx, rx) = mpsc::channel(CAPACITY);
        (Arc::new(Self { enabled, tx }), rx)
    }

    /// Events that go nowhere (the executor without a dispatcher).
    pub(crate) fn off() -> Arc<Self> {
        Self::new(Arc::new(AtomicBool::new(false))).0
    }

    /// Send the event `make` builds, if events are on; built only then.
    pub(crate) fn send(&self, make: impl FnOnce() -> Event) {
        if !self.enabled.load(Ordering::Relaxed) {
            return;
        }
        if self.tx.try_send(make()).is_err() {
            METRICS.events_dropped.inc();
        }
    }
}

/// Where and as whom the publisher sends.
pub(crate) struct Dispatcher {
    pub url: String,
    pub exchange: String,
    pub source: Source,
    pub enabled: Arc<AtomicBool>,
    /// For the heartbeat's `active` and `processed`.
    pub inflight: Arc<Inflight>,
}

/// Publish events until the shutdown reaches its background phase, then send what is queued
/// and `worker-offline`. Reconnects with backoff; never ends the worker.
pub(crate) async fn run(dispatcher: Dispatcher, mut rx: mpsc::Receiver<Event>, shutdown: Shutdown) {
    let clock = AtomicU64::new(0);
    let mut failures = 0u32;
    loop {
        let conn =
            match connection::connect_with_backoff(&dispatcher.url, &shutdown, OnRefusal::Retry)
                .await
            {
                Ok(Some(conn)) => conn,
                Ok(None) | Err(_) => return,
            };
        let published = publish(&dispatcher, &conn, &mut rx, &clock, &shutdown).await;
        let _ = conn.close(200, "events stopped".into()).await;
        match published {
            Ok(()) => return,
            Err(e) => {
                failures = failures.saturating_add(1);
                warn!(error = %e, "events publisher failed; reconnecting (events are dropped meanwhile once its queue is full)");
            }
        }
        let wait = crate::backoff::backoff(failures, Duration::from_secs(30));
        tokio::select! {
            () = tokio::time::sleep(wait) => {}
            () = shutdown.reached(Phase::StopBackground) => return,
        }
    }
}

async fn publish(
    d: &Dispatcher,
    conn: &lapin::Connection,
    rx: &mut mpsc::Receiver<Event>,
    clock: &AtomicU64,
    shutdown: &Shutdown,
) -> Result<(), BrokerError> {
    let channel = conn
        .create_channel()
        .await
        .map_err(BrokerError::amqp("channel.open"))?;
    // As kombu declares `Exchange('celeryev', type='topic')`: durable. Flower declares it the
    // same way; a different declaration would be refused with 406.
    channel
        .exchange_declare(
            d.exchange.as_str().into(),
            ExchangeKind::Topic,
            ExchangeDeclareOptions {
                durable: true,
                ..ExchangeDeclareOptions::default()
            },
            FieldTable::default(),
        )
        .await
        .map_err(BrokerError::amqp("exchange.declare celeryev"))?;
    info!(exchange = %d.exchange, "events publisher connected");
    let mut online = false;
    let mut beat = tokio::time::interval(HEARTBEAT);
    beat.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            event = rx.recv() => match event {
                Some(event) => send(d, &channel, clock, event).await?,
                // The executor is gone: the engine has stopped, the worker is shutting down.
                None => break,
            },
            _ = beat.tick() => {
                let on = d.enabled.load(Ordering::Relaxed);
                if on {
                    let kind = if online { WorkerEvent::Heartbeat } else { WorkerEvent::Online };
                    send(d, &channel, clock, Event::worker(kind, &worker_state(&d.inflight))).await?;
                }
                online = on;
            }
            () = shutdown.reached(Phase::StopBackground) => {
                // The engine has stopped: what is queued is the last of it.
                while let Ok(event) = rx.try_recv() {
                    send(d, &channel, clock, event).await?;
                }
                break;
            }
        }
    }
    if online {
        let offline = Event::worker(WorkerEvent::Offline, &worker_state(&d.inflight));
        send(d, &channel, clock, offline).await?;
    }
    // Wait for the frames to leave before the connection closes.
    let _ = channel.close(200, "worker shutting down".into()).await;
    Ok(())
}

/// Stamp and publish one event (no confirm: an event lost with the connection is not worth
/// waiting for).
async fn send(
    d: &Dispatcher,
    channel: &Channel,
    clock: &AtomicU64,
    event: Event,
) -> Result<(), BrokerError> {
    let tick = clock.fetch_add(1, Ordering::Relaxed).saturating_add(1);
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64());
    let offset = utcoffset_hours(chrono::Local::now().offset().local_minus_utc());
    let message = EventMessage::new(&d.exchange, &d.source, event, tick, now, offset);
    let published = channel
        .basic_publish(
            message.exchange.as_str().into(),
            message.routing_key.as_str().into(),
            BasicPublishOptions::default(),
            &message.body,
            BasicProperties::from(message.properties),
        )
        .await;
    if published.is_err() {
        METRICS.events_dropped.inc();
    }
    published
        .map(|_| ())
        .map_err(BrokerError::amqp("basic.publish event"))
}

fn worker_state(inflight: &Inflight) -> WorkerState {
    let active = inflight
        .snapshot()
        .iter()
        .filter(|h| matches!(h.phase, HeldPhase::Active { .. }))
        .count();
    WorkerState {
        freq: HEARTBEAT.as_secs_f64(),
        active: u64::try_from(active).unwrap_or(u64::MAX),
        processed: inflight
            .totals()
            .values()
            .fold(0u64, |a, n| a.saturating_add(*n)),
        loadavg: loadavg(),
    }
}

/// Celery's `load_average()`: `/proc/loadavg`'s three figures, two decimals; zeros elsewhere.
fn loadavg() -> [f64; 3] {
    let text = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    let mut out = [0.0; 3];
    for (slot, field) in out.iter_mut().zip(text.split_whitespace()) {
        if let Ok(v) = field.parse::<f64>() {
            *slot = (v * 100.0).round() / 100.0;
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_full_queue_drops_and_counts_never_waits() {
        let on = Arc::new(AtomicBool::new(true));
        let (events, mut rx) = Events::new(Arc::clone(&on));
        let before = METRICS.events_dropped.get();
        // Nobody reads: the first CAPACITY are queued, the rest dropped at once.
        for _ in 0..CAPACITY + 10 {
            events.send(|| Event::task_started("id"));
        }
        assert!(METRICS.events_dropped.get() >= before + 10);
        assert!(rx.try_recv().is_ok());
        // Off: nothing is built or queued.
        on.store(false, Ordering::Relaxed);
        while rx.try_recv().is_ok() {}
        events.send(|| unreachable!("an event built while events are off"));
        assert!(rx.try_recv().is_err());
    }
}
