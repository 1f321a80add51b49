#!/usr/bin/env python3
"""Replay slices of a real batch trace into a REAL Slurm cluster, once with
Slurm's own (reactive) power saving and once with prescale ingesting and
actuating, and report queue waits and powered node-seconds per run, beside
`prescale backtest` on the same slice.

    python3 scripts/slurm-experiment.py --slices 52:1,64:1 --json out.json

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


def slice_jobs(jobs, start_h, hours, max_run_s):
    t0 = jobs[0]["submit"] + int(start_h * 3600)
    t1 = t0 + int(hours * 3600)
    out = []
    for j in jobs:
        if t0 <= j["submit"] < t1:
            out.append(dict(j, offset=j["submit"] - t0, run=min(j["run"], max_run_s)))
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


def pct(xs, q):
    if not xs:
        return None
    xs = sorted(xs)
    k = max(0, min(len(xs) - 1, math.ceil(q * len(xs)) - 1))
    return xs[k]


class Run:
    """One mode on one slice: a fresh cluster, the replay, the measurements."""

    def __init__(self, args, mode, jobs, scale, port, workdir, tag):
        self.a, self.mode, self.jobs, self.scale = args, mode, jobs, scale
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
             "--reconcile-interval-s", "5"],
        )

    def replay(self):
        F = self.a.factor
        t0 = time.time()
        ids = []
        for j in self.jobs:
            due = t0 + j["offset"] / F
            now = time.time()
            if due > now:
                time.sleep(due - now)
            cpus = math.ceil(j["procs"] / self.scale)
            out = self.sh("sbatch", "--parsable", "-p", "cloud", "-n", str(cpus), "-o", "/dev/null",
                          "-J", f"t{j['id']}", "--wrap", f"sleep {j['run'] / F:.2f}")
            ids.append(out.stdout.strip().split(";")[0])
        return t0, ids

    def wait_done(self, n, timeout):
        spool = os.path.join(self.slurm_dir, "jobcomp.spool")
        end = time.time() + timeout
        while time.time() < end:
            with open(spool) as f:
                if sum(1 for _ in f) >= n:
                    return True
            time.sleep(1)
        return False

    def measure(self, t0):
        recs = [json.loads(l) for l in open(os.path.join(self.slurm_dir, "jobcomp.spool"))]
        recs = [r for r in recs if r.get("PARTITION") == "cloud"]
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
        return {
            "mode": self.mode,
            "jobs_submitted": len(self.jobs),
            "jobs_completed": sum(1 for r in recs if r["JOBSTATE"] == "COMPLETED"),
            "wait_s": {"p50": pct(waits, 0.5), "p95": pct(waits, 0.95), "max": max(waits) if waits else None,
                       "mean": round(sum(waits) / len(waits), 2) if waits else None},
            "node_s": {"powered": round(powered_s, 1), "busy": round(busy_s, 1),
                       "idle": round(powered_s - busy_s, 1)},
            "node_resumes": resumes,
            "boot_failures": failed,
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

    def go(self):
        try:
            r = self.sh("bash", os.path.join(REPO, "scripts/slurm.sh"), "start", check=False)
            if r.returncode != 0:
                raise RuntimeError(f"slurm.sh start failed: {r.stderr[-2000:]}")
            if self.mode == "prescale":
                self.start_prescale(int(time.time() * 1000))
                time.sleep(3)
            t0, ids = self.replay()
            span = max(j["offset"] + j["run"] for j in self.jobs) / self.a.factor
            ok = self.wait_done(len(ids), timeout=span + 300)
            res = self.measure(t0)
            res["all_finished"] = ok
            return res
        finally:
            self.stop()


def backtest(args, swf, workdir, tag):
    out = os.path.join(workdir, f"{tag}-backtest.json")
    cmd = [args.prescale, "backtest", "--trace", swf, "--policies", "reactive,predictive",
           "--boot-delay-s", str(int(args.boot_s)), "--idle-timeout-s", str(int(args.suspend_s)),
           "--max-vcpus", str(args.nodes * args.cpus), "--json", out]
    r = subprocess.run(cmd, capture_output=True, text=True)
    if r.returncode != 0:
        return {"error": r.stderr[-1500:]}
    return json.load(open(out))


DEFAULT_POLICY = """# prescale policy for a Slurm cloud partition (scripts/slurm-experiment.py)
[defaults]
lead_time_s = {lead}
scale_in_cooldown_s = {cooldown}
markets = ["ON_DEMAND"]
"""


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--trace", default=os.path.join(REPO, "data/ricc-2010-2-excerpt.swf.gz"))
    p.add_argument("--slices", default="52:1,64:1", help="START_H:HOURS,... from the trace start")
    p.add_argument("--factor", type=float, default=30.0, help="time compression F")
    p.add_argument("--nodes", type=int, default=12, help="cloud nodes")
    p.add_argument("--cpus", type=int, default=4, help="CPUs per node")
    p.add_argument("--boot-s", type=float, default=120.0, help="node boot delay, trace seconds")
    p.add_argument("--suspend-s", type=float, default=600.0, help="Slurm SuspendTime (reactive), trace seconds")
    p.add_argument("--max-runtime-h", type=float, default=1.0, help="cap on job runtimes, trace hours")
    p.add_argument("--fill", type=float, default=0.8, help="slice peak demand / partition CPUs")
    p.add_argument("--modes", default="reactive,prescale")
    p.add_argument("--policy", help="policy TOML for prescale run (default: written here)")
    p.add_argument("--prescale", default=shutil.which("prescale") or os.path.join(
        os.environ.get("CARGO_TARGET_DIR", os.path.join(REPO, "target")), "release/prescale"))
    p.add_argument("--brokers", default=os.environ.get("PRESCALE_KAFKA_BROKERS", "127.0.0.1:19092"))
    p.add_argument("--port", type=int, default=16840, help="first Slurm port (needs nodes+2)")
    p.add_argument("--workdir")
    p.add_argument("--json", help="write the report here")
    a = p.parse_args()
    if a.policy:
        a.policy_text = open(a.policy).read()
    else:
        a.policy_text = DEFAULT_POLICY.format(lead=int(a.boot_s + 60), cooldown=int(a.suspend_s))
    workdir = a.workdir or tempfile.mkdtemp(prefix="prescale-slurm-exp-")
    jobs, unix_start = read_swf(a.trace)
    report = {"trace": os.path.basename(a.trace), "factor": a.factor, "nodes": a.nodes, "cpus": a.cpus,
              "boot_s": a.boot_s, "suspend_s": a.suspend_s, "max_runtime_h": a.max_runtime_h,
              "prescale": a.prescale, "slices": []}
    for k, spec in enumerate(a.slices.split(",")):
        start_h, hours = (float(x) for x in spec.split(":"))
        sl, t0 = slice_jobs(jobs, start_h, hours, int(a.max_runtime_h * 3600))
        if not sl:
            print(f"slice {spec}: no jobs", file=sys.stderr)
            continue
        scale = max(1, math.ceil(peak_demand(sl) / (a.fill * a.nodes * a.cpus)))
        tag = f"s{k}"
        swf = os.path.join(workdir, f"{tag}.swf")
        write_slice_swf(sl, t0, scale, swf, unix_start)
        entry = {"slice": spec, "jobs": len(sl), "core_scale": scale,
                 "peak_demand_cpus": math.ceil(peak_demand(sl) / scale), "runs": []}
        print(f"slice {spec}: {len(sl)} jobs, core scale {scale}", file=sys.stderr)
        for mode in a.modes.split(","):
            t = time.time()
            res = Run(a, mode, sl, scale, a.port, workdir, tag).go()
            res["wall_s"] = round(time.time() - t, 1)
            print(json.dumps(res), file=sys.stderr)
            entry["runs"].append(res)
        entry["backtest"] = backtest(a, swf, workdir, tag)
        report["slices"].append(entry)
    text = json.dumps(report, indent=2)
    if a.json:
        open(a.json, "w").write(text)
    print(text)


if __name__ == "__main__":
    main()
