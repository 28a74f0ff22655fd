"""Celery 5.7's remote control client (app.control) against the Rust worker.

Usage: remote_control.py NAMESPACE CHECK ARGS...
NAMESPACE is Celery's control_exchange (the worker's WORKER_CONTROL_EXCHANGE), unique per test.
Each check asserts and prints "ok <what>" lines; a JSON line "result <json>" gives the test
what it needs to check on its side.
"""
import json
import os
import sys
import time

from celery import Celery
from celery.exceptions import TaskRevokedError

namespace, check, args = sys.argv[1], sys.argv[2], sys.argv[3:]
app = Celery("rc", broker=os.environ["RABBITMQ_URL"], backend=os.environ["REDIS_URL"])
app.conf.update(
    task_serializer="json",
    result_serializer="json",
    accept_content=["json"],
    control_exchange=namespace,
)
TIMEOUT = 3.0


def ok(what):
    print("ok", what, flush=True)


def result(doc):
    print("result", json.dumps(doc), flush=True)


def wait_state(r, states, timeout):
    deadline = time.time() + timeout
    while r.state not in states and time.time() < deadline:
        time.sleep(0.02)
    return r.state


def inspect(nodes):
    # `limit`: return once every node replied instead of waiting out the timeout each time.
    count = len(nodes)
    i = app.control.inspect(timeout=TIMEOUT, limit=count)
    ping = i.ping()
    assert ping == {n: {"ok": "pong"} for n in nodes}, ping
    ok("ping")
    registered = i.registered()
    assert set(registered) == set(nodes), registered
    for n in nodes:
        assert "worker.sleep" in registered[n] and registered[n] == sorted(registered[n]), registered[n]
    ok("registered")
    stats = i.stats()
    for n in nodes:
        s = stats[n]
        assert s["pid"] > 0 and s["pool"]["max-concurrency"] >= 1 and "total" in s, s
        assert "password" not in json.dumps(s) and "guest:guest" not in json.dumps(s), s
    ok("stats")
    queues = i.active_queues()
    for n in nodes:
        assert [q["name"] for q in queues[n]] == [args[1]], queues[n]
    ok("active_queues")
    for name in ("active", "reserved", "scheduled", "revoked"):
        got = getattr(i, name)()
        assert set(got) == set(nodes) and all(isinstance(v, list) for v in got.values()), (name, got)
        ok(name)
    conf = i.conf()
    for n in nodes:
        text = json.dumps(conf[n])
        assert conf[n]["WORKER_HOSTNAME"] == n, conf[n]
        assert "guest:guest" not in text and "amqp://guest:***@" in text, text
    ok("conf")
    q = i.query_task("no-such-id")
    assert q == {n: {} for n in nodes}, q
    ok("query_task")
    c = app.control
    en = c.broadcast("enable_events", reply=True, timeout=TIMEOUT, limit=count)
    assert sorted(en, key=lambda d: list(d)[0]) == [{n: {"ok": "task events enabled"}} for n in sorted(nodes)], en
    again = c.broadcast("enable_events", reply=True, timeout=TIMEOUT, limit=count)
    assert all(list(d.values())[0] == {"ok": "task events already enabled"} for d in again), again
    dis = c.broadcast("disable_events", reply=True, timeout=TIMEOUT, limit=count)
    assert all(list(d.values())[0] == {"ok": "task events disabled"} for d in dis), dis
    ok("enable_events/disable_events")
    unknown = c.broadcast("no_such_command", reply=True, timeout=TIMEOUT, limit=count)
    assert sorted(unknown, key=lambda d: list(d)[0]) == [{n: {"error": "KeyError('no_such_command')"}} for n in sorted(nodes)], unknown
    ok("unknown command")
    # One node at a time: only it answers (no limit: the other would have time to answer too).
    one = app.control.inspect(destination=[nodes[0]], timeout=TIMEOUT).ping()
    assert one == {nodes[0]: {"ok": "pong"}}, one
    ok("destination")


def revoke_before_eta(queue, countdown):
    r = app.send_task("worker.echo", args=["must not run"], queue=queue, countdown=countdown)
    if countdown < 5:
        # Held in memory for its eta: `scheduled` shows it.
        deadline = time.time() + 10
        while time.time() < deadline:
            sched = app.control.inspect(timeout=TIMEOUT, limit=1).scheduled() or {}
            ids = [e["request"]["id"] for v in sched.values() for e in v]
            if r.id in ids:
                break
            time.sleep(0.1)
        assert r.id in ids, sched
        ok("scheduled shows the held task")
    else:
        time.sleep(1.0)
    # One worker: `limit=1` returns as its reply comes instead of waiting out the timeout.
    replies = app.control.revoke(r.id, reply=True, timeout=TIMEOUT, limit=1)
    assert replies and all("flagged as revoked" in list(d.values())[0]["ok"] for d in replies), replies
    assert wait_state(r, ("REVOKED",), 5) == "REVOKED", r.state
    ok("REVOKED at once")
    time.sleep(countdown + 2.0)
    assert r.state == "REVOKED", (r.state, r.result)
    try:
        r.get(timeout=1)
        raise AssertionError("a revoked task returned")
    except TaskRevokedError:
        pass
    ok("never ran")
    result({"id": r.id})


def terminate(queue):
    r = app.send_task("worker.sleep", args=[30], queue=queue)
    deadline = time.time() + 15
    active = {}
    while time.time() < deadline:
        active = app.control.inspect(timeout=TIMEOUT, limit=1).active() or {}
        if any(t["id"] == r.id for v in active.values() for t in v):
            break
        time.sleep(0.1)
    running = [t for v in active.values() for t in v if t["id"] == r.id]
    assert running and running[0]["name"] == "worker.sleep" and running[0]["args"] == [30], active
    assert running[0]["time_start"] > 0, running
    ok("active shows the running task")
    q = app.control.inspect(timeout=TIMEOUT, limit=1).query_task(r.id)
    assert any(v.get(r.id, [None])[0] == "active" for v in q.values()), q
    ok("query_task finds it active")
    start = time.time()
    replies = app.control.revoke(r.id, terminate=True, reply=True, timeout=TIMEOUT, limit=1)
    assert any(list(d.values())[0] == {"ok": f"terminate: {r.id}"} for d in replies), replies
    assert wait_state(r, ("REVOKED",), 5) == "REVOKED", r.state
    took = time.time() - start
    assert took < 1.0, took
    try:
        r.get(timeout=1)
        raise AssertionError("a terminated task returned")
    except TaskRevokedError as e:
        assert "terminated" in str(e), str(e)
    ok(f"terminated in {took:.3f}s")
    result({"id": r.id, "took": took})


def revoke_id(task_id, nodes):
    """Revoke an id that was never sent; every node must say so and list it."""
    replies = app.control.revoke(task_id, reply=True, timeout=TIMEOUT, limit=len(nodes))
    got = {list(d)[0] for d in replies}
    assert got == set(nodes), replies
    ok("every replica took the revoke")
    revoked = app.control.inspect(timeout=TIMEOUT, limit=len(nodes)).revoked()
    for n in nodes:
        assert task_id in revoked[n], revoked
    ok("every replica lists it")


def send_with_id(queue, task_id, times):
    """Send worker.echo under `task_id` several times; it must stay REVOKED."""
    for _ in range(times):
        app.send_task("worker.echo", args=["must not run"], queue=queue, task_id=task_id)
    time.sleep(2.0)
    r = app.AsyncResult(task_id)
    assert r.state == "REVOKED", (r.state, r.result)
    ok("sent again, still not run")


def revoked_on(task_id, nodes):
    revoked = app.control.inspect(timeout=TIMEOUT).revoked()
    for n in nodes:
        assert task_id in revoked.get(n, []), revoked
    ok("revoked after restart")


def bad_arguments(node):
    """Arguments of the wrong type get an error reply, and the node keeps answering."""
    c = app.control
    for arguments, needle in [
        ({"task_id": 5}, "not a string"),
        ({"task_id": ["x"] * 10001}, "at most 10000"),
        ({}, "missing 1 required positional argument"),
    ]:
        got = c.broadcast("revoke", arguments=arguments, reply=True, timeout=TIMEOUT, limit=1)
        assert got and needle in got[0][node]["error"], (arguments if len(str(arguments)) < 100 else "...", got)
    got = c.broadcast("query_task", arguments={"ids": {"a": 1}}, reply=True, timeout=TIMEOUT, limit=1)
    assert "error" in got[0][node], got
    assert c.inspect(timeout=TIMEOUT, limit=1).ping() == {node: {"ok": "pong"}}
    ok("bad arguments")


if check == "bad_arguments":
    bad_arguments(args[0])
elif check == "inspect":
    inspect(args[0].split(","))
elif check == "revoke_before_eta":
    revoke_before_eta(args[0], float(args[1]))
elif check == "terminate":
    terminate(args[0])
elif check == "revoke_id":
    revoke_id(args[0], args[1].split(","))
elif check == "send_with_id":
    send_with_id(args[0], args[1], int(args[2]))
elif check == "revoked_on":
    revoked_on(args[0], args[1].split(","))
else:
    raise SystemExit(f"unknown check {check}")
