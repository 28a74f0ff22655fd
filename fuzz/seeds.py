"""Writes the seed corpus of the `inbound` fuzz target (fuzz/corpus/inbound/seed-*).

Each seed is what the fuzz target reads: two bytes (big-endian) with the length of an AMQP
content-header property list, that list, then the body. The property lists are serialised by
py-amqp, the library kombu publishes with, from messages Celery 5.7 itself builds, so the seeds
are real producer output; a few hand-made hostile ones are added. Run from the project root:
    .venv/bin/python fuzz/seeds.py
"""
import datetime
import json
import pathlib
import struct

from amqp.basic_message import Message
from celery import Celery, chain, group, signature

OUT = pathlib.Path(__file__).parent / "corpus" / "inbound"
app = Celery("seeds", broker="memory://")
app.conf.task_protocol = 2


def seed(name, body, headers=None, content_type="application/json", content_encoding="utf-8", **props):
    if isinstance(body, str):
        body = body.encode("utf-8", "surrogatepass")
    message = Message(body, content_type=content_type, content_encoding=content_encoding,
                      application_headers=headers or {}, **props)
    properties = message._serialize_properties()
    assert len(properties) < 65536, name
    (OUT / f"seed-{name}").write_bytes(struct.pack(">H", len(properties)) + properties + body)


def v2(name, task, args=(), kwargs=None, **options):
    m = app.amqp.as_task_v2(options.pop("task_id", f"{name}-id"), task, args=list(args),
                            kwargs=kwargs or {}, **options)
    body = json.dumps(m.body, default=str)
    seed(name, body, headers=m.headers, correlation_id=m.headers["id"], delivery_mode=2, priority=0)


now = datetime.datetime.now(datetime.timezone.utc)
v2("echo", "worker.echo", [1, "two", {"three": 3.0}])
v2("fail-retry", "worker.fail", kwargs={"retry_countdown": 1e13})
v2("sleep", "worker.sleep", [0.01])
T = "core.celery.tasks."
v2("reminders", T + "notification_tasks.process_reminders")
v2("auto-close", T + "shift_tasks.auto_close_shifts")
v2("cleanup", T + "analytics_tasks.cleanup_cache")
v2("plan", T + "shift_tasks.plan_next_year_timeslots")
v2("notify", T + "notification_tasks.send_shift_notification", [42, "shift_reminder", {"shift_id": 7}])
v2("bulk", T + "notification_tasks.send_bulk_notifications", [[1, 2, 3], "shift_cancelled", {}])
v2("reminder", T + "notification_tasks.send_shift_reminder", kwargs={"user_id": 1, "shift_schedule_id": 2,
                                                                     "shift_data": {"object_name": "x"}})
v2("now", "send_notification_now", [9])
v2("payment", T + "shift_tasks.calculate_shift_payment", ["not an int"])
v2("metrics", T + "analytics_tasks.calculate_monthly_metrics", kwargs={"year": 2026, "month": 13})
v2("eta-expires", "worker.echo", [1], eta=now + datetime.timedelta(seconds=2),
   expires=now + datetime.timedelta(seconds=1))
v2("far-eta", "worker.echo", [1], eta=datetime.datetime(9999, 12, 31, tzinfo=datetime.timezone.utc))
v2("time-limits", "worker.echo", [1], time_limit=1e300, soft_time_limit=-1)
v2("chain", "worker.echo", [1], chain=[signature("worker.echo", args=(2,)), signature("worker.echo", args=(3,))])
v2("callbacks", "worker.echo", [1], callbacks=[signature("worker.echo", immutable=True)],
   errbacks=[signature("worker.fail")])
v2("group", "worker.echo", [1], group_id="g-1", group_index=3, root_id="r", parent_id="p")
v2("unknown", "no.such.task", [1])

# Protocol 1 (a dict body, no task header) and the hybrid of both.
v1 = {"task": "worker.echo", "id": "v1-id", "args": [1, 2], "kwargs": {"a": 1}, "retries": 0,
      "eta": now.isoformat(), "expires": None, "utc": True}
seed("v1", json.dumps(v1))
seed("hybrid", json.dumps({"args": [1], "kwargs": {}}), headers={"task": "worker.echo", "id": "h-id"})
# kombu's tagged values in the body.
seed("kombu-tags", json.dumps([[{"__type__": "datetime", "__value__": now.isoformat()},
                                 {"__type__": "bytes", "__value__": "aGk="},
                                 {"__type__": "decimal", "__value__": "1.5"}], {}, {}]),
     headers={"task": "worker.echo", "id": "t-id", "lang": "py"})

# Hostile ones.
deep = {}
node = deep
for _ in range(70):
    node["x"] = {}
    node = node["x"]
seed("deep-header", "[[], {}, {}]", headers={"task": "worker.echo", "id": "d-id", "deep": deep})
seed("big-header", "[[], {}, {}]", headers={"task": "worker.echo", "id": "b-id", "big": "x" * 60000})
seed("bad-eta", "[[], {}, {}]", headers={"task": "worker.echo", "id": "e-id", "eta": "9" * 300})
seed("not-json", "{not json", headers={"task": "worker.echo", "id": "n-id"})
seed("not-utf8", b"[[\"\xff\xfe\"], {}, {}]", headers={"task": "worker.echo", "id": "u-id"})
seed("many-values", "[[" + ",".join(["0"] * 5000) + "], {}, {}]", headers={"task": "worker.echo", "id": "m-id"})
seed("pickle", "garbage", headers={"task": "worker.echo", "id": "p-id"}, content_type="application/x-python-serialize")
seed("status-in-args", json.dumps([['"status":"SUCCESS"'], {}, {}]), headers={"task": "worker.echo", "id": "s-id"})
seed("empty", "")
print(f"wrote {len(list(OUT.glob('seed-*')))} seeds to {OUT}")
