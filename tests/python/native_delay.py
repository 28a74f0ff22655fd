"""Celery 5.7 with native delayed delivery (quorum queues), for tests/delayed_delivery.rs.

Usage:
  native_delay.py send QUEUE COUNTDOWN N [EXPIRES] [--classic]
      send N `worker.ping` tasks to QUEUE with that countdown (and expiry, seconds); prints one
      JSON line {"ids": [...], "sent": <unix time before the first send>}. Configured with
      quorum queues (topic exchanges), so Celery publishes them into celery_delayed_27; with
      --classic, Celery's defaults (straight to the queue, with an eta).
  native_delay.py worker QUEUE
      run a Celery worker with quorum queues on QUEUE: it declares the native delayed delivery
      topology (broker_native_delayed_delivery_queue_type, default quorum) and binds QUEUE.
  native_delay.py routing_key COUNTDOWN ROUTING_KEY
      print kombu's calculate_routing_key(COUNTDOWN, ROUTING_KEY).
"""
import json
import os
import sys
import time

from celery import Celery
from kombu.transport.native_delayed_delivery import calculate_routing_key


def app(quorum=True):
    a = Celery("staffprobot", broker=os.environ["RABBITMQ_URL"], backend=os.environ.get("REDIS_URL"))
    a.conf.update(task_serializer="json", result_serializer="json", accept_content=["json"],
                  broker_transport_options={"confirm_publish": True})
    if quorum:
        a.conf.update(
            task_default_queue_type="quorum",
            task_default_exchange_type="topic",
            task_create_missing_queue_type="quorum",
            task_create_missing_queue_exchange_type="topic",
        )
    return a


cmd = sys.argv[1]
if cmd == "send":
    rest = [x for x in sys.argv[2:] if x != "--classic"]
    queue, countdown, n = rest[0], float(rest[1]), int(rest[2])
    expires = float(rest[3]) if len(rest) > 3 else None
    a = app(quorum="--classic" not in sys.argv)
    sent = time.time()
    ids = []
    with a.producer_or_acquire() as producer:
        for _ in range(n):
            r = a.send_task("worker.ping", queue=queue, countdown=countdown, expires=expires,
                            producer=producer)
            ids.append(r.id)
    print(json.dumps({"ids": ids, "sent": sent}), flush=True)
elif cmd == "worker":
    a = app()
    # Its only queue: otherwise Celery also binds its default `celery` queue, which nobody
    # declared, and reports its delayed delivery setup failed.
    a.conf.task_default_queue = sys.argv[2]
    a.worker_main(["worker", "-Q", sys.argv[2], "--pool=solo", "--loglevel=DEBUG",
                   "--without-heartbeat", "--without-gossip", "--without-mingle",
                   "-n", f"pyworker-{os.getpid()}@localhost"])
elif cmd == "routing_key":
    print(calculate_routing_key(int(sys.argv[2]), sys.argv[3]))
else:
    sys.exit(f"unknown command {cmd}")
