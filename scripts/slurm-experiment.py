#!/usr/bin/env python3
"""Replay slices of a real batch trace into a REAL Slurm cluster, once with
Slurm's own (reactive) power saving and once with prescale ingesting and
actuating, and report queue waits and powered node-seconds per run, beside
`prescale backtest` on the same slice.

    python3 scripts/slurm-experiment.py --select 2 --repeats 3 --json out.json --markdown out.md

Time compression: every trace time is divided by --factor F on the cluster:
inter-arrival times, job lengths, the node boot delay (--boot-s) and Slurm's
SuspendTime (--suspend-s). prescale's ingester multiplies the times it
reports back by F (`--time-scale`), so the engine sees the trace's own time
scale. Slurm's own fixed delays are NOT compressed (its ~30 s periodic check
that moves a job on a freshly booted node from CONFIGURING to RUNNING), so
waits are reported in cluster (wall) seconds; the trace-scale figure is that
times F.

Sizes: a job of P trace cores asks for ceil(P / S) Slurm CPUs (-n), with S
(--core-scale) chosen per slice so the slice's peak demand fits the cloud
partition; runtimes are capped at --max-runtime-h (trace hours) so a run ends.

Per mode the script starts its own cluster (scripts/slurm.sh), and for
prescale its own topics on the broker in PRESCALE_KAFKA_BROKERS (start one
with scripts/kafka.sh), `prescale run`, `prescale ingest slurm` and
`prescale actuate slurm`. Needs root (slurmctld / munge) and the Debian
packages scripts/slurm.sh installs. See docs/slurm.md, "The experiment".
"""

import argparse
import gzip
import json
import math
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def read_swf(path):
    op = gzip.open if path.endswith(".gz") else open
    jobs = []
    start = 0
    with op(path, "rt") as f:
        for line in f:
            if line.startswith(";"):
                k, _, v = line[1:].partition(":")
                if k.strip() == "UnixStartTime":
                    start = int(v.strip())
                continue
            if not line.strip():
                continue
            r = line.split()
            submit, run, procs, req_procs = int(r[1]), int(r[3]), int(r[4]), int(r[7])
            procs = procs if procs > 0 else req_procs
            if run <= 0 or procs <= 0:
                continue  # cancelled before start / no size: nothing to replay
            jobs.append({"id": r[0], "submit": submit, "run": run, "procs": procs, "line": r})
    jobs.sort(key=lambda j: (j["submit"], int(j["id"])))
    return jobs, start


def slice_jobs(jobs, start_h, hours, max_run_s, lead_in_s=0, history_s=0):
    """The slice [t0, t0 + hours) plus what precedes it: the lead-in (the
    last `lead_in_s` before t0, replayed for real in every mode so the
    cluster is not artificially cold at t0) and the history (the
    `history_s` before the lead-in, given to prescale only as finished
    jobs, what its ingester would have seen had it been running). Offsets
    are trace seconds from t0 (negative before it)."""
    t0 = jobs[0]["submit"] + int(start_h * 3600)
    t1 = t0 + int(hours * 3600)
    lead0 = t0 - int(lead_in_s)
    hist0 = lead0 - int(history_s)
    out = {"history": [], "lead_in": [], "slice": []}
    for j in jobs:
        if hist0 <= j["submit"] < t1:
            part = "slice" if j["submit"] >= t0 else "lead_in" if j["submit"] >= lead0 else "history"
            out[part].append(dict(j, offset=j["submit"] - t0, run=min(j["run"], max_run_s)))
    return out, t0


def peak_demand(jobs):
    ev = []
    for j in jobs:
        ev.append((j["offset"], j["procs"]))
        ev.append((j["offset"] + j["run"], -j["procs"]))
    cur = peak = 0
    for _, d in sorted(ev, key=lambda e: (e[0], e[1])):
        cur += d
        peak = max(peak, cur)
    return peak


def core_scale(jobs, room):
    """The least S for which the slice as replayed (each job ceil(P / S)
    CPUs, so at least one) peaks at no more than `room` CPUs; None when no S
    does (too many jobs at once for the partition). Sizing on the replayed
    sizes, not on the trace's cores, keeps the partition from being full:
    waits then measure power saving, not a queue for CPUs."""
    s = max(1, math.ceil(peak_demand(jobs) / room))
    for _ in range(200):
        if peak_demand([dict(j, procs=math.ceil(j["procs"] / s)) for j in jobs]) <= room:
            return s
        s = max(s + 1, math.ceil(s * 1.1))
    return None


def write_slice_swf(jobs, t0, scale, path, unix_start):
    """The slice as the cluster runs it (scaled sizes, capped runtimes, one
    queue = one partition), for `prescale backtest`."""
    with open(path, "w") as f:
        f.write("; slice written by scripts/slurm-experiment.py\n")
        f.write(f"; UnixStartTime: {unix_start + t0}\n")
        for j in jobs:
            r = list(j["line"])
            cpus = math.ceil(j["procs"] / scale)
            r[1] = str(j["offset"])
            r[2] = "0"
            r[3] = str(j["run"])
            r[4] = str(cpus)
            r[7] = str(cpus)
            r[8] = str(max(int(r[8]) if int(r[8]) > 0 else 0, j["run"]))
            r[14] = "1"
            f.write(" ".join(r) + "\n")


def hostnames(expr):
    """Expand a Slurm hostlist ("cloud[1-3,5],static1") without a controller."""
    out = []
    for part in re.findall(r"[^,\[]+(?:\[[^\]]*\])?", expr):
        m = re.fullmatch(r"(.*)\[(.*)\]", part)
        if not m:
            out.append(part)
            continue
        for r in m.group(2).split(","):
            a, _, b = r.partition("-")
            for i in range(int(a), int(b or a) + 1):
                out.append(f"{m.group(1)}{str(i).zfill(len(a))}")
    return out


def boot_bound_jobs(recs, power_log):
    """Jobs that waited for a boot: one of the job's nodes was resumed
    after the job was submitted (Slurm placed it on a node it or prescale
    was still booting, so it ran only after the boot and, on 22.05, the
    CONFIGURING check). The rest found a booted node."""
    resumes = {}
    for line in open(power_log):
        ts, what, node = line.split()
        if what == "resume":
            resumes.setdefault(node, []).append(float(ts))
    n = 0
    for r in recs:
        if int(r["START"]) <= 0:
            continue
        sub, start = int(r["SUBMIT"]), int(r["START"])
        if any(sub - 1 <= t <= start for node in hostnames(r["NODES"]) for t in resumes.get(node, [])):
            n += 1
    return n


def pct(xs, q):
    if not xs:
        return None
    xs = sorted(xs)
    k = max(0, min(len(xs) - 1, math.ceil(q * len(xs)) - 1))
    return xs[k]


class Run:
    """One mode on one slice: a fresh cluster, the replay, the measurements."""

    def __init__(self, args, mode, jobs, scale, port, workdir, tag):
        self.a, self.mode, self.scale = args, mode, scale
        self.jobs, self.lead_in, self.history = jobs["slice"], jobs["lead_in"], jobs["history"]
        self.port, self.tag = port, tag
        self.dir = os.path.join(workdir, f"{tag}-{mode}")
        os.makedirs(self.dir, exist_ok=True)
        self.slurm_dir = os.path.join(self.dir, "slurm")
        F = args.factor
        self.env = dict(
            os.environ,
            PRESCALE_SLURM_PORT=str(port),
            PRESCALE_SLURM_DIR=self.slurm_dir,
            PRESCALE_SLURM_CLOUD_NODES=str(args.nodes),
            PRESCALE_SLURM_CPUS=str(args.cpus),
            PRESCALE_SLURM_BOOT_S=f"{args.boot_s / F:.3f}",
            PRESCALE_SLURM_SUSPEND_TIME=(
                str(max(1, round(args.suspend_s / F))) if mode == "reactive" else "INFINITE"
            ),
            PRESCALE_SLURM_RESUME_TIMEOUT=str(max(60, round(4 * args.boot_s / F))),
            SLURM_CONF=os.path.join(self.slurm_dir, "slurm.conf"),
        )
        self.procs = []

    def sh(self, *cmd, check=True):
        return subprocess.run(cmd, env=self.env, check=check, capture_output=True, text=True)

    def spawn(self, name, cmd):
        log = open(os.path.join(self.dir, f"{name}.log"), "w")
        p = subprocess.Popen(cmd, env=self.env, stdout=log, stderr=subprocess.STDOUT, cwd=self.dir)
        self.procs.append((name, p))
        return p

    def write_history(self, t0):
        """prescale's memory of the hours before the lead-in: finished jobs
        in the jobcomp spool, timed on the cluster's compressed clock (t0 =
        the cluster time of trace offset 0) and cut at the lead-in's start,
        so the ingester publishes them as it would have, had it been running.
        They never ran on this cluster and are not measured."""
        F = self.a.factor
        end_cap = t0 + min([j["offset"] for j in self.lead_in] + [0]) / F - 1
        spool = os.path.join(self.slurm_dir, "jobcomp.spool")
        with open(spool, "a") as f:
            for j in self.history:
                sub = round(t0 + j["offset"] / F)
                end = max(sub, min(round(sub + j["run"] / F), round(end_cap)))
                cpus = math.ceil(j["procs"] / self.scale)
                rec = {"JOBID": str(900000000 + int(j["id"])), "JOBSTATE": "COMPLETED",
                       "PARTITION": "cloud", "PROCS": str(cpus), "SUBMIT": str(sub),
                       "START": str(sub), "END": str(end), "JOBNAME": f"h{j['id']}"}
                f.write(json.dumps(rec) + "\n")

    def start_prescale(self, t0_ms):
        a, F = self.a, self.a.factor
        prefix = f"slurmx-{self.tag}-{os.getpid()}-{int(time.time())}."
        kafka = ["--brokers", a.brokers, "--topic-prefix", prefix, "-X", "fetch.wait.max.ms=10"]
        policy = os.path.join(self.dir, "policy.toml")
        with open(policy, "w") as f:
            f.write(a.policy_text)
        self.spawn(
            "run",
            [a.prescale, "run", *kafka, "--create-topics", "--group", prefix + "run",
             "--checkpoint-dir", os.path.join(self.dir, "ckpt"), "--policy", policy],
        )
        time.sleep(2)
        self.spawn(
            "ingest",
            [a.prescale, "ingest", "slurm", *kafka, "--spool",
             os.path.join(self.slurm_dir, "jobcomp.spool"), "--state",
             os.path.join(self.dir, "ingest.json"), "--poll-interval-ms", "500",
             "--partition", "cloud", "--time-scale", str(F), "--time-origin-ms", str(t0_ms)],
        )
        self.spawn(
            "actuate",
            [a.prescale, "actuate", "slurm", *kafka, "--environment", "cloud=cloud",
             "--ledger", os.path.join(self.dir, "actuate.ledger.json"),
             "--reconcile-interval-s", "5",
             # Never take down a node Slurm's SuspendTime would keep (see
             # docs/slurm.md): prescale only adds capacity ahead of need.
             "--idle-grace-s", str(max(1, round(a.suspend_s / F))) if a.idle_grace else "0"],
        )

    def replay(self, t0):
        """Submit the lead-in ("l" names) and the slice ("t" names, the only
        jobs measured) at cluster time t0 + offset / F."""
        F = self.a.factor
        ids = []
        for prefix, j in [("l", j) for j in self.lead_in] + [("t", j) for j in self.jobs]:
            due = t0 + j["offset"] / F
            now = time.time()
            if due > now:
                time.sleep(due - now)
            cpus = math.ceil(j["procs"] / self.scale)
            out = self.sh("sbatch", "--parsable", "-p", "cloud", "-n", str(cpus), "-o", "/dev/null",
                          "-J", f"{prefix}{j['id']}", "--wrap", f"sleep {j['run'] / F:.2f}")
            ids.append(out.stdout.strip().split(";")[0])
        return ids

    def wait_done(self, n, timeout):
        spool = os.path.join(self.slurm_dir, "jobcomp.spool")
        end = time.time() + timeout
        while time.time() < end:
            with open(spool) as f:
                if sum(1 for l in f if '"JOBNAME": "h' not in l and '"JOBNAME":"h' not in l) >= n:
                    return True
            time.sleep(1)
        return False

    def measure(self, t0):
        recs = [json.loads(l) for l in open(os.path.join(self.slurm_dir, "jobcomp.spool"))]
        recs = [r for r in recs if r.get("PARTITION") == "cloud"]
        # Only the slice's own jobs are measured (not the lead-in, not history).
        recs = [r for r in recs if r.get("JOBNAME", "").startswith("t")]
        waits = [int(r["START"]) - int(r["SUBMIT"]) for r in recs if int(r["START"]) > 0]
        t_end = max(int(r["END"]) for r in recs) if recs else time.time()
        busy = {}
        for r in recs:
            if int(r["START"]) <= 0:
                continue
            for n in hostnames(r["NODES"]):
                busy.setdefault(n, []).append((int(r["START"]), int(r["END"])))
        # Powered intervals per node from the power scripts' log.
        powered = {}
        on = {}
        failed = 0
        for line in open(os.path.join(self.slurm_dir, "power.log")):
            ts, what, node = line.split()
            ts = float(ts)
            if what == "resume":
                on.setdefault(node, ts)
            elif what == "suspend" and node in on:
                powered.setdefault(node, []).append((on.pop(node), ts))
            elif what == "boot-fail":
                failed += 1
        for node, ts in on.items():
            powered.setdefault(node, []).append((ts, t_end))
        clip = lambda s, e: max(0.0, min(e, t_end) - max(s, t0))
        powered_s = sum(clip(s, e) for iv in powered.values() for s, e in iv)
        busy_s = 0.0
        for node, iv in busy.items():
            iv.sort()
            cs, ce = None, None
            for s, e in iv:
                if cs is None or s > ce:
                    if cs is not None:
                        busy_s += clip(cs, ce)
                    cs, ce = s, e
                else:
                    ce = max(ce, e)
            if cs is not None:
                busy_s += clip(cs, ce)
        resumes = sum(1 for l in open(os.path.join(self.slurm_dir, "power.log")) if " resume " in l)
        boot_bound = boot_bound_jobs(recs, os.path.join(self.slurm_dir, "power.log"))
        return {
            "mode": self.mode,
            "jobs_submitted": len(self.jobs),
            "lead_in_jobs": len(self.lead_in),
            "history_jobs": len(self.history) if self.mode == "prescale" else 0,
            "jobs_completed": sum(1 for r in recs if r["JOBSTATE"] == "COMPLETED"),
            "wait_s": {"p50": pct(waits, 0.5), "p95": pct(waits, 0.95), "max": max(waits) if waits else None,
                       "mean": round(sum(waits) / len(waits), 2) if waits else None},
            "node_s": {"powered": round(powered_s, 1), "busy": round(busy_s, 1),
                       "idle": round(powered_s - busy_s, 1)},
            "node_resumes": resumes,
            "boot_bound_jobs": boot_bound,
            "boot_failures": failed,
            # Nodes slurmctld marked DOWN for not registering within
            # ResumeTimeout (a slurmd that could not start): such a run
            # measures a broken node, not power saving.
            "resume_timeouts": sum(1 for l in open(os.path.join(self.slurm_dir, "slurmctld.log"))
                                   if "not resumed by ResumeTimeout" in l),
            "window_s": round(t_end - t0, 1),
        }

    def stop(self):
        for name, p in reversed(self.procs):
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
                try:
                    p.wait(timeout=20)
                except subprocess.TimeoutExpired:
                    p.kill()
        subprocess.run(["bash", os.path.join(REPO, "scripts/slurm.sh"), "stop"], env=self.env,
                       capture_output=True)

    def check_aligned(self, earliest):
        """The first whole second at or after `earliest` that lies
        --check-phase-s after one of slurmctld's periodic checks (every
        --configuring-s from its boot). A job placed on a booting node waits
        for the next such check, so its wait depends on when in the 30 s
        cycle it was submitted: replays that started at different phases
        gave one mode waits up to a cycle shorter for the same jobs (7 s
        apart: the modes' start-up delays differed). Aligning every mode's
        trace clock to the same phase removes that bias."""
        out = self.sh("scontrol", "show", "config").stdout
        m = re.search(r"^BOOT_TIME\s*=\s*(\S+)", out, re.M)
        if not m:
            raise RuntimeError("scontrol show config: no BOOT_TIME")
        boot = time.mktime(time.strptime(m.group(1), "%Y-%m-%dT%H:%M:%S"))
        self.ctld_boot = boot
        cycle = self.a.configuring_s
        k = math.ceil((earliest - boot - self.a.check_phase_s) / cycle)
        return boot + k * cycle + self.a.check_phase_s

    def go(self):
        try:
            r = self.sh("bash", os.path.join(REPO, "scripts/slurm.sh"), "start", check=False)
            if r.returncode != 0:
                raise RuntimeError(f"slurm.sh start failed: {r.stderr[-2000:]}")
            F = self.a.factor
            # Cluster time of trace offset 0: after prescale's start-up and
            # the lead-in, at the same phase of slurmctld's periodic check
            # in every mode (whole seconds: the spool's times are).
            first = min([j["offset"] for j in self.lead_in] + [0])
            earliest = time.time() + (8 if self.mode == "prescale" else 1) - first / F
            t0 = self.check_aligned(earliest)
            if self.mode == "warm":
                # The bound without power saving: every cloud node up before
                # the lead-in and never suspended (SuspendTime=INFINITE).
                self.sh("scontrol", "update", f"NodeName=cloud[1-{self.a.nodes}]", "State=POWER_UP")
            if self.mode == "prescale":
                self.write_history(t0)
                self.start_prescale(int(t0 * 1000))
            ids = self.replay(t0)
            span = max(j["offset"] + j["run"] for j in self.jobs) / F
            ok = self.wait_done(len(ids), timeout=span + 300)
            res = self.measure(t0)
            res["all_finished"] = ok
            # Where trace offset 0 fell in slurmctld's check cycle.
            res["check_phase_s"] = round((t0 - self.ctld_boot) % self.a.configuring_s, 1)
            return res
        finally:
            self.stop()


def backtest(args, swf, workdir, tag, policies="reactive,predictive"):
    """`prescale backtest` on the slice as the cluster runs it, with the
    experiment's boot delay, SuspendTime (its idle timeout), partition size
    and prescale's policy file. The slice's SWF file has one queue, which the
    backtest names environment `queue-1`, so the policy's `[environments.cloud]`
    block (the partition's lead time and quantiles) is given to it under that
    name: otherwise the backtest would plan with the defaults alone."""
    out = os.path.join(workdir, f"{tag}-backtest.json")
    policy = os.path.join(workdir, "policy-backtest.toml")
    with open(policy, "w") as f:
        f.write(args.policy_text.replace("[environments.cloud]", "[environments.queue-1]"))
    cmd = [args.prescale, "backtest", "--trace", swf, "--policies", policies,
           "--boot-delay-s", str(int(args.boot_s)), "--idle-timeout-s", str(int(args.suspend_s)),
           "--max-vcpus", str(args.nodes * args.cpus), "--policy", policy, "--json", out]
    r = subprocess.run(cmd, capture_output=True, text=True)
    if r.returncode != 0:
        return {"error": r.stderr[-1500:]}
    return json.load(open(out))


def prepare_slice(a, jobs, unix_start, spec, workdir, tag):
    """The slice's jobs (with lead-in and history), its core scale and its
    SWF file for the backtest."""
    start_h, hours = (float(x) for x in spec.split(":"))
    parts, t0 = slice_jobs(jobs, start_h, hours, int(a.max_runtime_h * 3600),
                           a.lead_in_min * 60, a.history_h * 3600)
    if not parts["slice"]:
        return None
    scale = core_scale(parts["lead_in"] + parts["slice"], a.fill * a.nodes * a.cpus)
    if scale is None:
        return None
    swf = os.path.join(workdir, f"{tag}.swf")
    write_slice_swf(parts["slice"], t0, scale, swf, unix_start)
    return parts, scale, swf


def select_slices(a, jobs, unix_start, workdir):
    """The slice rule (`--select N`): the first N whole trace hours, in trace
    order, where Slurm's power saving matters and the replay is sound:
    (1) a burst — at least --burst-jobs submissions within 5 trace minutes —
    follows a quiet spell of at least SuspendTime with no submission, so
    nodes idle long enough to be suspended and demand comes back; (2) the
    hour starts after --history-h + the lead-in, so prescale has its full
    history; (3) at most --max-jobs jobs (one sbatch each: more and
    sbatch's own rate shapes the arrivals); (4) a core scale exists at which
    the replayed slice fits --fill of the partition (otherwise the waits
    are a queue for CPUs, in both modes). Chosen from the trace alone,
    before any run."""
    base = jobs[0]["submit"]
    subs = [j["submit"] - base for j in jobs]
    first_h = math.ceil(a.history_h + a.lead_in_min / 60)
    span_h = int(subs[-1] // 3600)
    chosen, seen = [], []
    for h in range(first_h, span_h):
        lo, hi = h * 3600, (h + 1) * 3600
        n = sum(1 for t in subs if lo <= t < hi)
        burst = any(
            lo <= t < hi and i > 0 and t - subs[i - 1] >= a.suspend_s
            and sum(1 for u in subs[i:i + a.burst_jobs] if u < t + 300) >= a.burst_jobs
            for i, t in enumerate(subs))
        if not burst or n > a.max_jobs:
            continue
        prep = prepare_slice(a, jobs, unix_start, f"{h}:1", workdir, f"rule{h}")
        seen.append({"slice": f"{h}:1", "jobs": n, "fits": prep is not None})
        if prep is not None:
            chosen.append(f"{h}:1")
            if len(chosen) >= a.select:
                break
    return chosen, seen


def stats(xs):
    xs = sorted(x for x in xs if x is not None)
    if not xs:
        return None
    n = len(xs)
    med = xs[n // 2] if n % 2 else (xs[n // 2 - 1] + xs[n // 2]) / 2
    return {"median": med, "min": xs[0], "max": xs[-1]}


def summarize(entry):
    """Median and spread per mode over the repeats, and prescale's ratios
    to reactive (of the medians): the issue's target is p95 ≤ 0.5× at
    powered node-seconds ≤ 1.3×."""
    out = {}
    for mode in sorted({r["mode"] for r in entry["runs"]}):
        rs = [r for r in entry["runs"] if r["mode"] == mode and "wait_s" in r]
        out[mode] = {"runs": len(rs), "failed_runs": sum(1 for r in entry["runs"] if r["mode"] == mode) - len(rs),
                     "wait_p50_s": stats([r["wait_s"]["p50"] for r in rs]),
                     "wait_p95_s": stats([r["wait_s"]["p95"] for r in rs]),
                     "wait_max_s": stats([r["wait_s"]["max"] for r in rs]),
                     "node_s_powered": stats([r["node_s"]["powered"] for r in rs]),
                     "node_s_busy": stats([r["node_s"]["busy"] for r in rs]),
                     "all_finished": all(r.get("all_finished") for r in rs)}
    med = lambda m, k: (out[m][k] or {}).get("median")
    ratio = lambda a, b: round(a / b, 3) if a is not None and b else None
    for mode in [m for m in out if m != "reactive" and "reactive" in out]:
        out[mode]["ratios"] = {
            "wait_p95": ratio(med(mode, "wait_p95_s"), med("reactive", "wait_p95_s")),
            "node_s_powered": ratio(med(mode, "node_s_powered"), med("reactive", "node_s_powered"))}
    if "prescale" in out and "ratios" in out["prescale"]:
        r = out["ratios"] = out["prescale"]["ratios"]
        out["target_met"] = (r["wait_p95"] is not None and r["wait_p95"] <= 0.5
                             and r["node_s_powered"] is not None and r["node_s_powered"] <= 1.3)
    return out


def markdown(report):
    """One table per slice: mode, runs, median (range) of the figures, the
    ratios to reactive, and the backtest's figures for the same slice."""
    out = [f"F = {report['factor']:g}, {report['nodes']} cloud nodes × {report['cpus']} CPUs, boot "
           f"{report['boot_s']:g} trace s, SuspendTime {report['suspend_s']:g} trace s, repeats "
           f"{report['repeats']}, commit {report.get('commit') or '?'}; prescale's policy:\n\n```toml\n"
           f"{report['policy'].strip()}\n```\n"]
    fmt = lambda st: "–" if not st else (f"{st['median']:g}" if st["min"] == st["max"]
                                         else f"{st['median']:g} ({st['min']:g}–{st['max']:g})")
    for e in report["slices"]:
        sm = summarize(e) if e.get("runs") else {}
        out.append(f"Slice {e['slice']} ({e['jobs']} jobs, core scale {e['core_scale']}, "
                   f"replayed peak {e['peak_demand_cpus']} CPUs):\n")
        out.append("| mode | runs | wait p50 (s) | wait p95 (s) | wait max (s) | node-s powered | node-s busy "
                   "| jobs on a booting node | p95 / reactive | node-s / reactive |")
        out.append("|---|---|---|---|---|---|---|---|---|---|")
        for mode in ("reactive", "prescale", "warm"):
            m = sm.get(mode)
            if not m:
                continue
            rs = [r for r in e["runs"] if r["mode"] == mode and "boot_bound_jobs" in r]
            bb = stats([r["boot_bound_jobs"] for r in rs])
            ratios = m.get("ratios", {})
            out.append(f"| {mode} | {m['runs']} | {fmt(m['wait_p50_s'])} | {fmt(m['wait_p95_s'])} | "
                       f"{fmt(m['wait_max_s'])} | {fmt(m['node_s_powered'])} | {fmt(m['node_s_busy'])} | "
                       f"{fmt(bb)} | {ratios.get('wait_p95', '')} | {ratios.get('node_s_powered', '')} |")
        for name, b in sorted(e.get("backtest", {}).get("policies", {}).items()):
            F = report["factor"]
            w = lambda k: f"{b.get(k, 0) / F:.1f} ({b.get(k, 0):g} trace s)"
            out.append(f"| backtest {name} | 1 | {w('queue_wait_p50_s')} | {w('queue_wait_p95_s')} | – | "
                       f"{b.get('vcpu_hours', 0) * 3600 / report['cpus'] / F:.0f} (vCPU-h ÷ CPUs ÷ F) | – | – | | |")
        out.append(f"\nTarget (p95 ≤ 0.5×, node-s ≤ 1.3×) met: {sm.get('target_met')}\n")
    return "\n".join(out)


DEFAULT_POLICY = """# prescale policy for a Slurm cloud partition (scripts/slurm-experiment.py)
[defaults]
markets = ["ON_DEMAND"]
scale_in_cooldown_s = {cooldown}

# A boot-time-bound partition (docs/slurm.md, "Operator setup", 4): a job
# that finds no booted node waits for a boot AND Slurm's CONFIGURING check,
# so the lead time covers both and the partition provisions at the forecast's
# upper quantile for work of normal priority.
[environments.cloud]
lead_time_s = {lead}
quantile_by_priority = {{ high = 0.9, normal = 0.9, low = 0.5 }}
"""


def run_modes(a, modes, parts, scale, workdir, tag, repeat):
    """Each mode on its own fresh cluster (own ports and state dir), side by
    side unless --sequential: modes that run at once see the same machine
    load, which the shared build machine's swings would otherwise bias."""
    results = [None] * len(modes)

    def one(i, mode):
        port = a.port + i * (a.nodes + 4)
        t = time.time()
        try:
            res = Run(a, mode, parts, scale, port, workdir, f"{tag}r{repeat}").go()
        except Exception as e:  # a failed run is reported, not fatal to the others
            res = {"mode": mode, "error": str(e)}
        res["repeat"] = repeat
        res["wall_s"] = round(time.time() - t, 1)
        print(json.dumps(res), file=sys.stderr)
        results[i] = res

    if a.sequential:
        for i, mode in enumerate(modes):
            one(i, mode)
    else:
        threads = [threading.Thread(target=one, args=(i, m)) for i, m in enumerate(modes)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    return results


def git_head():
    r = subprocess.run(["git", "-C", REPO, "rev-parse", "--short", "HEAD"], capture_output=True, text=True)
    return r.stdout.strip() or None


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--trace", default=os.path.join(REPO, "data/ricc-2010-2-excerpt.swf.gz"))
    p.add_argument("--slices", default="62:1", help="START_H:HOURS,... from the trace start")
    p.add_argument("--select", type=int, default=0,
                   help="instead of --slices, take the first N slices of the slice rule (see select_slices)")
    p.add_argument("--burst-jobs", type=int, default=10, help="slice rule: jobs that make a burst")
    p.add_argument("--max-jobs", type=int, default=200, help="slice rule: most jobs in a slice")
    p.add_argument("--repeats", type=int, default=3, help="runs per slice and mode")
    p.add_argument("--sequential", action="store_true", help="run the modes one after the other")
    p.add_argument("--factor", type=float, default=30.0, help="time compression F")
    p.add_argument("--nodes", type=int, default=12, help="cloud nodes")
    p.add_argument("--cpus", type=int, default=4, help="CPUs per node")
    p.add_argument("--boot-s", type=float, default=120.0, help="node boot delay, trace seconds")
    p.add_argument("--configuring-s", type=float, default=30.0,
                   help="Slurm's wait before a job placed on a booting node runs (22.05: its 30 s "
                        "periodic check), cluster seconds; not compressed, so the policy's lead "
                        "time counts it times F")
    p.add_argument("--check-phase-s", type=float, default=0.0,
                   help="seconds after one of slurmctld's periodic checks (every --configuring-s from its "
                        "boot) at which trace offset 0 falls, the same in every mode")
    p.add_argument("--suspend-s", type=float, default=600.0, help="Slurm SuspendTime (reactive), trace seconds")
    p.add_argument("--lead-time-s", type=float,
                   help="prescale policy's lead_time_s for the partition, trace seconds (default: boot + "
                        "configuring × F); ignored with --policy")
    p.add_argument("--cooldown-s", type=float,
                   help="prescale policy's scale_in_cooldown_s, trace seconds (default: --suspend-s): how "
                        "long a raised capacity is held before the forecast may lower it; ignored with --policy")
    p.add_argument("--max-runtime-h", type=float, default=1.0, help="cap on job runtimes, trace hours")
    p.add_argument("--lead-in-min", type=float, default=30.0,
                   help="trace minutes before each slice replayed for real in every mode (not measured)")
    p.add_argument("--history-h", type=float, default=24.0,
                   help="trace hours before the lead-in given to prescale as finished jobs (its memory)")
    p.add_argument("--no-idle-grace", dest="idle_grace", action="store_false",
                   help="prescale powers idle nodes down as soon as its forecast allows (default: only "
                        "after --suspend-s / F idle, as Slurm's own power saving would)")
    p.add_argument("--fill", type=float, default=0.8, help="slice peak demand / partition CPUs")
    p.add_argument("--modes", default="reactive,prescale",
                   help="reactive, prescale, and warm (every node up all along: the wait floor and "
                        "its cost, no power saving)")
    p.add_argument("--policy", help="policy TOML for prescale run and the backtest (default: written here)")
    p.add_argument("--prescale", default=shutil.which("prescale") or os.path.join(
        os.environ.get("CARGO_TARGET_DIR", os.path.join(REPO, "target")), "release/prescale"))
    p.add_argument("--brokers", default=os.environ.get("PRESCALE_KAFKA_BROKERS", "127.0.0.1:19092"))
    p.add_argument("--port", type=int, default=16840,
                   help="first Slurm port; mode i uses PORT + i * (nodes + 4)")
    p.add_argument("--workdir")
    p.add_argument("--json", help="write the report here")
    p.add_argument("--markdown", help="write the tables (docs/benchmarks.md style) here")
    p.add_argument("--tables-from", help="only print the tables of this JSON report (no runs)")
    a = p.parse_args()
    if a.tables_from:
        print(markdown(json.load(open(a.tables_from))))
        return
    if a.policy:
        a.policy_text = open(a.policy).read()
    else:
        a.policy_text = DEFAULT_POLICY.format(lead=int(a.boot_s + a.configuring_s * a.factor if a.lead_time_s is None
                                                       else a.lead_time_s),
                                              cooldown=int(a.suspend_s if a.cooldown_s is None
                                                           else a.cooldown_s))
    workdir = a.workdir or tempfile.mkdtemp(prefix="prescale-slurm-exp-")
    os.makedirs(workdir, exist_ok=True)
    jobs, unix_start = read_swf(a.trace)
    report = {"trace": os.path.basename(a.trace), "factor": a.factor, "nodes": a.nodes, "cpus": a.cpus,
              "boot_s": a.boot_s, "configuring_s": a.configuring_s, "suspend_s": a.suspend_s,
              "max_runtime_h": a.max_runtime_h, "repeats": a.repeats, "policy": a.policy_text,
              "prescale": a.prescale, "commit": git_head(), "slices": []}
    specs = a.slices.split(",")
    if a.select:
        specs, seen = select_slices(a, jobs, unix_start, workdir)
        report["slice_rule"] = {"select": a.select, "burst_jobs": a.burst_jobs, "max_jobs": a.max_jobs, "chosen": specs, "seen": seen}
    modes = a.modes.split(",")
    for k, spec in enumerate(specs):
        tag = f"s{k}"
        prep = prepare_slice(a, jobs, unix_start, spec, workdir, tag)
        if not prep:
            print(f"slice {spec}: no jobs", file=sys.stderr)
            continue
        parts, scale, swf = prep
        sl = parts["slice"]
        entry = {"slice": spec, "jobs": len(sl), "lead_in_jobs": len(parts["lead_in"]),
                 "history_jobs": len(parts["history"]), "core_scale": scale,
                 "peak_demand_cpus": peak_demand([dict(j, procs=math.ceil(j["procs"] / scale)) for j in sl]),
                 "runs": []}
        print(f"slice {spec}: {len(sl)} jobs, core scale {scale}", file=sys.stderr)
        for rep in range(a.repeats):
            entry["runs"].extend(run_modes(a, modes, parts, scale, workdir, tag, rep))
        entry["summary"] = summarize(entry)
        entry["backtest"] = backtest(a, swf, workdir, tag)
        print(json.dumps({"slice": spec, "summary": entry["summary"]}), file=sys.stderr)
        report["slices"].append(entry)
        if a.json:  # after each slice, so a long run's finished slices are kept
            open(a.json, "w").write(json.dumps(report, indent=2))
    text = json.dumps(report, indent=2)
    if a.json:
        open(a.json, "w").write(text)
    if a.markdown:
        open(a.markdown, "w").write(markdown(report))
    print(text)


if __name__ == "__main__":
    main()
