"""Celery 5.7's canvas (link, link_error, chain, group, chord) sent to the Rust worker.

Usage: canvas.py QUEUE PARKED
QUEUE is consumed by the worker; PARKED is a queue nobody consumes, where callbacks and chain
links the test wants to inspect (or to prove were never sent) are routed. Each check asserts;
the script prints "ok <check>" lines and "<name> <id>" lines for the Rust side to look at.
"""
import os
import sys
import uuid

from celery import Celery, chain, chord, group
from celery.exceptions import ChordError
from celery.result import AsyncResult, GroupResult

q, parked = sys.argv[1], sys.argv[2]
app = Celery("canvas", broker=os.environ["RABBITMQ_URL"], backend=os.environ["REDIS_URL"])
app.conf.update(task_serializer="json", result_serializer="json", accept_content=["json"])


def ok(name):
    print("ok", name, flush=True)


def show(name, value):
    print(name, value, flush=True)


def S(task, *args, queue=q, **options):
    return app.signature(task, args=args, options=dict(queue=queue, **options))


def SI(task, *args, queue=q, **options):
    return app.signature(task, args=args, options=dict(queue=queue, **options), immutable=True)


def meta(result):
    return result.backend.get_task_meta(result.id)


def echo(*args):
    return {"args": list(args), "kwargs": {}}


T = 30

# link: the callback gets the result prepended, runs, and is the parent's child.
r = app.send_task("worker.echo", args=[1], queue=q, link=S("worker.echo", "cb"))
assert r.get(timeout=T) == echo(1), r.result
children = r.children
assert children and len(children) == 1, children
cb = children[0]
assert cb.get(timeout=T) == echo(echo(1), "cb"), cb.result
assert meta(cb)["parent_id"] == r.id, meta(cb)
ok("link")

# An immutable callback keeps its own arguments.
r = app.send_task("worker.echo", args=[1], queue=q, link=SI("worker.echo", "im"))
r.get(timeout=T)
assert r.children[0].get(timeout=T) == echo("im"), r.children[0].result
ok("immutable link")

# A callback routed to the parked queue: the Rust side reads its message (parent_id, root_id,
# args) and checks it was published before the SUCCESS it belongs to was stored.
r = app.send_task("worker.echo", args=["routed"], queue=q, link=S("worker.echo", "p", queue=parked))
r.get(timeout=T)
show("routed-parent", r.id)
show("routed-child", r.children[0].id)
ok("link to a named queue")

# Several callbacks go as one group, each with its group_index; the result's child is a GroupResult.
r = app.send_task("worker.echo", args=[2], queue=q, link=[S("worker.echo", "a"), S("worker.echo", "b")])
r.get(timeout=T)
(g,) = r.children
assert isinstance(g, GroupResult), g
assert [c.get(timeout=T) for c in g.results] == [echo(echo(2), "a"), echo(echo(2), "b")]
assert all(meta(c).get("group_id") == g.id for c in g.results), [meta(c) for c in g.results]
ok("several links")

# A chain of three: each step gets the previous result; ids and parents line up.
res = chain(S("worker.echo", 1), S("worker.echo", 2), S("worker.echo", 3)).apply_async()
assert res.get(timeout=T) == echo(echo(echo(1), 2), 3), res.result
assert res.parent.get(timeout=T) == echo(echo(1), 2)
assert res.parent.parent.get(timeout=T) == echo(1)
assert meta(res)["parent_id"] == res.parent.id
assert meta(res.parent)["parent_id"] == res.parent.parent.id
ok("chain")

# A failing link fails every later link with the same error; the later links never run (the
# last one is routed to the parked queue, which must stay empty).
res = chain(S("worker.echo", 1), SI("worker.fail", "boom"), S("worker.echo", 3),
            S("worker.echo", 4, queue=parked)).apply_async()
try:
    res.get(timeout=T)
    raise AssertionError("the chain did not fail")
except ValueError as e:
    assert str(e) == "boom", repr(e)
# Celery stores the later links' FAILURE one by one, the chain's end first: wait for each.
for link in (res.parent, res.parent.parent):
    link.get(timeout=T, propagate=False)
    assert link.state == "FAILURE", link.state
assert res.state == "FAILURE", res.state
assert res.parent.parent.parent.get(timeout=T) == echo(1)
show("failed-chain-end", res.id)
ok("chain failure")

# A chain ending in a group: each member gets the previous result, under the ids the client froze.
res = chain(S("worker.echo", 1), group(S("worker.echo", "a"), S("worker.echo", "b"))).apply_async()
assert isinstance(res, GroupResult), res
assert res.get(timeout=T) == [echo(echo(1), "a"), echo(echo(1), "b")], res.results
assert all(meta(c).get("group_id") == res.id for c in res.results)
ok("chain ending in a group")

# A group as a link: the parent's child is that group.
r = app.send_task("worker.echo", args=[5], queue=q, link=group(S("worker.echo", "x"), S("worker.echo", "y")))
r.get(timeout=T)
(g,) = r.children
assert isinstance(g, GroupResult), g
assert g.get(timeout=T) == [echo(echo(5), "x"), echo(echo(5), "y")]
ok("group as a link")

# A chain as a link: its first task gets the result, the rest follow; the parent's child is
# the chain's last result, with the chain's first as its parent.
r = app.send_task("worker.echo", args=[6], queue=q, link=chain(S("worker.echo", "x"), S("worker.echo", "y")))
r.get(timeout=T)
(last,) = r.children
assert last.get(timeout=T) == echo(echo(echo(6), "x"), "y"), last.result
assert last.parent.get(timeout=T) == echo(echo(6), "x")
assert meta(last.parent)["parent_id"] == r.id and meta(last)["parent_id"] == last.parent.id
ok("chain as a link")

# link_error: the errback is sent as a task with the failed task's id first.
eid = str(uuid.uuid4())
r = app.send_task("worker.fail", args=["bad"], queue=q,
                  link_error=S("worker.echo", "eb", task_id=eid), link=S("worker.echo", "never", queue=parked))
try:
    r.get(timeout=T)
    raise AssertionError("worker.fail did not raise")
except ValueError:
    pass
eb = AsyncResult(eid, app=app)
assert eb.get(timeout=T) == echo(r.id, "eb"), eb.result
assert meta(eb)["parent_id"] == r.id and meta(eb).get("group_id"), meta(eb)
ok("link_error")

# group: results in order, each member carries the group id.
gr = group(S("worker.echo", i) for i in range(4)).apply_async()
assert gr.get(timeout=T) == [echo(i) for i in range(4)], gr.results
assert all(meta(c).get("group_id") == gr.id for c in gr.results)
ok("group")

# What the worker cannot honour is refused as a whole: a chain with a group in the middle
# (Celery turns it into a chord signature) fails its first task with NotImplementedError and
# runs nothing; the chain's end fails too instead of staying PENDING.
fid = str(uuid.uuid4())
res = chain(S("worker.echo", 1, task_id=fid), group(S("worker.echo"), S("worker.echo")), S("worker.echo")).apply_async()
first = AsyncResult(fid, app=app)
try:
    res.get(timeout=T)
    raise AssertionError("the unsupported chain did not fail")
except NotImplementedError as e:
    assert "subtask_type" in str(e) and "chord" in str(e), str(e)
assert first.state == "FAILURE", first.state
show("refused", first.id)
ok("unsupported canvas refused")

# chord: the body gets the header results in header order, however the parts finish (the
# first part sleeps, so it finishes last).
c = chord([SI("worker.sleep", 0.5), S("worker.echo", 1), S("worker.echo", 2)], S("worker.echo", "body")).apply_async()
assert c.get(timeout=T) == echo([{"slept": 0.5}, echo(1), echo(2)], "body"), c.result
ok("chord")

# A failing part fails the body with ChordError naming it; the body (routed to the parked
# queue) is never sent.
c = chord([S("worker.echo", 1), SI("worker.fail", "part failed"), S("worker.echo", 3)],
          S("worker.echo", queue=parked)).apply_async()
try:
    c.get(timeout=T)
    raise AssertionError("the chord did not fail")
except ValueError as e:
    # Celery's client re-raises the failed header part first.
    assert str(e) == "part failed", repr(e)
try:
    AsyncResult(c.id, app=app).get(timeout=T)
    raise AssertionError("the chord's body did not fail")
except ChordError as e:
    assert "Dependency" in str(e) and "part failed" in str(e), str(e)
ok("chord with a failing part")

# A chain in a chord's header whose first link fails: the chain's last link returns its part
# as failed, so the body fails instead of waiting for ever.
c = chord([chain(SI("worker.fail", "early"), S("worker.echo", 2)), S("worker.echo", 3)],
          S("worker.echo", queue=parked)).apply_async()
try:
    AsyncResult(c.id, app=app).get(timeout=T)
    raise AssertionError("the chord's body did not fail")
except ChordError as e:
    assert "early" in str(e), str(e)
ok("chord with a failing chain in its header")
