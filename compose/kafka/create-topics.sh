#!/usr/bin/env bash
# Creates prescale's topics on the compose broker (idempotent).
set -euo pipefail
BOOTSTRAP="${BOOTSTRAP:-kafka:9092}"
PARTITIONS="${PARTITIONS:-3}"
topics=(job-submission job-completion price-tick budget-allocation spot-signal scaling-command preemption-command
        job-submission.dlq job-completion.dlq price-tick.dlq budget-allocation.dlq spot-signal.dlq)
for t in "${topics[@]}"; do
  /opt/kafka/bin/kafka-topics.sh --bootstrap-server "$BOOTSTRAP" --create --if-not-exists \
    --topic "$t" --partitions "$PARTITIONS" --replication-factor 1
done
/opt/kafka/bin/kafka-topics.sh --bootstrap-server "$BOOTSTRAP" --list
