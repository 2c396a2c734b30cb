"""Builders of real-shaped Celery events (celery.events.Event, as workers send them)."""

from __future__ import annotations

from celery.events import Event

WORKER = "w1@host-a"


def sent(task_id, name, queue="celery", at=100.0, eta=None, retries=0, root_id=None,
         parent_id=None, args="()", kwargs="{}", **fields):
    return Event("task-sent", uuid=task_id, name=name, args=args, kwargs=kwargs, retries=retries,
                 eta=eta, expires=None, queue=queue, exchange="", routing_key=queue,
                 root_id=root_id or task_id, parent_id=parent_id, hostname="producer@host",
                 timestamp=at, utcoffset=0, pid=1, clock=1, **fields)


def received(task_id, name, at=101.0, hostname=WORKER, retries=0, eta=None, root_id=None,
             parent_id=None, args="()", kwargs="{}"):
    return Event("task-received", uuid=task_id, name=name, args=args, kwargs=kwargs,
                 root_id=root_id or task_id, parent_id=parent_id, retries=retries, eta=eta,
                 expires=None, hostname=hostname, timestamp=at, utcoffset=0, pid=2, clock=2)


def started(task_id, at=102.0, hostname=WORKER):
    return Event("task-started", uuid=task_id, hostname=hostname, timestamp=at, utcoffset=0,
                 pid=3, clock=3)


def succeeded(task_id, runtime=0.5, at=103.0, hostname=WORKER):
    return Event("task-succeeded", uuid=task_id, result="None", runtime=runtime,
                 hostname=hostname, timestamp=at, utcoffset=0, pid=3, clock=4)


def failed(task_id, exception="ValueError('boom')", at=103.0, hostname=WORKER):
    return Event("task-failed", uuid=task_id, exception=exception,
                 traceback="Traceback (most recent call last):\n...", hostname=hostname,
                 timestamp=at, utcoffset=0, pid=3, clock=4)


def retried(task_id, exception="Retry('again')", at=103.0, hostname=WORKER):
    return Event("task-retried", uuid=task_id, exception=exception, traceback="...",
                 hostname=hostname, timestamp=at, utcoffset=0, pid=3, clock=4)


def rejected(task_id, requeue=False, hostname=WORKER):
    return Event("task-rejected", uuid=task_id, requeue=requeue, hostname=hostname,
                 timestamp=103.0, utcoffset=0, pid=3, clock=4)


def revoked(task_id, hostname=WORKER):
    return Event("task-revoked", uuid=task_id, terminated=False, signum=None, expired=False,
                 hostname=hostname, timestamp=103.0, utcoffset=0, pid=3, clock=4)


def heartbeat(hostname=WORKER, active=0, processed=0, freq=2.0, kind="worker-heartbeat"):
    return Event(kind, hostname=hostname, freq=freq, active=active, processed=processed,
                 loadavg=[0.1, 0.2, 0.3], sw_ident="py-celery", sw_ver="5.7.0",
                 sw_sys="Linux", timestamp=0.0, utcoffset=0, pid=10, clock=5)


def online(hostname=WORKER):
    return heartbeat(hostname, kind="worker-online")


def offline(hostname=WORKER):
    return heartbeat(hostname, kind="worker-offline")


def lifecycle(task_id, name, queue="celery", t0=100.0, wait=1.0, runtime=0.5):
    """The four events of a task that succeeds."""
    return [
        sent(task_id, name, queue, at=t0),
        received(task_id, name, at=t0 + wait / 2),
        started(task_id, at=t0 + wait),
        succeeded(task_id, runtime=runtime, at=t0 + wait + runtime),
    ]


def chain(task_ids, names, t0=100.0, step=1.0, fail_at=None):
    """A chain as Celery runs it: each step is sent by the one before it (same root_id,
    parent_id the step before), whose task-succeeded comes after. Step i is sent at
    t0 + i * step; the last one succeeds 0.5 s after it was sent. ``fail_at``: the
    index of the step that fails, ending the chain."""
    root, events = task_ids[0], []
    for i, (task_id, name) in enumerate(zip(task_ids, names)):
        at, parent = t0 + i * step, task_ids[i - 1] if i else None
        events += [sent(task_id, name, at=at, root_id=root, parent_id=parent),
                   received(task_id, name, at=at + 0.1, root_id=root, parent_id=parent)]
        if i:
            events.append(succeeded(task_ids[i - 1], runtime=0.3, at=at))
        events.append(started(task_id, at=at + 0.2))
        if i == fail_at:
            return events + [failed(task_id, at=at + 0.5)]
    return events + [succeeded(task_ids[-1], runtime=0.3, at=t0 + (len(task_ids) - 1) * step + 0.5)]
