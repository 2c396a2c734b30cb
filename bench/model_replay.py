"""The model's own cost per event: bench/stream.py's stream replayed into Model.apply_many.

The ingest benchmark (ingest.py) measures the whole exporter through redis-server;
its figures move with the machine's load by more than a change to the model costs.
This one isolates the model: the stream is generated and decoded once (as the
Redis event source decodes it: the envelope, base64, the JSON body), then applied
in batches of up to 2,000 events with a simulated clock (--rate events per
simulated second, ``tick`` once per simulated second, as the event source does),
and timed in CPU time of the process (time.process_time): on a shared machine
other processes then slow it only through the caches they share, not by taking
its turns. A fresh Model per repetition; the best repetition is reported, since
noise only ever adds time.

``--compare A B`` runs the replay against two source trees (each a checkout with
exporter/celery_stalk), alternating A, B, A, B... in fresh processes, so that load
from other work on the machine falls on both alike; it prints every run and the
median of each side.

``--chains K`` rewrites the stream's root_id/parent_id so that every K consecutive
tasks form a chain (the first task the root of the others): a stream where every
task belongs to a workflow.

Instructions instead of time, for a figure the machine's load cannot move: run it
under valgrind with --repeat 1, and again with --setup-only (everything but the
replay); the difference over the events is the model's instructions per event.

    valgrind --tool=cachegrind --cache-sim=no --cachegrind-out-file=/dev/null \
        .venv/bin/python bench/model_replay.py --tasks 10000 --repeat 1 [--setup-only]

    .venv/bin/python bench/model_replay.py --compare /work/main . --rounds 7
"""

from __future__ import annotations

import argparse
import base64
import gc
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import stream  # noqa: E402

BATCH_EVENTS = 2000  # as sources/supervisor.py


def decoded_events(tasks: int, chains: int) -> list[dict]:
    """The stream's events, decoded as the Redis event source decodes them."""
    import orjson

    events: list[dict] = []
    for message in stream.build(stream.StreamSpec(tasks=tasks, batched=True)):
        payload = message.command.split(b"\r\n")[-2]  # the last bulk string: the envelope
        body = orjson.loads(base64.b64decode(orjson.loads(payload)["body"]))
        events.extend(body if isinstance(body, list) else [body])
    if chains > 1:
        chain_up(events, chains)
    return events


def chain_up(events: list[dict], length: int) -> None:
    """Every ``length`` consecutive tasks (in order of first appearance) become one chain."""
    order: dict[str, int] = {}
    for event in events:
        if event.get("type") == "task-sent" and event["uuid"] not in order:
            order[event["uuid"]] = len(order)
    ids = list(order)
    for event in events:
        index = order.get(event.get("uuid"))
        if index is None or "root_id" not in event:
            continue
        first = index - index % length
        event["root_id"] = ids[first]
        event["parent_id"] = ids[index - 1] if index > first else None


def replay(tree: Path, tasks: int, chains: int, repeat: int, rate: float,
           setup_only: bool = False) -> dict:
    sys.path.insert(0, str(tree / "exporter"))
    from celery_stalk.model import Model  # the tree's own model

    events = decoded_events(tasks, chains)
    batches = [events[i:i + BATCH_EVENTS] for i in range(0, len(events), BATCH_EVENTS)]
    step = BATCH_EVENTS / rate
    best = float("inf")
    for _ in range(0 if setup_only else repeat):
        model = Model()
        now, next_tick = 1_000_000.0, 0.0
        gc.collect()
        gc.freeze()  # the decoded stream is the benchmark's, not the exporter's: keep it out of GC scans
        started = time.process_time()
        for batch in batches:
            model.apply_many(batch, now)
            if now >= next_tick:
                model.tick(now)
                next_tick = now + 1.0
            now += step
        best = min(best, time.process_time() - started)
        gc.unfreeze()
    return {"tree": str(tree), "events": len(events),
            "ns_per_event": best / len(events) * 1e9 if not setup_only else 0.0}


def compare(a: Path, b: Path, rounds: int, args: argparse.Namespace) -> None:
    runs: dict[str, list[float]] = {str(a): [], str(b): []}
    for i in range(rounds):
        for tree in (a, b):
            out = subprocess.run(
                [sys.executable, __file__, "--tree", str(tree), "--tasks", str(args.tasks),
                 "--chains", str(args.chains), "--repeat", str(args.repeat),
                 "--rate", str(args.rate), "--json"],
                check=True, capture_output=True, text=True).stdout
            ns = json.loads(out)["ns_per_event"]
            runs[str(tree)].append(ns)
            print(f"round {i + 1}: {tree}: {ns:.0f} ns/event", flush=True)
    ma, mb = (statistics.median(runs[str(t)]) for t in (a, b))
    print(f"median {a}: {ma:.0f} ns/event; {b}: {mb:.0f} ns/event; "
          f"{b} / {a} = {mb / ma:.3f} ({(mb / ma - 1) * 100:+.1f}%)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tree", type=Path, default=HERE.parent, help="checkout to measure")
    parser.add_argument("--compare", nargs=2, type=Path, metavar=("A", "B"))
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--tasks", type=int, default=60_000)
    parser.add_argument("--chains", type=int, default=1, help="tasks per chain (1: no workflows)")
    parser.add_argument("--repeat", type=int, default=3, help="repetitions per run; the best counts")
    parser.add_argument("--rate", type=float, default=200_000.0,
                        help="events per simulated second")
    parser.add_argument("--setup-only", action="store_true",
                        help="build and decode the stream, replay nothing (the baseline under valgrind)")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    if args.compare:
        compare(args.compare[0].resolve(), args.compare[1].resolve(), args.rounds, args)
        return
    result = replay(args.tree.resolve(), args.tasks, args.chains, args.repeat, args.rate,
                    args.setup_only)
    print(json.dumps(result) if args.json else
          f"{result['tree']}: {result['events']} events, {result['ns_per_event']:.0f} ns/event")


if __name__ == "__main__":
    main()
