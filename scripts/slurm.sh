#!/usr/bin/env bash
# Test Slurm cluster for prescale: a REAL single-host Slurm 22.05 cluster
# (Debian's slurmctld, slurmd, munge) with one static node and N elastic
# "cloud" nodes that Slurm's power saving resumes and suspends. Each cloud node
# is a `slurmd -N cloudX` on its own port, started by the cluster's
# ResumeProgram after PRESCALE_SLURM_BOOT_S seconds (standing in for a VM
# boot) and stopped by its SuspendProgram.
#
# Run it, or source it and call slurm_install / slurm_start / slurm_stop /
# slurm_wait / slurm_env (slurm_start exports SLURM_CONF and friends).
#
# Usage:
#   scripts/slurm.sh install     # apt-get the Debian packages when missing
#   scripts/slurm.sh start       # install if missing, write config, start, wait
#   scripts/slurm.sh stop        # stop every daemon of this state dir (no orphans)
#   scripts/slurm.sh status      # exit 0 when slurmctld answers
#   scripts/slurm.sh env         # print the exports clients need (SLURM_CONF, ...)
#
# Environment (all optional):
#   PRESCALE_SLURM_PORT          SlurmctldPort; the static node's slurmd uses +1 and
#                                cloud node i uses +1+i (default 16817)
#   PRESCALE_SLURM_DIR           state dir: config, logs, pids, spools
#                                (default /tmp/prescale-slurm-$PORT)
#   PRESCALE_SLURM_CLOUD_NODES   number of elastic nodes cloud[1-N] (default 4)
#   PRESCALE_SLURM_CPUS          CPUs per node, static and cloud (default 2)
#   PRESCALE_SLURM_MEMORY_MB     RealMemory per node (default 4096)
#   PRESCALE_SLURM_BOOT_S        seconds a resumed cloud node takes to "boot" (default 5)
#   PRESCALE_SLURM_SUSPEND_TIME  Slurm's idle suspend for the cloud partition: seconds or
#                                INFINITE (default 60; use INFINITE when prescale owns
#                                power-down, see docs/slurm.md)
#   PRESCALE_SLURM_RESUME_TIMEOUT seconds before a node that did not boot is marked DOWN
#                                (default 60)
#   PRESCALE_SLURM_WAIT_S        how long start waits for the cluster (default 30)
#   PRESCALE_SKIP_INSTALL        set to skip apt-get
#
# Files in the state dir that tests and the ingester use:
#   slurm.conf       the config (SLURM_CONF)
#   jobcomp.spool    one JSON line per finished job, written by Slurm's
#                    jobcomp/script hook (jobcomp.sh): what `prescale ingest
#                    slurm --spool` tails
#   fail-boot        node names (one a line) whose "VM" never boots: the
#                    ResumeProgram skips them, so Slurm marks them DOWN after
#                    ResumeTimeout (tests of a failed boot)
#   power.log        one line per resume / suspend with the time

SLURM_PORT="${PRESCALE_SLURM_PORT:-16817}"
SLURM_DIR="${PRESCALE_SLURM_DIR:-/tmp/prescale-slurm-$SLURM_PORT}"
SLURM_NCLOUD="${PRESCALE_SLURM_CLOUD_NODES:-4}"
SLURM_CPUS="${PRESCALE_SLURM_CPUS:-2}"
SLURM_MEM="${PRESCALE_SLURM_MEMORY_MB:-4096}"
SLURM_BOOT_S="${PRESCALE_SLURM_BOOT_S:-5}"
SLURM_SUSPEND_TIME="${PRESCALE_SLURM_SUSPEND_TIME:-60}"
SLURM_RESUME_TIMEOUT="${PRESCALE_SLURM_RESUME_TIMEOUT:-60}"
SLURM_WAIT_S="${PRESCALE_SLURM_WAIT_S:-30}"

_slurm_log() { echo "slurm.sh: $*" >&2; }

slurm_install() {
    local need=() c
    for c in slurmctld slurmd munged tini squeue; do
        command -v "$c" >/dev/null 2>&1 && continue
        case "$c" in
            munged) need+=(munge) ;;
            squeue) need+=(slurm-client) ;;
            *) need+=("$c") ;;
        esac
    done
    [[ ${#need[@]} -eq 0 ]] && return 0
    if [[ -n "${PRESCALE_SKIP_INSTALL:-}" ]]; then
        _slurm_log "missing ${need[*]} and PRESCALE_SKIP_INSTALL is set"
        return 1
    fi
    _slurm_log "installing Debian packages ${need[*]}"
    local sudo=""
    [[ "$(id -u)" != 0 ]] && sudo="sudo"
    $sudo apt-get update -qq &&
        DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends \
            slurmctld slurmd munge slurm-client tini >/dev/null
}

slurm_env() {
    echo "export SLURM_CONF=$SLURM_DIR/slurm.conf"
    echo "export PRESCALE_SLURM_DIR=$SLURM_DIR"
    echo "export PRESCALE_SLURM_SPOOL=$SLURM_DIR/jobcomp.spool"
}

_slurm_export() {
    export SLURM_CONF="$SLURM_DIR/slurm.conf"
    export PRESCALE_SLURM_DIR="$SLURM_DIR"
    export PRESCALE_SLURM_SPOOL="$SLURM_DIR/jobcomp.spool"
}

slurm_answers() {
    SLURM_CONF="$SLURM_DIR/slurm.conf" timeout 5 scontrol ping 2>/dev/null | grep -q "is UP"
}

# The node power scripts. Slurm calls them with a hostlist expression
# ("cloud[1-3]"); they must return quickly, so the "boot" runs detached.
_slurm_write_power_scripts() {
    cat >"$SLURM_DIR/resume.sh" <<EOF
#!/usr/bin/env bash
# ResumeProgram: boot each node after $SLURM_BOOT_S s, as a VM would.
export SLURM_CONF="$SLURM_DIR/slurm.conf"
D="$SLURM_DIR"
for n in \$(scontrol show hostnames "\$1"); do
    echo "\$(date +%s.%N) resume \$n" >>"\$D/power.log"
    if grep -qx "\$n" "\$D/fail-boot" 2>/dev/null; then
        echo "\$(date +%s.%N) boot-fail \$n" >>"\$D/power.log"
        continue
    fi
    # slurmctld blocks signals in its children: reset them, or slurmd ignores
    # SIGTERM; -b tells slurmctld the node has just booted (else it waits for
    # a boot until ResumeTimeout). The boot's pid file stays: exec keeps the
    # pid, so it names the slurmd too until slurmd writes its own, and a
    # stop that comes in between still finds it (removing it before the
    # exec left a slurmd running on the cluster's port after a stop).
    env --default-signal setsid bash -c "echo \\\$\\\$ >\$D/boot-\$n.pid; sleep $SLURM_BOOT_S; exec slurmd -b -D -N \$n -f \$SLURM_CONF >>\$D/slurmd-\$n.out 2>&1" </dev/null >/dev/null 2>&1 &
done
exit 0
EOF
    cat >"$SLURM_DIR/suspend.sh" <<EOF
#!/usr/bin/env bash
# SuspendProgram: stop each node's slurmd (and a boot still under way).
export SLURM_CONF="$SLURM_DIR/slurm.conf"
D="$SLURM_DIR"
for n in \$(scontrol show hostnames "\$1"); do
    echo "\$(date +%s.%N) suspend \$n" >>"\$D/power.log"
    for f in "\$D/boot-\$n.pid" "\$D/slurmd-\$n.pid"; do
        [[ -f "\$f" ]] && kill "\$(cat "\$f")" 2>/dev/null
        rm -f "\$f"
    done
done
exit 0
EOF
    # jobcomp/script: one JSON line per finished job, appended in one write
    # (O_APPEND, well under PIPE_BUF) so concurrent hooks do not interleave.
    cat >"$SLURM_DIR/jobcomp.sh" <<'EOF'
#!/usr/bin/env bash
# Slurm's JobCompLoc: record the finished job's environment for the ingester.
js() { local v="${1//\\/\\\\}"; v="${v//\"/\\\"}"; v="${v//[$'\t\r\n']/ }"; printf '"%s"' "$v"; }
line="{"
sep=""
for k in JOBID JOBSTATE PARTITION PROCS NODECNT NODES SUBMIT START END EXITCODE DERIVED_EC \
         ACCOUNT USER USERNAME UID JOBNAME QOS TIMELIMIT WORK_DIR BATCH ARRAYJOBID ARRAYTASKID; do
    [[ -v $k ]] || continue
    line+="$sep\"$k\":$(js "${!k}")"
    sep=","
done
line+="}"
EOF
    echo "printf '%s\\n' \"\$line\" >>\"$SLURM_DIR/jobcomp.spool\"" >>"$SLURM_DIR/jobcomp.sh"
    chmod +x "$SLURM_DIR/resume.sh" "$SLURM_DIR/suspend.sh" "$SLURM_DIR/jobcomp.sh"
}

_slurm_write_conf() {
    local host
    host="$(hostname -s)"
    local last_cloud=$((SLURM_NCLOUD)) global_suspend="$SLURM_SUSPEND_TIME"
    [[ "$global_suspend" =~ ^[0-9]+$ ]] || global_suspend=3600
    {
        cat <<EOF
# Written by scripts/slurm.sh: a single-host test cluster. Do not edit.
ClusterName=prescale
SlurmctldHost=$host(127.0.0.1)
SlurmctldPort=$SLURM_PORT
SlurmdPort=$((SLURM_PORT + 1))
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket=$SLURM_DIR/munge.socket
StateSaveLocation=$SLURM_DIR/state
SlurmdSpoolDir=$SLURM_DIR/spool-%n
SlurmctldPidFile=$SLURM_DIR/slurmctld.pid
SlurmdPidFile=$SLURM_DIR/slurmd-%n.pid
SlurmctldLogFile=$SLURM_DIR/slurmctld.log
SlurmdLogFile=$SLURM_DIR/slurmd-%n.log
SlurmctldDebug=info
SlurmdDebug=info
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
SlurmdParameters=config_overrides
ReturnToService=2
MpiDefault=none
SwitchType=switch/none
MinJobAge=600
JobCompType=jobcomp/script
JobCompLoc=$SLURM_DIR/jobcomp.sh
# Cloud nodes are hidden from sinfo / scontrol without this.
PrivateData=cloud
# Power saving: Slurm resumes a cloud node when a job needs it (reactive) and
# suspends it after SuspendTime idle seconds.
ResumeProgram=$SLURM_DIR/resume.sh
SuspendProgram=$SLURM_DIR/suspend.sh
ResumeTimeout=$SLURM_RESUME_TIMEOUT
SuspendTimeout=10
# A global INFINITE would turn power saving off altogether (POWER_UP is then
# refused); the partitions carry their own SuspendTime instead.
SuspendTime=$global_suspend
ResumeRate=0
SuspendRate=0
SlurmctldParameters=idle_on_node_suspend
TreeWidth=65533
NodeName=static1 NodeAddr=127.0.0.1 NodeHostname=$host Port=$((SLURM_PORT + 1)) CPUs=$SLURM_CPUS RealMemory=$SLURM_MEM State=UNKNOWN
EOF
        local i
        for i in $(seq 1 "$last_cloud"); do
            echo "NodeName=cloud$i NodeAddr=127.0.0.1 NodeHostname=$host Port=$((SLURM_PORT + 1 + i)) CPUs=$SLURM_CPUS RealMemory=$SLURM_MEM Feature=cloud State=CLOUD"
        done
        echo "PartitionName=static Nodes=static1 MaxTime=INFINITE State=UP SuspendTime=INFINITE"
        echo "PartitionName=cloud Nodes=cloud[1-$last_cloud] Default=YES MaxTime=INFINITE State=UP SuspendTime=$SLURM_SUSPEND_TIME"
    } >"$SLURM_DIR/slurm.conf"
}

_slurm_pid_alive() { [[ -f "$1" ]] && kill -0 "$(cat "$1")" 2>/dev/null; }

slurm_wait() {
    local deadline=$((SECONDS + SLURM_WAIT_S))
    until slurm_answers && SLURM_CONF="$SLURM_DIR/slurm.conf" sinfo -h -n static1 -o '%T' 2>/dev/null | grep -qE '^(idle|mixed|allocated)'; do
        if ! _slurm_pid_alive "$SLURM_DIR/tini.pid"; then
            _slurm_log "slurmctld exited; last log lines:"
            tail -20 "$SLURM_DIR/slurmctld.log" "$SLURM_DIR/slurmctld.out" >&2 2>/dev/null || true
            return 1
        fi
        if ((SECONDS >= deadline)); then
            _slurm_log "cluster in $SLURM_DIR not ready within ${SLURM_WAIT_S}s"
            tail -20 "$SLURM_DIR/slurmctld.log" >&2 2>/dev/null || true
            return 1
        fi
        sleep 0.2
    done
}

slurm_start() {
    slurm_install || return 1
    if _slurm_pid_alive "$SLURM_DIR/tini.pid"; then
        _slurm_log "already running (pid $(cat "$SLURM_DIR/tini.pid")) in $SLURM_DIR"
        _slurm_export
        slurm_wait
        return
    fi
    mkdir -p "$SLURM_DIR/state"
    chmod 0755 "$SLURM_DIR"
    : >>"$SLURM_DIR/jobcomp.spool"
    _slurm_write_power_scripts
    _slurm_write_conf
    _slurm_export
    # munge: a private key and socket, so a host's own munged is untouched.
    [[ -f "$SLURM_DIR/munge.key" ]] || {
        mungekey -c -k "$SLURM_DIR/munge.key" 2>/dev/null ||
            dd if=/dev/urandom of="$SLURM_DIR/munge.key" bs=1024 count=1 2>/dev/null
        chmod 0400 "$SLURM_DIR/munge.key"
    }
    munged --force --socket="$SLURM_DIR/munge.socket" --key-file="$SLURM_DIR/munge.key" \
        --pid-file="$SLURM_DIR/munged.pid" --log-file="$SLURM_DIR/munged.log" \
        --seed-file="$SLURM_DIR/munged.seed" || {
        _slurm_log "munged failed to start: $(tail -3 "$SLURM_DIR/munged.log" 2>/dev/null)"
        return 1
    }
    # slurmctld under tini -s: tini is a subreaper, so the cloud slurmds that
    # the ResumeProgram starts are reaped at once when they exit.
    (exec env --default-signal setsid tini -s -- slurmctld -D -i -f "$SLURM_CONF" \
        >>"$SLURM_DIR/slurmctld.out" 2>&1 </dev/null) &
    echo $! >"$SLURM_DIR/tini.pid"
    disown 2>/dev/null || true
    (exec env --default-signal setsid slurmd -D -N static1 -f "$SLURM_CONF" \
        >>"$SLURM_DIR/slurmd-static1.out" 2>&1 </dev/null) &
    echo $! >"$SLURM_DIR/slurmd-static.pid"
    disown 2>/dev/null || true
    _slurm_log "started slurmctld (port $SLURM_PORT) and slurmd static1; cloud[1-$SLURM_NCLOUD] boot in ${SLURM_BOOT_S}s; state $SLURM_DIR"
    slurm_wait || return 1
    _slurm_log "ready: SLURM_CONF=$SLURM_CONF"
}

_slurm_kill_pidfile() {
    local f="$1" pid
    [[ -f "$f" ]] || return 0
    pid="$(cat "$f")"
    if kill -0 "$pid" 2>/dev/null; then
        kill "$pid" 2>/dev/null
        for _ in $(seq 1 50); do
            kill -0 "$pid" 2>/dev/null || break
            sleep 0.1
        done
        kill -9 "$pid" 2>/dev/null || true
    fi
    rm -f "$f"
}

# Job steps of this cluster that are still alive: slurmstepd keeps
# this cluster's slurmd log open, which is how they are told apart
# from another cluster's on the same host.
_slurm_kill_steps() {
    local p
    for p in $(pgrep -x slurmstepd 2>/dev/null); do
        if ls -l "/proc/$p/fd" 2>/dev/null | grep -q "$SLURM_DIR/"; then
            pkill -TERM -P "$p" 2>/dev/null
            kill "$p" 2>/dev/null
        fi
    done
}

slurm_stop() {
    if [[ ! -d "$SLURM_DIR" ]]; then
        _slurm_log "no state dir $SLURM_DIR"
        return 0
    fi
    local f
    # Jobs first, while slurmd is there to end their steps: a job step
    # (slurmstepd and the job's processes) outlives its slurmd otherwise.
    if slurm_answers; then
        SLURM_CONF="$SLURM_DIR/slurm.conf" scancel --full --quiet --user=root 2>/dev/null || true
        SLURM_CONF="$SLURM_DIR/slurm.conf" scancel --quiet --user=root 2>/dev/null || true
        for _ in $(seq 1 50); do
            [[ -z "$(SLURM_CONF="$SLURM_DIR/slurm.conf" squeue -h -t R,CF,CG,S -o %i 2>/dev/null)" ]] && break
            sleep 0.1
        done
    fi
    _slurm_kill_steps
    # Controller first (so it starts no node while the nodes go), then every
    # node daemon and pending boot, then munge.
    _slurm_kill_pidfile "$SLURM_DIR/tini.pid"
    _slurm_kill_pidfile "$SLURM_DIR/slurmctld.pid"
    for f in "$SLURM_DIR"/boot-*.pid "$SLURM_DIR"/slurmd-*.pid; do
        [[ -e "$f" ]] && _slurm_kill_pidfile "$f"
    done
    _slurm_kill_pidfile "$SLURM_DIR/slurmd-static.pid"
    if [[ -f "$SLURM_DIR/munged.pid" ]]; then
        munged --stop --socket="$SLURM_DIR/munge.socket" >/dev/null 2>&1 ||
            _slurm_kill_pidfile "$SLURM_DIR/munged.pid"
        rm -f "$SLURM_DIR/munged.pid"
    fi
    _slurm_log "stopped the cluster of $SLURM_DIR"
}

# Executed (not sourced): dispatch the sub-command.
if [[ "${BASH_SOURCE[0]}" == "$0" ]]; then
    set -euo pipefail
    case "${1:-}" in
        install) slurm_install ;;
        start) slurm_start ;;
        stop) slurm_stop ;;
        wait) slurm_wait ;;
        status) slurm_answers ;;
        env) slurm_env ;;
        *)
            sed -n '2,40p' "$0" >&2
            exit 2
            ;;
    esac
fi
