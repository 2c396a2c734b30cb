"""Where an exporter's time goes while it ingests events: py-spy on the running process.

Starts a private redis-server, the chosen consumer under ``py-spy record`` and
publishes the generated stream at a steady rate it can keep up with; then
prints the functions with the most samples, by own time (the leaf frame) and
by total time (anywhere on the stack), from py-spy's raw collapsed stacks.

    bench/.venv/bin/python bench/profile_ingest.py --consumer celery-stalk-kombu --rate 25000
"""

from __future__ import annotations

import argparse
import re
import signal
import sys
import time
from collections import Counter
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import stream  # noqa: E402
from consumers import CONSUMERS, wait_subscribed  # noqa: E402
from ingest import Cursor, Publisher  # noqa: E402

from tests.brokers import RedisServer, free_port  # noqa: E402

PY_SPY = Path(sys.executable).parent / "py-spy"
FRAME = re.compile(r"^(.*) \((.*?)(?::\d+)?\)$")


def summarize(raw: Path, top: int) -> str:
    own, total, samples = Counter(), Counter(), 0
    for line in raw.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        count = int(count)
        frames = [_short(f) for f in stack.split(";")]
        if not any("celery_stalk" in f or "kombu" in f or "celery" in f or "flower" in f
                   for f in frames):
            continue  # threads that are not the event consumer (HTTP server, idle loops)
        samples += count
        own[frames[-1]] += count
        for frame in set(frames):
            total[frame] += count
    lines = [f"{samples} samples of the event-consuming thread"]
    lines.append("own time (leaf frame):")
    lines += [f"  {n / samples:6.1%}  {f}" for f, n in own.most_common(top)]
    lines.append("total time (on the stack):")
    lines += [f"  {n / samples:6.1%}  {f}" for f, n in total.most_common(top)]
    return "\n".join(lines)


def _short(frame: str) -> str:
    match = FRAME.match(frame)
    if not match:
        return frame
    func, path = match.groups()
    parts = Path(path).parts
    for anchor in ("site-packages", "celery_stalk", "lib"):
        if anchor in parts:
            parts = parts[parts.index(anchor) + (anchor != "celery_stalk"):]
            break
    return f"{func} ({'/'.join(parts)})"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--consumer", choices=sorted(CONSUMERS), default="celery-stalk")
    parser.add_argument("--shape", choices=("batched", "single"), default="single")
    parser.add_argument("--rate", type=float, default=20_000.0, help="events/s to publish")
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--top", type=int, default=25)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    out = (args.out or Path(__file__).parent / "results" /
           f"profile-{args.consumer}-{args.shape}-{time.strftime('%Y%m%d-%H%M%S')}").resolve()
    out.parent.mkdir(exist_ok=True)
    spec = stream.StreamSpec(tasks=int(args.rate * args.seconds / 4) + 1000,
                             batched=args.shape == "batched", heartbeat_every_tasks=0)
    messages = stream.build(spec)
    with RedisServer() as server:
        consumer = CONSUMERS[args.consumer](server.url, free_port())
        raw = out.with_suffix(".txt")
        command = consumer.command()
        consumer.command = lambda: [str(PY_SPY), "record", "--format", "raw", "-r", "250",
                                    "-o", str(raw), "--", *command]
        consumer.start()
        try:
            wait_subscribed(server.client(), consumer)
            publisher = Publisher(server.port, stream.Fleet(spec))
            batch = Cursor(messages).take(int(args.rate * args.seconds))
            start, end = publisher.publish(batch, args.rate)
            print(f"published {sum(m.events for m in batch)} events at "
                  f"{sum(m.events for m in batch) / (end - start):,.0f}/s", flush=True)
            time.sleep(1.0)
        finally:
            consumer.proc.send_signal(signal.SIGINT)  # py-spy writes its file, then stops
            try:
                consumer.proc.wait(30)
            finally:
                consumer.stop()
    report = summarize(raw, args.top)
    out.with_suffix(".summary.txt").write_text(report + "\n")
    print(report)


if __name__ == "__main__":
    main()
