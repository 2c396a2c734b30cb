#!/usr/bin/env bash
# Every benchmark, as bench/README.md reports them; results land in bench/results/.
# About 90 minutes on the 2-core machine. Set RUNS to repeat the ingest ladder.
set -euo pipefail
cd "$(dirname "$0")/.."
./bench/setup.sh
py=bench/.venv/bin/python
for run in $(seq "${RUNS:-3}"); do
  $py bench/ingest.py --out "bench/results/ingest-run$run.json"
done
# RabbitMQ: the consumer on one core, the publisher and the broker on the other.
for run in $(seq "${RUNS:-3}"); do
  $py bench/ingest.py --broker rabbitmq --pin --tasks 50000 --burst-events 150000 \
    --out "bench/results/ingest-rabbitmq-run$run.json"
done
$py bench/ingest.py --shape batched --consumer celery-stalk --sustain 10000 --sustain-seconds 75 \
  --out bench/results/sustain-10k-celery-stalk.json
$py bench/ingest.py --shape batched --consumer flower --consumer celery-exporter --sustain 10000 \
  --sustain-seconds 20 --out bench/results/sustain-10k-peers.json
$py bench/memory.py --out bench/results/memory-10m.json
$py bench/memory.py --lost 0.05 --out bench/results/memory-10m-lost5.json
$py bench/scrape.py --out bench/results/scrape-all-pairs.json
$py bench/scrape.py --routed --out bench/results/scrape-routed.json
$py bench/queue_depth.py --out bench/results/queue-depth.json
for consumer in celery-stalk-kombu celery-stalk; do
  for shape in single batched; do
    rate=$([ $consumer = celery-stalk ] && echo 100000 || echo 20000)
    $py bench/profile_ingest.py --consumer $consumer --shape $shape --rate $rate --seconds 10 \
      --out "bench/results/profile-$consumer-$shape"
  done
done
