"""Celery 5.7's own event machinery against the Rust worker's events (tests/events.rs).

Usage:
  events_state.py state            < events.jsonl   feed each event (one JSON object a line, as
                                                     the worker published it) to
                                                     celery.events.state.State, print a summary
  events_state.py enable|disable NAMESPACE           app.control.enable_events() or
                                                     disable_events(), print the replies
"""
import json
import os
import sys
import time

from celery import Celery
from celery.events.state import State


def state():
    s = State()
    for line in sys.stdin:
        if not line.strip():
            continue
        event = json.loads(line)
        # What EventReceiver.event_from_message adds on arrival.
        event["local_received"] = time.time()
        s.event(event)
    workers = {
        name: {
            "alive": w.alive,
            "freq": w.freq,
            "sw_ident": w.sw_ident,
            "sw_sys": w.sw_sys,
            "processed": w.processed,
            "active": w.active,
            "loadavg": w.loadavg,
        }
        for name, w in s.workers.items()
    }
    tasks = {
        uuid: {
            "state": t.state,
            "name": t.name,
            "worker": t.worker.hostname if t.worker else None,
            "args": t.args,
            "result": t.result,
            "exception": t.exception,
            "runtime": t.runtime,
            "retries": t.retries,
        }
        for uuid, t in s.tasks.items()
    }
    print(json.dumps({"workers": workers, "tasks": tasks}))


def switch(which, namespace):
    app = Celery("ev", broker=os.environ["RABBITMQ_URL"])
    app.conf.update(accept_content=["json"], control_exchange=namespace)
    command = {"enable": app.control.enable_events, "disable": app.control.disable_events}[which]
    print(json.dumps(command(reply=True, timeout=2.0)))


if __name__ == "__main__":
    if sys.argv[1] == "state":
        state()
    else:
        switch(sys.argv[1], sys.argv[2])
