#!/usr/bin/env bash
# Run the whole test suite on a fresh Debian machine: install what the tests
# need (Debian packages, the tansu Kafka-protocol broker), start the real
# broker and time-series server on loopback ports, run every test, stop them.
#
#   bash scripts/test.sh            # everything
#   PRESCALE_SKIP_INSTALL=1 ...     # do not apt-get (packages already there)
set -euo pipefail
cd "$(dirname "$0")/.."
export PRESCALE_TOOLS="${PRESCALE_TOOLS:-$HOME/.cache/prescale-tools}"
# Optional parts the tests exercise: `--features aws` (the AWS actuators and
# producer; off in a default build so the backtest build stays light) and
# `bench` (the `prescale bench` sub-commands, which tests/kafka_service.rs runs).
PRESCALE_FEATURES="${PRESCALE_FEATURES:---features aws,bench}"

if [ -z "${PRESCALE_SKIP_INSTALL:-}" ]; then
  need=()
  command -v victoria-metrics >/dev/null || need+=(victoria-metrics)
  command -v chromium >/dev/null || need+=(chromium)
  command -v curl >/dev/null || need+=(curl)
  if [ ${#need[@]} -gt 0 ]; then
    echo "==> apt-get install ${need[*]}"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >/dev/null
  fi
fi

# Start the real services the integration tests talk to; stop them on exit.
source scripts/kafka.sh
source scripts/tsdb.sh
source scripts/moto.sh
# Slurm: Debian packages installed here; each Slurm test binary starts and
# stops its own single-host cluster through scripts/slurm.sh (own ports from
# PRESCALE_SLURM_TEST_PORT, default 16817), so they can run side by side.
source scripts/slurm.sh
trap 'kafka_stop || true; tsdb_stop || true; moto_stop || true' EXIT
slurm_install
kafka_install
kafka_start
tsdb_start
# AWS endpoint (moto) for the `aws` feature's actuator and producer tests.
moto_start

echo "==> cargo test (release profile: the README's first command builds the same dependencies)"
# One profile for both README commands, so a fresh machine compiles every
# dependency once. Benches (criterion, harness = false) are compiled, not
# run: their figures come from `cargo bench` / `prescale bench`.
cargo test --release --locked $PRESCALE_FEATURES --lib --bins --tests --benches --no-run
cargo test --release --locked $PRESCALE_FEATURES --lib --bins --tests -- --test-threads=2
