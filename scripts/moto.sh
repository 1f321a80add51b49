#!/usr/bin/env bash
# Test AWS endpoint for prescale: installs (if missing), starts, waits for and
# stops a real moto server (PyPI `moto[server]`) on loopback. moto speaks the
# AWS wire protocols, so the AWS SDK for Rust talks to it over real HTTP with
# dummy credentials; scripts/moto_server.py applies the small documented patch
# the Batch tests need (moto drops UpdateComputeEnvironment's vCPU fields).
#
# Run it, or source it and call moto_install / moto_start / moto_stop
# (moto_start exports PRESCALE_AWS_ENDPOINT and dummy AWS credentials).
#
# Usage:
#   scripts/moto.sh install    # create the venv and pip install moto[server] when missing
#   scripts/moto.sh start      # install if missing, start, wait until it answers
#   scripts/moto.sh stop       # stop the server started from the same state dir
#   scripts/moto.sh status     # exit 0 when the server answers
#   scripts/moto.sh env        # print the exports a shell needs to use it
#
# Environment (all optional):
#   PRESCALE_TOOLS        where tools are installed (default ~/.cache/prescale-tools)
#   PRESCALE_MOTO_PORT    loopback port (default 15000; not moto's 5000)
#   PRESCALE_MOTO_DIR     state dir: pid, log (default /tmp/prescale-moto-$PORT)
#   PRESCALE_MOTO_VERSION moto version pip installs (default 5.2.6)
#   PRESCALE_MOTO_WAIT_S  how long `start` waits (default 60)
#
# Every request is recorded by moto's recorder (GET
# $PRESCALE_AWS_ENDPOINT/moto-api/recorder/download-recording), which the
# actuator tests read to check the order of update calls.

MOTO_TOOLS="${PRESCALE_TOOLS:-$HOME/.cache/prescale-tools}"
MOTO_VENV="$MOTO_TOOLS/moto-venv"
MOTO_VERSION="${PRESCALE_MOTO_VERSION:-5.2.6}"
MOTO_PORT="${PRESCALE_MOTO_PORT:-15000}"
MOTO_DIR="${PRESCALE_MOTO_DIR:-/tmp/prescale-moto-$MOTO_PORT}"
MOTO_WAIT_S="${PRESCALE_MOTO_WAIT_S:-60}"
MOTO_URL="http://127.0.0.1:$MOTO_PORT"
MOTO_SCRIPTS="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"

_moto_log() { echo "moto.sh: $*" >&2; }

moto_install() {
    if [[ -x "$MOTO_VENV/bin/python" ]] && "$MOTO_VENV/bin/python" -c "import moto.server, flask" 2>/dev/null; then
        return 0
    fi
    _moto_log "installing moto[server]==$MOTO_VERSION into $MOTO_VENV"
    mkdir -p "$MOTO_TOOLS"
    python3 -m venv "$MOTO_VENV"
    "$MOTO_VENV/bin/pip" install -q "moto[server]==$MOTO_VERSION"
}

moto_answers() {
    curl -sf --max-time 2 "$MOTO_URL/moto-api/" >/dev/null 2>&1
}

_moto_exports() {
    export PRESCALE_AWS_ENDPOINT="$MOTO_URL"
    # Dummy credentials and a region for the SDK's standard chain; moto
    # accepts any. Existing values are kept (a user's profile is untouched).
    export AWS_ACCESS_KEY_ID="${AWS_ACCESS_KEY_ID:-testing}"
    export AWS_SECRET_ACCESS_KEY="${AWS_SECRET_ACCESS_KEY:-testing}"
    export AWS_REGION="${AWS_REGION:-us-east-1}"
}

moto_start() {
    moto_install || return 1
    mkdir -p "$MOTO_DIR"
    if [[ -f "$MOTO_DIR/moto.pid" ]] && kill -0 "$(cat "$MOTO_DIR/moto.pid")" 2>/dev/null && moto_answers; then
        _moto_log "already running (pid $(cat "$MOTO_DIR/moto.pid")) on $MOTO_URL"
        _moto_exports
        return 0
    fi
    MOTO_ENABLE_RECORDING=1 MOTO_RECORDER_FILEPATH="$MOTO_DIR/recording.jsonl" \
        "$MOTO_VENV/bin/python" "$MOTO_SCRIPTS/moto_server.py" -H 127.0.0.1 -p "$MOTO_PORT" \
        >>"$MOTO_DIR/moto.log" 2>&1 &
    echo $! >"$MOTO_DIR/moto.pid"
    disown || true
    local deadline=$((SECONDS + MOTO_WAIT_S))
    until moto_answers; do
        if ! kill -0 "$(cat "$MOTO_DIR/moto.pid")" 2>/dev/null; then
            _moto_log "moto exited; last log lines:"
            tail -20 "$MOTO_DIR/moto.log" >&2 || true
            return 1
        fi
        if ((SECONDS >= deadline)); then
            _moto_log "moto on $MOTO_URL did not answer within ${MOTO_WAIT_S}s"
            return 1
        fi
        sleep 0.2
    done
    _moto_exports
    _moto_log "ready: PRESCALE_AWS_ENDPOINT=$MOTO_URL (pid $(cat "$MOTO_DIR/moto.pid"), log $MOTO_DIR/moto.log)"
}

moto_stop() {
    local pidfile="$MOTO_DIR/moto.pid"
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
        _moto_log "stopped moto (pid $pid)"
    fi
    rm -f "$pidfile" "$MOTO_DIR/recording.jsonl"
}

if [[ "${BASH_SOURCE[0]}" == "$0" ]]; then
    set -euo pipefail
    case "${1:-}" in
        install) moto_install ;;
        start) moto_start ;;
        stop) moto_stop ;;
        status) moto_answers ;;
        env)
            _moto_exports
            echo "export PRESCALE_AWS_ENDPOINT=$PRESCALE_AWS_ENDPOINT AWS_ACCESS_KEY_ID=$AWS_ACCESS_KEY_ID AWS_SECRET_ACCESS_KEY=$AWS_SECRET_ACCESS_KEY AWS_REGION=$AWS_REGION"
            ;;
        *)
            sed -n '2,26p' "$0" >&2
            exit 2
            ;;
    esac
fi
