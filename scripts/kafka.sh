#!/usr/bin/env bash
# Test broker for prescale: installs (if missing), starts, waits for, creates
# topics on, and stops a real Kafka-protocol broker (tansu 0.6.0) on loopback.
#
# Run it, or source it and call kafka_install / kafka_start / kafka_stop /
# kafka_wait / kafka_topics (kafka_start exports PRESCALE_KAFKA_BROKERS).
#
# Usage:
#   scripts/kafka.sh install            # cargo install tansu when missing (~10 min cold)
#   scripts/kafka.sh start              # install if missing, start, wait, create topics
#   scripts/kafka.sh stop               # stop the broker started from the same state dir
#   scripts/kafka.sh wait               # wait until the broker answers
#   scripts/kafka.sh topics [PREFIX]    # create prescale's topics (optionally prefixed)
#   scripts/kafka.sh env                # print `export PRESCALE_KAFKA_BROKERS=...`
#   scripts/kafka.sh status             # exit 0 when the broker answers
#
# Environment (all optional):
#   PRESCALE_TOOLS           where tools are installed (default ~/.cache/prescale-tools)
#   PRESCALE_KAFKA_PORT      loopback port (default 19092; not 9092 so a user's Kafka is untouched)
#   PRESCALE_KAFKA_DIR       state dir: pid, log, sqlite file (default /tmp/prescale-kafka-$KAFKA_PORT)
#   PRESCALE_KAFKA_STORAGE   memory (default) | file  (file: libsql database in the state dir,
#                            survives a broker restart)
#   PRESCALE_KAFKA_PARTITIONS partitions per input topic (default 3)
#   PRESCALE_KAFKA_WAIT_S    how long `wait` waits (default 60)
#
# Why tansu: it is a real Apache-Kafka-compatible broker that installs from
# crates.io with cargo alone (no JVM, no Docker), so CI on a fresh Debian
# machine can run the integration tests against a real server.

KAFKA_TOOLS="${PRESCALE_TOOLS:-$HOME/.cache/prescale-tools}"
KAFKA_TANSU="$KAFKA_TOOLS/bin/tansu"
KAFKA_PORT="${PRESCALE_KAFKA_PORT:-19092}"
KAFKA_DIR="${PRESCALE_KAFKA_DIR:-/tmp/prescale-kafka-$KAFKA_PORT}"
KAFKA_STORAGE="${PRESCALE_KAFKA_STORAGE:-memory}"
KAFKA_PARTITIONS="${PRESCALE_KAFKA_PARTITIONS:-3}"
KAFKA_WAIT_S="${PRESCALE_KAFKA_WAIT_S:-60}"
KAFKA_URL="tcp://127.0.0.1:$KAFKA_PORT"

_kafka_log() { echo "kafka.sh: $*" >&2; }

kafka_install() {
    if [[ -x "$KAFKA_TANSU" ]]; then
        return 0
    fi
    _kafka_log "installing tansu 0.6.0 into $KAFKA_TOOLS (features dynostore,libsql; ~10 min on 2 cores)"
    mkdir -p "$KAFKA_TOOLS"
    cargo install tansu@0.6.0 --locked --features dynostore,libsql --root "$KAFKA_TOOLS"
}

kafka_answers() {
    # `topic list` speaks the Kafka protocol (metadata), so success means the
    # broker really serves requests, not merely that the port is open.
    timeout 5 "$KAFKA_TANSU" topic list --broker "$KAFKA_URL" >/dev/null 2>&1
}

kafka_wait() {
    local deadline=$((SECONDS + KAFKA_WAIT_S))
    until kafka_answers; do
        if [[ -f "$KAFKA_DIR/tansu.pid" ]] && ! kill -0 "$(cat "$KAFKA_DIR/tansu.pid")" 2>/dev/null; then
            _kafka_log "broker exited; last log lines:"
            tail -20 "$KAFKA_DIR/tansu.log" >&2 || true
            return 1
        fi
        if ((SECONDS >= deadline)); then
            _kafka_log "broker on $KAFKA_URL did not answer within ${KAFKA_WAIT_S}s"
            return 1
        fi
        sleep 0.2
    done
}

_kafka_create_topic() {
    local name="$1" partitions="$2" out
    if out=$("$KAFKA_TANSU" topic create "$name" --broker "$KAFKA_URL" --partitions "$partitions" 2>&1); then
        return 0
    fi
    # Re-running start against a file-backed broker finds the topics there.
    if grep -qi "exist" <<<"$out"; then
        return 0
    fi
    _kafka_log "creating topic $name failed: $out"
    return 1
}

kafka_topics() {
    local prefix="${1:-}" t
    # Inputs are keyed (jobs by compute environment), so they get several
    # partitions; commands are keyed by environment too. Every topic that can
    # receive a bad record has a `.dlq` twin. `prescale.budget-spend` is the
    # internal topic that re-keys spend by project; it must have the inputs'
    # partition count (see docs/service.md, "Budgets across instances").
    for t in job-submission job-completion price-tick budget-allocation spot-signal; do
        _kafka_create_topic "$prefix$t" "$KAFKA_PARTITIONS"
        _kafka_create_topic "$prefix$t.dlq" 1
    done
    for t in scaling-command preemption-command prescale.budget-spend; do
        _kafka_create_topic "$prefix$t" "$KAFKA_PARTITIONS"
    done
    _kafka_create_topic "${prefix}prescale.budget-spend.dlq" 1
}

kafka_start() {
    kafka_install
    mkdir -p "$KAFKA_DIR"
    if [[ -f "$KAFKA_DIR/tansu.pid" ]] && kill -0 "$(cat "$KAFKA_DIR/tansu.pid")" 2>/dev/null; then
        _kafka_log "already running (pid $(cat "$KAFKA_DIR/tansu.pid")) on $KAFKA_URL"
        kafka_wait
        kafka_topics ""
        export PRESCALE_KAFKA_BROKERS="127.0.0.1:$KAFKA_PORT"
        return 0
    fi
    local engine
    case "$KAFKA_STORAGE" in
        memory) engine="memory://tansu/" ;;
        # tansu resolves sqlite://NAME relative to its working directory, so
        # the broker runs inside the state dir and keeps tansu.db there.
        file | sqlite) engine="sqlite://tansu.db" ;;
        *) _kafka_log "PRESCALE_KAFKA_STORAGE must be memory or file, not $KAFKA_STORAGE"; return 2 ;;
    esac
    (
        cd "$KAFKA_DIR"
        # tansu reads CLUSTER_ID, LISTENER_URL, STORAGE_ENGINE... from the
        # environment; flags below win, and env -u keeps stray values out.
        exec env -u STORAGE_ENGINE -u LISTENER_URL -u ADVERTISED_LISTENER_URL -u SCHEMA_REGISTRY \
            "$KAFKA_TANSU" broker --cluster-id prescale \
            --listener-url "$KAFKA_URL" --advertised-listener-url "$KAFKA_URL" \
            --storage-engine "$engine" >>"$KAFKA_DIR/tansu.log" 2>&1
    ) &
    echo $! >"$KAFKA_DIR/tansu.pid"
    disown || true
    _kafka_log "started tansu (pid $(cat "$KAFKA_DIR/tansu.pid"), storage $engine) on $KAFKA_URL; log $KAFKA_DIR/tansu.log"
    kafka_wait
    kafka_topics ""
    export PRESCALE_KAFKA_BROKERS="127.0.0.1:$KAFKA_PORT"
    _kafka_log "ready: PRESCALE_KAFKA_BROKERS=127.0.0.1:$KAFKA_PORT"
}

kafka_stop() {
    if [[ ! -f "$KAFKA_DIR/tansu.pid" ]]; then
        _kafka_log "no broker pid file in $KAFKA_DIR"
        return 0
    fi
    local pid
    pid="$(cat "$KAFKA_DIR/tansu.pid")"
    if kill -0 "$pid" 2>/dev/null; then
        kill "$pid"
        for _ in $(seq 1 50); do
            kill -0 "$pid" 2>/dev/null || break
            sleep 0.1
        done
        if kill -0 "$pid" 2>/dev/null; then
            kill -9 "$pid" || true
        fi
        _kafka_log "stopped tansu (pid $pid)"
    fi
    rm -f "$KAFKA_DIR/tansu.pid"
}

# Executed (not sourced): dispatch the sub-command.
if [[ "${BASH_SOURCE[0]}" == "$0" ]]; then
    set -euo pipefail
    case "${1:-}" in
        install) kafka_install ;;
        start) kafka_start ;;
        stop) kafka_stop ;;
        wait) kafka_wait ;;
        topics) kafka_topics "${2:-}" ;;
        status) kafka_answers ;;
        env) echo "export PRESCALE_KAFKA_BROKERS=127.0.0.1:$KAFKA_PORT" ;;
        *)
            sed -n '2,25p' "$0" >&2
            exit 2
            ;;
    esac
fi
