"""Python Celery 5.7 as StaffProBot uses it, talking to the Rust worker.

Usage: celery_compat.py QUEUE [QUEUE ...]
Each check asserts; the script exits non-zero on the first failure and prints "ok <check>" lines.
"""
import datetime
import decimal
import os
import sys
import time

from celery import Celery
from celery.exceptions import NotRegistered

queues = sys.argv[1:]
app = Celery("staffprobot", broker=os.environ["RABBITMQ_URL"], backend=os.environ["REDIS_URL"])
app.conf.update(
    task_serializer="json",
    result_serializer="json",
    accept_content=["json"],
    result_expires=3600,
    timezone="Europe/Moscow",
    enable_utc=True,
)


def ok(name):
    print("ok", name, flush=True)


# A task sent to each of the queues returns the job's value.
for q in queues:
    r = app.send_task("worker.echo", args=[1, "a"], kwargs={"queue": q}, queue=q)
    assert r.get(timeout=30) == {"args": [1, "a"], "kwargs": {"queue": q}}, r.result
    ok(f"echo via {q}")

q = queues[0]
assert app.send_task("worker.ping", queue=q).get(timeout=30) == "pong"
ok("ping")

# kombu's tagged types arrive untagged.
r = app.send_task("worker.echo", args=[decimal.Decimal("1.10"), datetime.datetime(2026, 1, 2, 3, 4, 5, tzinfo=datetime.timezone.utc)], queue=q)
assert r.get(timeout=30)["args"] == ["1.10", "2026-01-02T03:04:05+00:00"], r.result
ok("kombu types")

# A failing task re-raises as the right exception type.
r = app.send_task("worker.fail", args=["bad input"], queue=q)
try:
    r.get(timeout=30)
    raise AssertionError("worker.fail did not raise")
except ValueError as e:
    assert str(e) == "bad input", repr(e)
assert r.state == "FAILURE"
ok("failure is ValueError")

# Wrong argument types are a TypeError naming the task and argument.
r = app.send_task("worker.sleep", kwargs={"seconds": "soon"}, queue=q)
try:
    r.get(timeout=30)
    raise AssertionError("bad argument did not raise")
except TypeError as e:
    assert "worker.sleep" in str(e) and "seconds" in str(e), str(e)
ok("argument mismatch is TypeError")

# .state reads STARTED while a slow task runs.
r = app.send_task("worker.sleep", args=[3], queue=q)
deadline = time.time() + 10
while r.state != "STARTED" and time.time() < deadline:
    time.sleep(0.05)
assert r.state == "STARTED", r.state
assert r.get(timeout=30) == {"slept": 3}
ok("STARTED while running")

# countdown: runs no earlier than asked.
sent = time.time()
r = app.send_task("worker.ping", queue=q, countdown=2)
assert r.get(timeout=30) == "pong"
assert time.time() - sent >= 2, time.time() - sent
ok("countdown")

# An unknown task raises NotRegistered.
r = app.send_task("core.celery.tasks.does_not_exist", args=[1], queue=q)
try:
    r.get(timeout=30)
    raise AssertionError("unknown task did not raise")
except NotRegistered as e:
    assert "does_not_exist" in str(e), str(e)
print("unregistered-id", r.id, flush=True)
ok("NotRegistered")
