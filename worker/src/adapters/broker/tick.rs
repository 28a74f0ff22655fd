//! The scheduler's ticks, published as Celery v2 messages through the confirmed publisher.

use futures::FutureExt;
use futures::future::BoxFuture;
use serde_json::Value;

use super::publisher::Publisher;
use crate::app::scheduler::{BoxError, TickMessage, TickPublisher};
use crate::wire::OutgoingTask;

impl TickPublisher for Publisher {
    fn publish<'a>(&'a self, tick: &'a TickMessage) -> BoxFuture<'a, Result<(), BoxError>> {
        async move {
            let args = match &tick.args {
                Value::Array(a) => a.clone(),
                _ => Vec::new(),
            };
            let kwargs = match &tick.kwargs {
                Value::Object(m) => m.clone(),
                _ => serde_json::Map::new(),
            };
            let mut task = OutgoingTask::new(&tick.task, args, kwargs);
            task.id = tick.task_id.clone();
            task.expires = tick.expires;
            // What beat adds, plus which schedule and tick this run belongs to.
            task.extra_headers
                .insert("celery_beat_task".into(), Value::Bool(true));
            task.extra_headers
                .insert("schedule".into(), Value::from(tick.schedule.as_str()));
            task.extra_headers
                .insert("schedule_tick".into(), Value::from(tick.tick.to_rfc3339()));
            self.send_task(&tick.queue, &task)
                .await
                .map_err(|e| Box::new(e) as BoxError)
        }
        .boxed()
    }
}
