"""A chord whose parts a Python Celery worker and the Rust worker finish between them.

Usage: mixed_chord.py QUEUE
Prints "ok <check>" lines and one "part-worker <hostname>" line per header part.
"""
import os
import sys

from celery import Celery, chord

q = sys.argv[1]
app = Celery("mixed", broker=os.environ["RABBITMQ_URL"], backend=os.environ["REDIS_URL"])
app.conf.update(task_serializer="json", result_serializer="json", accept_content=["json"])

n = 20
parts = [app.signature("worker.sleep", args=(0.01 * i,), options={"queue": q}, immutable=True) for i in range(n)]
body = app.signature("worker.echo", args=("body",), options={"queue": q})
c = chord(parts, body).apply_async()
expected = {"args": [[{"slept": 0.01 * i} for i in range(n)], "body"], "kwargs": {}}
assert c.get(timeout=60) == expected, c.result
for part in c.parent.results:
    print("part-worker", part.backend.get_task_meta(part.id).get("worker"), flush=True)
print("ok mixed chord", flush=True)

# One failing part: whichever worker finishes the header reads the other's stored parts and
# fails the body with the same ChordError.
from celery.exceptions import ChordError
from celery.result import AsyncResult

parts = [app.signature("worker.sleep", args=(0.01 * i,), options={"queue": q}, immutable=True) for i in range(n)]
parts[7] = app.signature("worker.fail", args=("boom",), options={"queue": q}, immutable=True)
c = chord(parts, app.signature("worker.echo", options={"queue": q})).apply_async()
try:
    AsyncResult(c.id, app=app).get(timeout=60)
    raise AssertionError("the chord's body did not fail")
except ChordError as e:
    assert "Dependency" in str(e) and "boom" in str(e), str(e)
print("ok mixed chord with a failing part", flush=True)
