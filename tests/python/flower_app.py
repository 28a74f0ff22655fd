"""The Celery app real Flower 2.2 runs on in tests/flower.rs: the shared broker, with the test's
own event exchange (EVENT_EXCHANGE) and remote-control namespace (CONTROL_EXCHANGE), so tests
running in parallel on one RabbitMQ do not see each other's workers and tasks.

Started as `celery -A flower_app flower --address=127.0.0.1 --port=N` with this directory on
PYTHONPATH and FLOWER_UNAUTHENTICATED_API=true (Flower's API answers nothing otherwise)."""
import os

from celery import Celery

app = Celery("flower_test", broker=os.environ["RABBITMQ_URL"], backend=os.environ["REDIS_URL"])
app.conf.update(
    accept_content=["json"],
    event_exchange=os.environ["EVENT_EXCHANGE"],
    control_exchange=os.environ["CONTROL_EXCHANGE"],
)
