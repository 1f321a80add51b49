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
# Slurm: Debian packages installed here; each Slurm test binary starts and
# stops its own single-host cluster through scripts/slurm.sh (own ports from
# PRESCALE_SLURM_TEST_PORT, default 16817), so they can run side by side.
source scripts/slurm.sh
trap 'kafka_stop || true; tsdb_stop || true' EXIT
slurm_install
kafka_install
kafka_start
tsdb_start

echo "==> cargo test"
# Benches (criterion, harness = false) are compiled by `cargo check --benches`,
# not run: their figures come from `cargo bench` / `prescale bench`.
cargo check --benches --locked
cargo test --locked --lib --bins --tests -- --test-threads=2
