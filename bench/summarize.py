"""Markdown tables for bench/README.md from the JSON files run_all.sh leaves in bench/results/.

    bench/.venv/bin/python bench/summarize.py
"""

from __future__ import annotations

import json
import statistics
import sys
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"
PEERS = ("flower", "celery-exporter")


def load(pattern: str) -> list[dict]:
    return [json.loads(p.read_text()) for p in sorted(RESULTS.glob(pattern))]


def spread(values: list[float]) -> str:
    values = [v for v in values if v is not None]
    if not values:
        return "—"
    median = statistics.median(values)
    if len(values) == 1:
        return f"{median:,.0f}"
    return f"{median:,.0f} ({min(values):,.0f}–{max(values):,.0f})"


def ingest() -> str:
    runs = load("ingest-run*.json")
    if not runs:
        return ""
    out = [f"{len(runs)} runs; median (min–max). Load average (1 min) during the runs: "
           + ", ".join(f"{min(loads):.2f}–{max(loads):.2f}" for loads in (
               [s["loadavg"] for shape in r["runs"].values() for c in shape.values()
                for s in c["steps"]] for r in runs)) + ".", ""]
    for shape in ("batched", "single"):
        out += [f"**{shape}** ({'task.multi, up to 24 events a message' if shape == 'batched' else 'one event per message'})", "",
                "| consumer | sustained events/s, nothing lost | CPU per event | RSS peak (steps kept up) | burst of 200,000 events |",
                "| --- | --- | --- | --- | --- |"]
        names = list(runs[0]["runs"][shape])
        for name in names:
            results = [r["runs"][shape][name] for r in runs]
            sustained = [r["sustained_events_per_s"] for r in results]
            best_steps = [max((s for s in r["steps"] if s["kept_up"]),
                              key=lambda s: s["processed_events_per_s"], default=None) for r in results]
            cpu = [s["cpu_us_per_event"] for s in best_steps if s and s["cpu_us_per_event"]]
            rss = [max((s["rss_mb_peak"] for s in r["steps"] if s["kept_up"]), default=None)
                   for r in results]
            bursts = [r["burst"] for r in results if r["burst"]]
            burst = "; ".join(
                f"lost {b['lost_events']:,}" + ("" if b["alive"] else ", exited") for b in bursts)
            out.append(f"| {name} | {spread(sustained)} | {spread(cpu)} µs | "
                       f"{spread(rss)} MB peak | {burst} |")
        ours = statistics.median(r["runs"][shape]["celery-stalk"]["sustained_events_per_s"] for r in runs)
        peers = {n: statistics.median(r["runs"][shape][n]["sustained_events_per_s"] for r in runs)
                 for n in PEERS if n in runs[0]["runs"][shape]}
        if peers:
            best = max(peers, key=peers.get)
            out += ["", f"celery-stalk / faster peer ({best}): **{ours / peers[best]:.1f}x** "
                        f"(median of medians); per run: " + ", ".join(
                            f"{r['runs'][shape]['celery-stalk']['sustained_events_per_s'] / max(r['runs'][shape][n]['sustained_events_per_s'] for n in peers):.1f}x"
                            for r in runs), ""]
    return "\n".join(out)


def rabbitmq_ingest() -> str:
    """The RabbitMQ ladder (ingest.py --broker rabbitmq --pin), run by run."""
    runs = load("ingest-rabbitmq-run*.json")
    if not runs:
        return ""
    loads = [[s["loadavg"] for shape in r["runs"].values() for c in shape.values() for s in c["steps"]]
             for r in runs]
    out = [f"{len(runs)} runs; median (min–max). Load average (1 min) during the runs: "
           + ", ".join(f"{min(lo):.2f}–{max(lo):.2f}" for lo in loads) + ".", ""]
    for shape in [shape for shape in ("batched", "single") if shape in runs[0]["runs"]]:
        alone = [r["publisher_alone"][shape]["published_events_per_s"] for r in runs]
        kind = "task.multi, up to 24 events a message" if shape == "batched" else "one event per message"
        out += [f"**{shape}** ({kind}); publisher + broker alone: {spread(alone)} events/s", "",
                "| consumer | sustained events/s, nothing lost | CPU per event | its core busy at the "
                "top step | first step it lost at | burst: published, counted or lost, messages left in the queue |",
                "| --- | --- | --- | --- | --- | --- |"]
        for name in runs[0]["runs"][shape]:
            results = [r["runs"][shape][name] for r in runs]
            sustained = [r["sustained_events_per_s"] for r in results]
            best = [max((s for s in r["steps"] if s["kept_up"]),
                        key=lambda s: s["processed_events_per_s"], default=None) for r in results]
            cpu = [s["cpu_us_per_event"] for s in best if s and s["cpu_us_per_event"]]
            # how busy the consumer's own core was at the fastest step it kept up with: well
            # under 100%, and the limit was the broker's delivery, not the consumer
            busy = [f"{s['cpu_us_per_event'] * s['processed_events_per_s'] / 1e4:.0f}%"
                    for s in best if s and s["cpu_us_per_event"]]
            losses = []
            for r in results:
                lost = next((s for s in r["steps"] if s["lost_events"]), None)
                losses.append(f"{lost['published_events_per_s']:,}/s: {lost['lost_events'] / lost['events']:.1%}"
                              if lost else "none")
            bursts = "; ".join(
                f"{b['published_events_per_s']:,}/s"
                + (f", all counted at {b['processed_events_per_s']:,}/s" if b["processed_events_per_s"]
                   else f", lost {b['lost_events']:,}")
                + f", {b['backlog_messages']} left" for b in (r["burst"] for r in results) if b)
            out.append(f"| {name} | {spread(sustained)} | {spread(cpu)} µs | {', '.join(busy)} | "
                       f"{'; '.join(losses)} | {bursts} |")
        ratios = []
        for r in runs:
            peers = [c["sustained_events_per_s"] for n, c in r["runs"][shape].items() if n in PEERS]
            if peers and max(peers):
                ratios.append(r["runs"][shape]["celery-stalk"]["sustained_events_per_s"] / max(peers))
        if ratios:
            out += ["", "celery-stalk / faster peer, per run: " + ", ".join(f"{x:.1f}x" for x in ratios), ""]
    return "\n".join(out)


def sustain() -> str:
    out = ["| consumer | tasks/s | seconds | events | lost | lag at the end | RSS peak | alive |",
           "| --- | --- | --- | --- | --- | --- | --- | --- |"]
    for result in load("sustain-*.json"):
        for name, run in result["runs"]["batched"].items():
            s = run["steps"][0]
            seconds = s["events"] / s["published_events_per_s"]
            out.append(f"| {name} | {run['tasks_per_s']:,.0f} | {seconds:.0f} | {s['events']:,} | "
                       f"{s['lost_events']:,} | {s['lag_s'] if s['lag_s'] is not None else '—'} s | "
                       f"{s['rss_mb_peak']} MB | {s['alive']} |")
    return "\n".join(out)


def memory() -> str:
    out = ["| run | tasks | peak RSS | RSS at 1M | RSS at the end | slope 1M→end | slope 5M→end | tracked tasks at the end | workers at the end |",
           "| --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for path in sorted(RESULTS.glob("memory-*.json")):
        r = json.loads(path.read_text())
        out.append(f"| {path.stem} (--lost {r['args'].get('lost')}) | {int(r['args']['tasks']):,} | "
                   f"{r['peak_rss_mb']} MB | {r['rss_at_1m_mb']:.1f} MB | {r['rss_at_end_mb']:.1f} MB | "
                   f"{r['slope_mb_per_million_tasks_1m_to_end']} MB per million tasks | "
                   f"{late_slope(r['samples'])} MB per million tasks | "
                   f"{r['tracked_tasks_at_end']:,} | {r['workers_at_end']} |")
    return "\n".join(out)


def late_slope(samples) -> float:
    from memory import slope

    return round(slope([(x, y) for x, y in samples if x >= 5_000_000]), 3)


def scrape() -> str:
    out = ["| case | series | lines | body (gzip) | idle p50 / p99 | idle, no gzip p50 / p99 | busy p50 / p99 (max) | RSS max |",
           "| --- | --- | --- | --- | --- | --- | --- | --- |"]
    for path in sorted(RESULTS.glob("scrape-*.json")):
        r = json.loads(path.read_text())
        e = r["exposition"]
        out.append(
            f"| {path.stem} | {e['task_queue_pairs']:,} task×queue, {e['workers']} workers | "
            f"{e['lines']:,} | {e['bytes'] / 1e6:.1f} MB ({e['gzip_bytes'] / 1e6:.2f} MB) | "
            f"{r['idle']['p50_ms']} / {r['idle']['p99_ms']} ms | "
            f"{r['idle_no_gzip']['p50_ms']} / {r['idle_no_gzip']['p99_ms']} ms | "
            f"{r['busy']['p50_ms']} / {r['busy']['p99_ms']} ms (n={r['busy']['n']}) | "
            f"{r['rss_mb_max']} MB |")
    return "\n".join(out)


def queue_depth() -> str:
    out = []
    for r in load("queue-depth*.json"):
        out.append(f"{r['queues']:,} queues, {r['messages']:,} messages: reader p50 "
                   f"{r['reader']['p50_ms']} ms, p99 {r['reader']['p99_ms']} ms (n={r['reader']['n']}); "
                   f"the exporter's queues collector p50 {r['exporter_collector']['p50_ms']} ms, "
                   f"p99 {r['exporter_collector']['p99_ms']} ms (n={r['exporter_collector']['n']}).")
    return "\n".join(out)


def main() -> None:
    for title, part in (("ingest", ingest), ("ingest, RabbitMQ", rabbitmq_ingest),
                        ("sustain", sustain), ("memory", memory),
                        ("scrape", scrape), ("queue depth", queue_depth)):
        print(f"## {title}\n\n{part()}\n", file=sys.stdout)


if __name__ == "__main__":
    main()
