//! Shared helpers of the Slurm integration tests: a REAL single-host Slurm
//! cluster (Debian's slurmctld / slurmd / munge) started by
//! `scripts/slurm.sh` in a private state dir, stopped on drop.
//!
//! Each test binary gets its own cluster on its own ports (base from
//! `PRESCALE_SLURM_TEST_PORT`, default 16817, plus a per-binary offset), so
//! the ingest and actuate tests can run at the same time.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::Command as Proc;
use std::time::{Duration, Instant};

pub fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// Settings of one test cluster.
#[derive(Debug, Clone)]
pub struct ClusterSpec {
    /// Offset from the base port (keep test binaries 20 apart).
    pub port_offset: u16,
    pub cloud_nodes: u32,
    pub cpus: u32,
    pub boot_s: u32,
    pub suspend_time: &'static str,
    pub resume_timeout_s: u32,
}

impl Default for ClusterSpec {
    fn default() -> Self {
        ClusterSpec {
            port_offset: 0,
            cloud_nodes: 4,
            cpus: 2,
            boot_s: 1,
            suspend_time: "INFINITE",
            resume_timeout_s: 60,
        }
    }
}

pub struct Cluster {
    pub dir: tempfile::TempDir,
    pub port: u16,
    pub spec: ClusterSpec,
}

fn port_free(p: u16) -> bool {
    std::net::TcpListener::bind(("127.0.0.1", p)).is_ok()
}

impl Cluster {
    pub fn start(spec: ClusterSpec) -> Cluster {
        let base: u16 = std::env::var("PRESCALE_SLURM_TEST_PORT")
            .ok()
            .and_then(|p| p.parse().ok())
            .unwrap_or(16817)
            + spec.port_offset;
        let n = spec.cloud_nodes as u16 + 2;
        let port = (base..base + 10)
            .find(|b| (*b..*b + n).all(port_free))
            .expect("free ports for the Slurm test cluster");
        let c = Cluster {
            dir: tempfile::Builder::new()
                .prefix("prescale-slurm-test")
                .tempdir()
                .expect("tempdir"),
            port,
            spec,
        };
        c.script("start");
        c
    }

    fn script(&self, cmd: &str) {
        let st = Proc::new("bash")
            .arg(repo().join("scripts/slurm.sh"))
            .arg(cmd)
            .envs(self.script_env())
            .status()
            .expect("run scripts/slurm.sh");
        assert!(st.success(), "scripts/slurm.sh {cmd} failed");
    }

    fn script_env(&self) -> Vec<(String, String)> {
        let s = &self.spec;
        vec![
            ("PRESCALE_SLURM_PORT".into(), self.port.to_string()),
            (
                "PRESCALE_SLURM_DIR".into(),
                self.path().display().to_string(),
            ),
            (
                "PRESCALE_SLURM_CLOUD_NODES".into(),
                s.cloud_nodes.to_string(),
            ),
            ("PRESCALE_SLURM_CPUS".into(), s.cpus.to_string()),
            ("PRESCALE_SLURM_BOOT_S".into(), s.boot_s.to_string()),
            ("PRESCALE_SLURM_SUSPEND_TIME".into(), s.suspend_time.into()),
            (
                "PRESCALE_SLURM_RESUME_TIMEOUT".into(),
                s.resume_timeout_s.to_string(),
            ),
        ]
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    pub fn conf(&self) -> PathBuf {
        self.path().join("slurm.conf")
    }

    pub fn spool(&self) -> PathBuf {
        self.path().join("jobcomp.spool")
    }

    /// A Slurm client command pointed at this cluster.
    pub fn cmd(&self, program: &str) -> Proc {
        let mut c = Proc::new(program);
        c.env("SLURM_CONF", self.conf());
        c
    }

    /// Run a client command; its stdout, or a panic with its stderr.
    pub fn run(&self, program: &str, args: &[&str]) -> String {
        let out = self.cmd(program).args(args).output().expect(program);
        assert!(
            out.status.success(),
            "{program} {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// `sbatch --parsable ARGS`: the job id.
    pub fn sbatch(&self, args: &[&str]) -> u64 {
        let mut a = vec!["--parsable", "-o", "/dev/null"];
        a.extend_from_slice(args);
        let out = self.run("sbatch", &a);
        out.trim()
            .split(';')
            .next()
            .unwrap()
            .parse()
            .expect("sbatch prints the job id")
    }

    /// One field of `scontrol -o show job/node` ("JobState", "StartTime").
    pub fn field(&self, what: &str, id: &str, key: &str) -> String {
        let out = self.run("scontrol", &["-o", "show", what, id]);
        out.split_whitespace()
            .find_map(|kv| kv.strip_prefix(&format!("{key}=")))
            .unwrap_or_default()
            .to_string()
    }

    pub fn job_state(&self, id: u64) -> String {
        self.field("job", &id.to_string(), "JobState")
    }

    /// A node's state string (e.g. "IDLE+CLOUD+POWERED_DOWN").
    pub fn node_state(&self, node: &str) -> String {
        self.field("node", node, "State")
    }

    /// Wait until `f` holds (polling), or panic with `what`.
    pub fn wait_for(&self, what: &str, timeout: Duration, mut f: impl FnMut() -> bool) {
        let t = Instant::now();
        while !f() {
            assert!(
                t.elapsed() < timeout,
                "timed out after {timeout:?} waiting for {what}\n{}",
                self.run("sinfo", &["-N", "-l"])
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// Lines of the power log ("<time> resume cloud1").
    pub fn power_log(&self) -> Vec<String> {
        std::fs::read_to_string(self.path().join("power.log"))
            .unwrap_or_default()
            .lines()
            .map(String::from)
            .collect()
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        self.script("stop");
    }
}

/// A node is up and idle: powered, not booting, no job.
pub fn is_idle_on(state: &str) -> bool {
    state.starts_with("IDLE")
        && !state.contains("POWER")
        && !state.contains("DOWN")
        && !state.contains("NOT_RESPONDING")
}

pub fn is_off(state: &str) -> bool {
    state.contains("POWERED_DOWN")
}

/// The prescale binary: `PRESCALE_TEST_BIN` when set (a copy taken right
/// after the build, safe from other builds sharing the target dir), else
/// cargo's.
pub fn prescale_bin() -> String {
    std::env::var("PRESCALE_TEST_BIN")
        .unwrap_or_else(|_| env!("CARGO_BIN_EXE_prescale").to_string())
}
