#!/usr/bin/env bash
# Test time-series server for prescale: installs (if missing), starts, waits
# for, and stops a real VictoriaMetrics on loopback. VictoriaMetrics accepts
# the InfluxDB v2 write API, so the `influxdb2` crate writes to it unchanged;
# no InfluxDB 2 server is installable on Debian (see docs/telemetry.md).
#
# Usage as a command:
#   scripts/tsdb.sh start     # install if missing, start, wait for /health
#   scripts/tsdb.sh stop      # stop the server started from the same state dir
#   scripts/tsdb.sh status    # exit 0 when /health answers
#   scripts/tsdb.sh env       # print `export PRESCALE_TSDB_URL=...`
#   scripts/tsdb.sh run CMD…  # start, run CMD with PRESCALE_TSDB_URL set, stop
# Usage from another script: `source scripts/tsdb.sh; tsdb_start; …; tsdb_stop`.
#
# Environment (all optional):
#   PRESCALE_TSDB_PORT     loopback port (default 8428)
#   PRESCALE_TSDB_DIR      state dir: pid, log, data (default /tmp/prescale-tsdb-$PORT)
#   PRESCALE_TSDB_WAIT_S   how long to wait for /health (default 30)
#   PRESCALE_SKIP_INSTALL  set to skip apt-get

TSDB_PORT="${PRESCALE_TSDB_PORT:-8428}"
TSDB_DIR="${PRESCALE_TSDB_DIR:-/tmp/prescale-tsdb-$TSDB_PORT}"
TSDB_WAIT_S="${PRESCALE_TSDB_WAIT_S:-30}"
TSDB_URL="http://127.0.0.1:$TSDB_PORT"

tsdb_log() { echo "tsdb.sh: $*" >&2; }

tsdb_install() {
    command -v victoria-metrics >/dev/null 2>&1 && return 0
    if [[ -n "${PRESCALE_SKIP_INSTALL:-}" ]]; then
        tsdb_log "victoria-metrics is missing and PRESCALE_SKIP_INSTALL is set"
        return 1
    fi
    tsdb_log "installing Debian package victoria-metrics"
    local sudo=""
    [[ "$(id -u)" != 0 ]] && sudo="sudo"
    $sudo apt-get update -qq && DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq victoria-metrics >/dev/null
}

tsdb_status() {
    curl -sf --max-time 2 "$TSDB_URL/health" >/dev/null 2>&1
}

tsdb_start() {
    tsdb_install || return 1
    export PRESCALE_TSDB_URL="$TSDB_URL"
    if tsdb_status; then
        tsdb_log "a server already answers on $TSDB_URL; using it"
        return 0
    fi
    mkdir -p "$TSDB_DIR"
    rm -rf "$TSDB_DIR/data"
    # -search.latencyOffset=0s: points are searchable as soon as they are
    # flushed (default hides the last 30 s, which would make read-back tests slow).
    victoria-metrics \
        -storageDataPath="$TSDB_DIR/data" \
        -httpListenAddr="127.0.0.1:$TSDB_PORT" \
        -search.latencyOffset=0s \
        -retentionPeriod=100y \
        >"$TSDB_DIR/victoria-metrics.log" 2>&1 &
    echo $! >"$TSDB_DIR/victoria-metrics.pid"
    local deadline=$((SECONDS + TSDB_WAIT_S))
    until tsdb_status; do
        if ! kill -0 "$(cat "$TSDB_DIR/victoria-metrics.pid")" 2>/dev/null; then
            tsdb_log "victoria-metrics exited; last log lines:"
            tail -20 "$TSDB_DIR/victoria-metrics.log" >&2 || true
            return 1
        fi
        if ((SECONDS >= deadline)); then
            tsdb_log "no /health answer on $TSDB_URL within ${TSDB_WAIT_S}s"
            return 1
        fi
        sleep 0.2
    done
    tsdb_log "victoria-metrics answering on $TSDB_URL (pid $(cat "$TSDB_DIR/victoria-metrics.pid"))"
}

tsdb_stop() {
    local pidfile="$TSDB_DIR/victoria-metrics.pid"
    [[ -f "$pidfile" ]] || return 0
    local pid
    pid="$(cat "$pidfile")"
    if kill -0 "$pid" 2>/dev/null; then
        kill "$pid" 2>/dev/null || true
        for _ in $(seq 1 50); do
            kill -0 "$pid" 2>/dev/null || break
            sleep 0.1
        done
        kill -0 "$pid" 2>/dev/null && kill -9 "$pid" 2>/dev/null
    fi
    rm -f "$pidfile"
    rm -rf "$TSDB_DIR/data"
}

tsdb_main() {
    set -euo pipefail
    case "${1:-}" in
        start) tsdb_start ;;
        stop) tsdb_stop ;;
        status) tsdb_status ;;
        install) tsdb_install ;;
        env) echo "export PRESCALE_TSDB_URL=$TSDB_URL" ;;
        run)
            shift
            tsdb_start
            trap tsdb_stop EXIT
            PRESCALE_TSDB_URL="$TSDB_URL" "$@"
            ;;
        *)
            sed -n '2,20p' "${BASH_SOURCE[0]}" >&2
            return 2
            ;;
    esac
}

if [[ "${BASH_SOURCE[0]}" == "$0" ]]; then
    tsdb_main "$@"
fi
