#!/usr/bin/env bash
# Run the Kafka and replay benchmarks on another machine (one with more
# cores, say) that has no network and no Rust toolchain: everything it needs
# travels as one bundle, the stripped release binary and the tansu broker
# that scripts/kafka.sh installed here.
#
#   bash scripts/bench-elsewhere.sh pack        # here: build, strip, bundle into target/bench-elsewhere/
#   OUT=DIR bash scripts/bench-elsewhere.sh run  # there, from the repository root: figures into DIR
#
# `run` measures `prescale bench kafka --messages 1000000 --repeat 3` five
# ways (all cores, with the default read path (pipelined there) and with
# `--decode-threads 0`; broker and bench pinned to two cores with taskset,
# as on a 2-core CI machine, with the default (inline there) and with
# `--decode-threads 2`; all cores with 12 partitions per topic), then
# `prescale bench replay --scale 300 --stages decode,state,dense`. The text
# goes to $OUT/all.txt, each Kafka run's figures to $OUT/<name>.json (six
# files: a device machine returns at most eight). docs/service.md
# ("Session 9", "Session 11") has the figures of 16-core runs.
set -uo pipefail
cd "$(dirname "$0")/.."
DIR="$PWD/target/bench-elsewhere"
TANSU="${PRESCALE_TOOLS:-$HOME/.cache/prescale-tools}/bin/tansu"
URL=tcp://127.0.0.1:19392

pack() {
    set -e
    bash scripts/kafka.sh install
    cargo build --release --features bench
    mkdir -p "$DIR"
    local tmp
    tmp=$(mktemp -d)
    strip -o "$tmp/prescale" target/release/prescale
    strip -o "$tmp/tansu" "$TANSU"
    tar -C "$tmp" -czf "$DIR/bins.tar.gz" prescale tansu
    rm -rf "$tmp"
    echo "bundle: $DIR/bins.tar.gz ($(du -h "$DIR/bins.tar.gz" | cut -f1)); carry it with this script"
}

start_broker() { # "$@": a command prefix (taskset ...) or nothing
    rm -rf /tmp/bench-elsewhere-broker
    mkdir -p /tmp/bench-elsewhere-broker
    (cd /tmp/bench-elsewhere-broker && exec "$@" env -u STORAGE_ENGINE "$DIR/tansu" broker \
        --cluster-id prescale --listener-url $URL --advertised-listener-url $URL \
        --storage-engine memory://tansu/ >tansu.log 2>&1) &
    echo $! >/tmp/bench-elsewhere-broker/pid
    for _ in $(seq 100); do
        timeout 5 "$DIR/tansu" topic list --broker $URL >/dev/null 2>&1 && return 0
        sleep 0.2
    done
    echo "broker did not answer"; tail /tmp/bench-elsewhere-broker/tansu.log
    return 1
}

stop_broker() { kill "$(cat /tmp/bench-elsewhere-broker/pid)" 2>/dev/null; sleep 1; }

kafka() { # name, [prefix words...], --, bench args...
    local name=$1 pre=()
    shift
    while [[ $1 != -- ]]; do pre+=("$1"); shift; done
    shift
    echo "=== $name: ${pre[*]} prescale bench kafka $*"
    start_broker "${pre[@]}" || return 1
    "${pre[@]}" "$DIR/prescale" bench kafka --brokers 127.0.0.1:19392 "$@" \
        --json "$OUT/$name.json"
    stop_broker
}

run() {
    : "${OUT:?set OUT to the directory for the figures}"
    mkdir -p "$OUT"
    (cd "$DIR" && tar -xzf bins.tar.gz) || return 3
    {
        lscpu | grep -E 'Model name|^CPU\(s\)'
        local m=(--messages 1000000 --repeat 3)
        # The read path by default: pipelined (reader threads decode) on
        # more than two cores, inline on two; each also the other way.
        kafka all-cores -- "${m[@]}" --latency-secs 10
        kafka all-cores-inline -- "${m[@]}" --latency-secs 10 --decode-threads 0
        # As on a 2-core CI machine: broker and bench on two cores.
        kafka two-cores taskset -c 0,1 -- "${m[@]}" --latency-secs 10
        kafka two-cores-piped taskset -c 0,1 -- "${m[@]}" --latency-secs 10 --decode-threads 2
        kafka all-cores-12p -- "${m[@]}" --latency-secs 5 --partitions 12
        echo "=== replay"
        "$DIR/prescale" bench replay --scale 300 --stages decode,state,dense --repeat 3 2>&1
    } 2>&1 | tee "$OUT/all.txt"
}

case "${1:-}" in
    pack) pack ;;
    run) run ;;
    *) sed -n '2,15p' "$0"; exit 2 ;;
esac
