"""The Celery side of the benchmark: the same no-op task the Rust worker registers.

Named `worker.ping` so the very same pre-published Celery v2 messages run on either system.
Broker and result backend are the bench's (loopback) RabbitMQ and Redis; everything else is
Celery 5.7's default, so the production/tuned differences are only the command-line flags
that scripts/bench passes (pool, concurrency, prefetch multiplier).
"""

import os

from celery import Celery
from celery.schedules import crontab

app = Celery(
    "bench_app",
    broker=os.environ.get("BENCH_BROKER_URL", "amqp://guest:guest@127.0.0.1:5672//"),
    backend=os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6379/0"),
)
app.conf.update(
    task_serializer="json",
    result_serializer="json",
    accept_content=["json"],
    result_expires=3600,
    broker_connection_retry_on_startup=True,
    # One entry, never due while the bench runs, so beat idles as it would between ticks
    # (and publishes nothing into the measured queues).
    beat_schedule={
        "bench-never-during-run": {
            "task": "worker.ping",
            "schedule": crontab(minute=0, hour=3, day_of_month=1, month_of_year=1),
            "options": {"queue": "bench-beat-unused"},
        }
    },
)


@app.task(name="worker.ping")
def ping():
    return "pong"
