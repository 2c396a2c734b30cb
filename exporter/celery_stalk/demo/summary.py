"""The demo's live view: what /metrics says, as a terminal summary a person can read."""

from __future__ import annotations

import urllib.request
from collections import defaultdict
from dataclasses import dataclass

from prometheus_client.parser import text_string_to_metric_families


@dataclass
class Reading:
    """One scrape, summed the ways the summary shows it."""

    at: float
    totals: dict[str, float]  # sent, succeeded, failed, retried
    exceptions: dict[str, float]
    tasks: dict[str, dict[str, float]]  # task -> succeeded, failed, runtime_sum, runtime_count
    queues: dict[str, float]
    workers: dict[str, tuple[bool, float]]  # worker -> (up, active tasks)


TOTALS = ("sent", "succeeded", "failed", "retried")


def read(url: str, at: float, timeout: float = 5.0) -> Reading:
    with urllib.request.urlopen(url, timeout=timeout) as response:
        text = response.read().decode()
    totals = dict.fromkeys(TOTALS, 0.0)
    exceptions: dict[str, float] = defaultdict(float)
    tasks: dict[str, dict[str, float]] = defaultdict(lambda: defaultdict(float))
    queues: dict[str, float] = {}
    up: dict[str, bool] = {}
    active: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            name, labels, value = sample.name, sample.labels, sample.value
            verb = name.removeprefix("celery_task_").removesuffix("_total")
            if verb in TOTALS and name.endswith("_total"):
                totals[verb] += value
                tasks[labels["task"]][verb] += value
            elif name == "celery_task_exceptions_total":
                exceptions[labels["exception"]] += value
            elif name == "celery_task_runtime_seconds_sum":
                tasks[labels["task"]]["runtime_sum"] += value
            elif name == "celery_task_runtime_seconds_count":
                tasks[labels["task"]]["runtime_count"] += value
            elif name == "celery_queue_messages":
                queues[labels["queue"]] = value
            elif name == "celery_worker_up":
                up[labels["worker"]] = value == 1
            elif name == "celery_worker_tasks_active":
                active[labels["worker"]] = value
    workers = {worker: (is_up, active.get(worker, 0.0)) for worker, is_up in up.items()}
    return Reading(at, totals, dict(exceptions), {t: dict(v) for t, v in tasks.items()}, queues, workers)


def render(now: Reading, before: Reading | None, header: list[str]) -> str:
    done = now.totals["succeeded"] + now.totals["failed"]
    if before is not None and now.at > before.at:
        done_before = before.totals["succeeded"] + before.totals["failed"]
        throughput = f"{(done - done_before) / (now.at - before.at):5.1f} tasks/s"
    else:
        throughput = "  ... tasks/s"
    t = now.totals
    lines = [
        *header,
        "",
        f"throughput {throughput}   sent {t['sent']:.0f}   succeeded {t['succeeded']:.0f}   "
        f"failed {t['failed']:.0f}   retried {t['retried']:.0f}",
        "",
        f"{'task':<22}{'succeeded':>10}{'failed':>8}{'retried':>9}{'mean run':>10}",
    ]
    for task, counts in sorted(now.tasks.items()):
        runs = counts.get("runtime_count", 0)
        mean = f"{counts.get('runtime_sum', 0) / runs:8.2f} s" if runs else "       - "
        lines.append(f"{task:<22}{counts.get('succeeded', 0):>10.0f}{counts.get('failed', 0):>8.0f}"
                     f"{counts.get('retried', 0):>9.0f}{mean:>10}")
    lines += ["", "failures by exception"]
    for exception, count in sorted(now.exceptions.items(), key=lambda item: -item[1]):
        lines.append(f"  {exception:<28}{count:>6.0f}")
    if not now.exceptions:
        lines.append("  (none yet)")
    lines += ["", "queue depth (messages waiting)"]
    for queue, depth in sorted(now.queues.items()):
        lines.append(f"  {queue:<28}{depth:>6.0f}")
    lines += ["", "workers"]
    for worker, (is_up, active) in sorted(now.workers.items()):
        lines.append(f"  {worker:<40}{'up' if is_up else 'DOWN':>5}   {active:.0f} running")
    return "\n".join(lines)
