"""A Python Celery 5.7 app for a real Python worker in tests/remote_control.rs: remote control
on the namespace CONTROL_EXCHANGE, so that `worker inspect` can be checked against it."""
import os

from celery import Celery

app = Celery("rc", broker=os.environ["RABBITMQ_URL"], backend=os.environ["REDIS_URL"])
app.conf.update(
    accept_content=["json"],
    control_exchange=os.environ["CONTROL_EXCHANGE"],
    worker_hijack_root_logger=False,
)


@app.task(name="py.ping")
def ping():
    return "pong"
