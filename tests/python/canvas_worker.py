"""A Python Celery 5.7 worker app with the diagnostic tasks the Rust worker has (same names,
same results), for tests where both consume one queue. Remote control is off, so this worker
answers no other test's `inspect()`.

Run: python -m celery -A canvas_worker worker -Q QUEUE -P solo (from tests/python).
"""
import os
import time

from celery import Celery

app = Celery("canvas_worker", broker=os.environ["RABBITMQ_URL"], backend=os.environ["REDIS_URL"])
app.conf.update(
    task_serializer="json",
    result_serializer="json",
    accept_content=["json"],
    result_extended=True,
    worker_enable_remote_control=False,
    worker_send_task_events=False,
    task_acks_late=True,
)


@app.task(name="worker.echo")
def echo(*args, **kwargs):
    return {"args": list(args), "kwargs": kwargs}


@app.task(name="worker.sleep")
def sleep(seconds):
    time.sleep(seconds)
    return {"slept": seconds}


@app.task(name="worker.fail")
def fail(message="worker.fail was asked to fail"):
    raise ValueError(message)
