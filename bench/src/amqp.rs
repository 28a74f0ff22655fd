//! RabbitMQ for the bench: Celery-style queues on fresh unique names, confirmed bulk publishing
//! of real Celery v2 messages (the worker's own encoder), consumer-count polling for startup,
//! and the broker ceiling (a bare lapin consumer that only acks).

use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use futures::StreamExt;
use lapin::options::{
    BasicConsumeOptions, BasicPublishOptions, BasicQosOptions, ConfirmSelectOptions,
    ExchangeDeleteOptions, QueueDeclareOptions, QueueDeleteOptions,
};
use lapin::types::FieldTable;
use lapin::{BasicProperties, Channel, Connection, ConnectionProperties};
use serde_json::Map;
use worker::wire::{OutgoingMessage, OutgoingTask};

pub async fn connect(url: &str) -> anyhow::Result<Connection> {
    Connection::connect(
        url,
        ConnectionProperties::default().with_connection_name("staffprobot-bench".into()),
    )
    .await
    .with_context(|| {
        format!(
            "connecting to RabbitMQ at {}",
            worker::settings::redact_url(url)
        )
    })
}

/// Declare `queue` exactly as Celery (and the worker) do, so either side may declare it again.
pub async fn declare_celery_queue(channel: &Channel, queue: &str) -> anyhow::Result<()> {
    worker::topology::declare_celery_queue(channel, queue)
        .await
        .with_context(|| format!("declaring queue {queue}"))
}

/// Delete `queue`, its exchange and the worker's `<queue>.dead`; each on its own channel, since
/// a refusal closes the channel it happened on.
pub async fn delete_queue(conn: &Connection, queue: &str) {
    for q in [queue.to_owned(), format!("{queue}.dead")] {
        if let Ok(ch) = conn.create_channel().await {
            let _ = ch
                .queue_delete(q.as_str().into(), QueueDeleteOptions::default())
                .await;
            let _ = ch.close(200, "bench cleanup".into()).await;
        }
    }
    if let Ok(ch) = conn.create_channel().await {
        let _ = ch
            .exchange_delete(queue.into(), ExchangeDeleteOptions::default())
            .await;
        let _ = ch.close(200, "bench cleanup".into()).await;
    }
}

/// `n` fresh `worker.ping` tasks.
pub fn ping_tasks(n: usize) -> Vec<OutgoingTask> {
    (0..n)
        .map(|_| OutgoingTask::new("worker.ping", Vec::new(), Map::new()))
        .collect()
}

/// Publish every task to `queue` as persistent messages, with publisher confirms: returns once
/// RabbitMQ has confirmed all of them (and fails on any nack).
pub async fn publish_confirmed(
    conn: &Connection,
    queue: &str,
    tasks: &[OutgoingTask],
) -> anyhow::Result<Duration> {
    let channel = conn.create_channel().await?;
    channel
        .confirm_select(ConfirmSelectOptions::default())
        .await?;
    let started = Instant::now();
    for window in tasks.chunks(1000) {
        let mut confirms = Vec::with_capacity(window.len());
        for task in window {
            confirms.push(
                channel
                    .basic_publish(
                        "".into(),
                        queue.into(),
                        BasicPublishOptions::default(),
                        &task.body(),
                        bench_message(queue, task).amqp_properties(),
                    )
                    .await
                    .context("basic.publish")?,
            );
        }
        for c in futures::future::join_all(confirms).await {
            if c.context("publisher confirm")?.is_nack() {
                bail!("RabbitMQ nacked a published task");
            }
        }
    }
    let took = started.elapsed();
    let _ = channel.close(200, "published".into()).await;
    Ok(took)
}

/// Messages ready in `queue` and its consumer count (a passive declare).
pub async fn queue_counts(channel: &Channel, queue: &str) -> anyhow::Result<(u32, u32)> {
    let q = channel
        .queue_declare(
            queue.into(),
            QueueDeclareOptions {
                passive: true,
                ..QueueDeclareOptions::default()
            },
            FieldTable::default(),
        )
        .await
        .with_context(|| format!("passive declare of {queue}"))?;
    Ok((q.message_count(), q.consumer_count()))
}

/// Poll until `queue` has a consumer; returns when it was first seen (bounded by `timeout`).
pub async fn wait_for_consumer(
    conn: &Connection,
    queue: &str,
    timeout: Duration,
    mut alive: impl FnMut() -> anyhow::Result<()>,
) -> anyhow::Result<Instant> {
    let channel = conn.create_channel().await?;
    let deadline = Instant::now() + timeout;
    loop {
        let (_, consumers) = queue_counts(&channel, queue).await?;
        if consumers > 0 {
            let seen = Instant::now();
            let _ = channel.close(200, "seen".into()).await;
            return Ok(seen);
        }
        alive()?;
        if Instant::now() > deadline {
            bail!("no consumer on {queue} after {timeout:?}");
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// Ceiling: consume and ack `n` pre-published messages with a bare lapin consumer at
/// `prefetch` (global, as the worker sets it). Time runs from the first delivery to the last ack.
/// Consume and ack `n` messages; with `ack_every` > 1, one `basic.ack(multiple=true)` per that
/// many deliveries (and one for the rest at the end).
pub async fn ceiling_consume(
    conn: &Connection,
    queue: &str,
    n: usize,
    prefetch: u16,
    ack_every: usize,
    timeout: Duration,
) -> anyhow::Result<Duration> {
    let channel = conn.create_channel().await?;
    channel
        .basic_qos(prefetch, BasicQosOptions { global: true })
        .await?;
    let mut consumer = channel
        .basic_consume(
            queue.into(),
            "bench-ceiling".into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await?;
    let deadline = tokio::time::Instant::now() + timeout;
    let mut first = None;
    let mut acked = 0usize;
    while acked < n {
        let next = tokio::time::timeout_at(deadline, consumer.next())
            .await
            .with_context(|| format!("ceiling: only {acked}/{n} acked before the time limit"))?;
        let delivery = match next {
            Some(Ok(d)) => d,
            Some(Err(e)) => return Err(e).context("ceiling consumer"),
            None => bail!("ceiling consumer ended after {acked}/{n}"),
        };
        first.get_or_insert_with(Instant::now);
        acked += 1;
        if acked.is_multiple_of(ack_every.max(1)) || acked == n {
            let multiple = ack_every > 1;
            delivery
                .ack(lapin::options::BasicAckOptions { multiple })
                .await?;
        }
    }
    let took = first.map(|f| f.elapsed()).unwrap_or_default();
    let _ = channel.close(200, "ceiling done".into()).await;
    Ok(took)
}

/// A channel for fire-and-forget publishing at a steady rate (Python's `send_task` does not
/// wait for confirms either).
pub async fn plain_channel(conn: &Connection) -> anyhow::Result<Channel> {
    Ok(conn.create_channel().await?)
}

pub async fn publish_one(
    channel: &Channel,
    queue: &str,
    task: &OutgoingTask,
) -> anyhow::Result<()> {
    let props: BasicProperties = bench_message(queue, task).amqp_properties();
    let confirm = channel
        .basic_publish(
            "".into(),
            queue.into(),
            BasicPublishOptions::default(),
            &task.body(),
            props,
        )
        .await
        .context("basic.publish")?;
    // The channel is not in confirm mode, so there is nothing to wait for.
    drop(confirm);
    Ok(())
}

/// The message a Python producer would publish for `task`.
fn bench_message(queue: &str, task: &OutgoingTask) -> OutgoingMessage {
    OutgoingMessage::task(queue, task, "gen0@bench", chrono::Utc::now())
}
