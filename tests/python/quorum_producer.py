"""A Celery 5.7 producer on a quorum queue: declares QUEUE as Celery does with
task_default_queue_type="quorum" (and task_create_missing_queue_type="quorum"), sends
worker.echo to it and waits for the result the Rust worker stores.

Usage: quorum_producer.py QUEUE [declare-only]
Prints "arguments <json>" (the queue arguments Celery declares), "declared", then
"result <value>" unless declare-only.
"""
import json
import os
import sys

from celery import Celery

q = sys.argv[1]
declare_only = len(sys.argv) > 2 and sys.argv[2] == "declare-only"
app = Celery("quorum", broker=os.environ["RABBITMQ_URL"], backend=os.environ["REDIS_URL"])
app.conf.update(
    task_default_queue=q,
    task_default_queue_type="quorum",
    task_create_missing_queue_type="quorum",
    task_serializer="json",
    result_serializer="json",
    accept_content=["json"],
)
queue = app.amqp.queues[q]
print("arguments", json.dumps(queue.queue_arguments), flush=True)
print("exchange", queue.exchange.name, queue.exchange.type, flush=True)
with app.connection_for_write() as conn:
    # What a Celery worker consuming the queue, or a producer declaring it, sends.
    queue.bind(conn.default_channel).declare()
print("declared", flush=True)
if not declare_only:
    r = app.send_task("worker.echo", args=["quorum"])
    print("result", json.dumps(r.get(timeout=60)), flush=True)
