//! Shared helpers of the AWS tests: a REAL moto server (started by `scripts/moto.sh`; CI's
//! `scripts/test.sh` starts one and exports `PRESCALE_AWS_ENDPOINT`), fixtures created through
//! the AWS query APIs, moto's request recording, and a throttling proxy.
#![allow(dead_code)]

use std::path::PathBuf;
use std::process::Command as Proc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};

pub fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// A moto server this process started (left running for the other tests of the binary; its
/// state dir is a temp dir) or one given by CI.
pub struct Moto {
    pub endpoint: String,
    _dir: Option<tempfile::TempDir>,
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free loopback port")
}

impl Moto {
    pub fn shared() -> &'static Moto {
        static M: OnceLock<Moto> = OnceLock::new();
        M.get_or_init(|| {
            // Dummy credentials and region for the SDK's standard chain (children inherit them).
            for (k, v) in [
                ("AWS_ACCESS_KEY_ID", "testing"),
                ("AWS_SECRET_ACCESS_KEY", "testing"),
                ("AWS_REGION", "us-east-1"),
            ] {
                if std::env::var(k).is_err() {
                    std::env::set_var(k, v);
                }
            }
            if let Ok(e) = std::env::var("PRESCALE_AWS_ENDPOINT") {
                if !e.is_empty() {
                    return Moto {
                        endpoint: e,
                        _dir: None,
                    };
                }
            }
            let port = free_port();
            let dir = tempfile::tempdir().expect("tempdir");
            let st = Proc::new("bash")
                .arg(repo().join("scripts/moto.sh"))
                .arg("start")
                .env("PRESCALE_MOTO_PORT", port.to_string())
                .env("PRESCALE_MOTO_DIR", dir.path())
                .status()
                .expect("run scripts/moto.sh");
            assert!(st.success(), "scripts/moto.sh start failed");
            Moto {
                endpoint: format!("http://127.0.0.1:{port}"),
                _dir: Some(dir),
            }
        })
    }

    pub async fn sdk(&self) -> aws_config::SdkConfig {
        self.sdk_at(&self.endpoint).await
    }

    pub async fn sdk_at(&self, endpoint: &str) -> aws_config::SdkConfig {
        prescale::io::aws::sdk_config(&prescale::io::aws::AwsConnect {
            endpoint_url: Some(endpoint.to_string()),
            region: Some("us-east-1".into()),
            max_attempts: 3,
        })
        .await
    }

    /// One AWS query-protocol call (EC2, IAM: services prescale has no SDK crate for); moto
    /// routes it by the credential scope. Returns the XML answer.
    pub async fn query(&self, service: &str, version: &str, params: &[(&str, &str)]) -> String {
        let mut form: Vec<(&str, &str)> = vec![("Version", version)];
        form.extend_from_slice(params);
        let auth = format!(
            "AWS4-HMAC-SHA256 Credential=testing/20260101/us-east-1/{service}/aws4_request, SignedHeaders=host, Signature=0"
        );
        let body = form
            .iter()
            .map(|(k, v)| format!("{}={}", enc(k), enc(v)))
            .collect::<Vec<_>>()
            .join("&");
        let r = reqwest::Client::new()
            .post(format!("{}/", self.endpoint))
            .header("Authorization", auth)
            .header("Content-Type", "application/x-www-form-urlencoded")
            .body(body)
            .send()
            .await
            .expect("query call");
        let status = r.status();
        let text = r.text().await.expect("query answer");
        assert!(status.is_success(), "{service} {params:?}: {status} {text}");
        text
    }

    /// Every request moto received so far (its recorder), in order: (action, decoded body).
    pub async fn recording(&self) -> Vec<(String, String)> {
        // Bounded: a server that stops answering fails the test instead of hanging it.
        let text = reqwest::Client::builder()
            .timeout(std::time::Duration::from_secs(60))
            .build()
            .unwrap()
            .get(format!(
                "{}/moto-api/recorder/download-recording",
                self.endpoint
            ))
            .send()
            .await
            .expect("recording")
            .text()
            .await
            .expect("recording body");
        text.lines()
            .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
            .map(|v| {
                let raw = v["body"].as_str().unwrap_or("").to_string();
                let body = if v["body_encoded"].as_bool() == Some(true) {
                    String::from_utf8_lossy(&base64_decode(&raw)).into_owned()
                } else {
                    raw
                };
                let target = v["headers"]["X-Amz-Target"].as_str().unwrap_or("");
                let action = form_value(&body, "Action")
                    .or_else(|| (!target.is_empty()).then(|| target.to_string()))
                    .unwrap_or_else(|| v["url"].as_str().unwrap_or("").to_string());
                (action, body)
            })
            .collect()
    }
}

fn enc(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// A value of a form-encoded body (`a=1&b=x%3Ay`).
pub fn form_value(body: &str, key: &str) -> Option<String> {
    let url = reqwest::Url::parse(&format!("http://x/?{body}")).ok()?;
    url.query_pairs()
        .find(|(k, _)| k == key)
        .map(|(_, v)| v.into_owned())
}

/// All (key, value) pairs of a form-encoded body.
pub fn form_pairs(body: &str) -> Vec<(String, String)> {
    reqwest::Url::parse(&format!("http://x/?{body}"))
        .map(|u| {
            u.query_pairs()
                .map(|(k, v)| (k.into_owned(), v.into_owned()))
                .collect()
        })
        .unwrap_or_default()
}

fn base64_decode(s: &str) -> Vec<u8> {
    let val = |c: u8| -> Option<u32> {
        Some(match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'+' | b'-' => 62,
            b'/' | b'_' => 63,
            _ => return None,
        } as u32)
    };
    let mut out = Vec::new();
    let (mut acc, mut bits) = (0u32, 0);
    for c in s.bytes().filter_map(val) {
        acc = (acc << 6) | c;
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((acc >> bits) as u8);
            acc &= (1 << bits) - 1;
        }
    }
    out
}

/// The first `<tag>value</tag>` of an XML answer.
pub fn xml_first(xml: &str, tag: &str) -> Option<String> {
    let open = format!("<{tag}>");
    let i = xml.find(&open)? + open.len();
    let j = xml[i..].find("</")? + i;
    Some(xml[i..j].to_string())
}

pub fn unique(prefix: &str) -> String {
    static N: AtomicU64 = AtomicU64::new(0);
    format!(
        "{prefix}-{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    )
}

/// A launch template and an Auto Scaling group on it (mixed instances, weights = vCPUs).
pub async fn create_group(m: &Moto, name: &str) {
    let lt = format!("{name}-lt");
    m.query(
        "ec2",
        "2016-11-15",
        &[
            ("Action", "CreateLaunchTemplate"),
            ("LaunchTemplateName", &lt),
            ("LaunchTemplateData.ImageId", "ami-12c6146b"),
            ("LaunchTemplateData.InstanceType", "m5.large"),
        ],
    )
    .await;
    let subnets = m
        .query("ec2", "2016-11-15", &[("Action", "DescribeSubnets")])
        .await;
    let subnet = xml_first(&subnets, "subnetId").expect("a default subnet");
    let asg = aws_sdk_autoscaling::Client::new(&m.sdk().await);
    use aws_sdk_autoscaling::types::*;
    asg.create_auto_scaling_group()
        .auto_scaling_group_name(name)
        .min_size(0)
        .max_size(0)
        .desired_capacity(0)
        .vpc_zone_identifier(subnet)
        .mixed_instances_policy(
            MixedInstancesPolicy::builder()
                .launch_template(
                    LaunchTemplate::builder()
                        .launch_template_specification(
                            LaunchTemplateSpecification::builder()
                                .launch_template_name(&lt)
                                .version("$Latest")
                                .build(),
                        )
                        .overrides(
                            LaunchTemplateOverrides::builder()
                                .instance_type("m5.large")
                                .weighted_capacity("2")
                                .build(),
                        )
                        .build(),
                )
                .build(),
        )
        .send()
        .await
        .expect("CreateAutoScalingGroup");
}

/// What DescribeAutoScalingGroups says: (min, desired, max, overrides, OD base, OD % above base).
#[derive(Debug, Clone, PartialEq)]
pub struct GroupState {
    pub min: i32,
    pub desired: i32,
    pub max: i32,
    pub overrides: Vec<(String, String)>,
    pub on_demand_base: Option<i32>,
    pub on_demand_pct: Option<i32>,
    pub last_command: Option<String>,
}

pub async fn describe_group(m: &Moto, name: &str) -> GroupState {
    let asg = aws_sdk_autoscaling::Client::new(&m.sdk().await);
    let r = asg
        .describe_auto_scaling_groups()
        .auto_scaling_group_names(name)
        .send()
        .await
        .expect("DescribeAutoScalingGroups");
    let g = r.auto_scaling_groups().first().expect("the group").clone();
    let mip = g.mixed_instances_policy();
    let dist = mip.and_then(|p| p.instances_distribution());
    GroupState {
        min: g.min_size().unwrap_or(-1),
        desired: g.desired_capacity().unwrap_or(-1),
        max: g.max_size().unwrap_or(-1),
        overrides: mip
            .and_then(|p| p.launch_template())
            .map(|l| {
                l.overrides()
                    .iter()
                    .map(|o| {
                        (
                            o.instance_type().unwrap_or("").to_string(),
                            o.weighted_capacity().unwrap_or("").to_string(),
                        )
                    })
                    .collect()
            })
            .unwrap_or_default(),
        on_demand_base: dist.and_then(|d| d.on_demand_base_capacity()),
        on_demand_pct: dist.and_then(|d| d.on_demand_percentage_above_base_capacity()),
        last_command: g
            .tags()
            .iter()
            .find(|t| t.key() == Some("prescale:last-command-id"))
            .and_then(|t| t.value().map(str::to_string)),
    }
}

/// The command ids prescale tagged on `group`, in the order moto received them.
pub async fn tagged_commands(m: &Moto, group: &str) -> Vec<String> {
    m.recording()
        .await
        .into_iter()
        .filter(|(a, _)| a == "CreateOrUpdateTags")
        .filter_map(|(_, body)| {
            let pairs = form_pairs(&body);
            let on_group = pairs
                .iter()
                .any(|(k, v)| k.ends_with("ResourceId") && v == group);
            let key_i = pairs
                .iter()
                .find(|(k, v)| k.ends_with(".Key") && v == "prescale:last-command-id")
                .map(|(k, _)| k.trim_end_matches(".Key").to_string())?;
            let val = pairs
                .iter()
                .find(|(k, _)| *k == format!("{key_i}.Value"))
                .map(|(_, v)| v.clone())?;
            on_group.then_some(val)
        })
        .collect()
}

/// Batch fixtures: an IAM service role and instance profile, and a spot and an on-demand
/// managed compute environment with a job queue over both. Returns the mapping entry.
pub async fn create_batch(m: &Moto, prefix: &str) -> prescale::io::aws::config::BatchTarget {
    let role_xml = m
        .query(
            "iam",
            "2010-05-08",
            &[
                ("Action", "CreateRole"),
                ("RoleName", &format!("{prefix}-svc")),
                ("AssumeRolePolicyDocument", "{}"),
            ],
        )
        .await;
    let role = xml_first(&role_xml, "Arn").expect("role arn");
    let ip_xml = m
        .query(
            "iam",
            "2010-05-08",
            &[
                ("Action", "CreateInstanceProfile"),
                ("InstanceProfileName", &format!("{prefix}-ip")),
            ],
        )
        .await;
    let profile = xml_first(&ip_xml, "Arn").expect("instance profile arn");
    let subnets = m
        .query("ec2", "2016-11-15", &[("Action", "DescribeSubnets")])
        .await;
    let subnet = xml_first(&subnets, "subnetId").unwrap();
    let sgs = m
        .query("ec2", "2016-11-15", &[("Action", "DescribeSecurityGroups")])
        .await;
    let sg = xml_first(&sgs, "groupId").unwrap();
    let batch = aws_sdk_batch::Client::new(&m.sdk().await);
    use aws_sdk_batch::types::*;
    let mut arns = Vec::new();
    for (suffix, ty, strategy) in [
        (
            "spot",
            CrType::Spot,
            CrAllocationStrategy::SpotPriceCapacityOptimized,
        ),
        ("od", CrType::Ec2, CrAllocationStrategy::BestFitProgressive),
    ] {
        let r = batch
            .create_compute_environment()
            .compute_environment_name(format!("{prefix}-{suffix}"))
            .r#type(CeType::Managed)
            .state(CeState::Enabled)
            .service_role(&role)
            .compute_resources(
                ComputeResource::builder()
                    .r#type(ty)
                    .allocation_strategy(strategy)
                    .minv_cpus(0)
                    .desiredv_cpus(0)
                    .maxv_cpus(64)
                    .instance_types("m5.large")
                    .subnets(&subnet)
                    .security_group_ids(&sg)
                    .instance_role(&profile)
                    .build(),
            )
            .send()
            .await
            .expect("CreateComputeEnvironment");
        arns.push(r.compute_environment_arn().unwrap().to_string());
    }
    batch
        .create_job_queue()
        .job_queue_name(format!("{prefix}-q"))
        .state(JqState::Enabled)
        .priority(1)
        .compute_environment_order(
            ComputeEnvironmentOrder::builder()
                .order(1)
                .compute_environment(&arns[1])
                .build(),
        )
        .compute_environment_order(
            ComputeEnvironmentOrder::builder()
                .order(2)
                .compute_environment(&arns[0])
                .build(),
        )
        .send()
        .await
        .expect("CreateJobQueue");
    prescale::io::aws::config::BatchTarget {
        spot_compute_environment: format!("{prefix}-spot"),
        on_demand_compute_environment: format!("{prefix}-od"),
        job_queue: format!("{prefix}-q"),
    }
}

/// (min, desired, max) of a compute environment as Batch describes it.
pub async fn describe_ce(m: &Moto, name: &str) -> (i32, i32, i32) {
    let batch = aws_sdk_batch::Client::new(&m.sdk().await);
    let r = batch
        .describe_compute_environments()
        .compute_environments(name)
        .send()
        .await
        .expect("DescribeComputeEnvironments");
    let c = r.compute_environments().first().expect("the CE");
    let cr = c.compute_resources().expect("resources");
    (
        cr.minv_cpus().unwrap_or(-1),
        cr.desiredv_cpus().unwrap_or(-1),
        cr.maxv_cpus().unwrap_or(-1),
    )
}

/// A loopback HTTP proxy in front of moto that answers a share of requests with a throttling
/// error (query protocol: `Throttling`, JSON protocols: `ThrottlingException`, as AWS does) and
/// forwards the rest. Counts both.
pub struct ThrottlingProxy {
    pub endpoint: String,
    pub throttled: Arc<AtomicU64>,
    pub forwarded: Arc<AtomicU64>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for ThrottlingProxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl ThrottlingProxy {
    /// Throttle `throttle` of every `period` requests (deterministically: the last ones of each
    /// period, so the very first request, an actuator's start-up check, gets through).
    pub async fn start(upstream: &str, throttle: u64, period: u64) -> ThrottlingProxy {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let endpoint = format!("http://{}", listener.local_addr().unwrap());
        let up = upstream
            .trim_start_matches("http://")
            .trim_end_matches('/')
            .to_string();
        let throttled = Arc::new(AtomicU64::new(0));
        let forwarded = Arc::new(AtomicU64::new(0));
        let (t, f) = (throttled.clone(), forwarded.clone());
        let seq = Arc::new(AtomicU64::new(0));
        let task = tokio::spawn(async move {
            loop {
                let Ok((mut client, _)) = listener.accept().await else {
                    return;
                };
                let (up, t, f, seq) = (up.clone(), t.clone(), f.clone(), seq.clone());
                tokio::spawn(async move {
                    let Some((head, body)) = read_request(&mut client).await else {
                        return;
                    };
                    let n = seq.fetch_add(1, Ordering::Relaxed);
                    if n % period >= period - throttle {
                        t.fetch_add(1, Ordering::Relaxed);
                        let json = !head.to_ascii_lowercase().contains("x-www-form-urlencoded");
                        let (ctype, text) = if json {
                            (
                                "application/x-amz-json-1.1",
                                r#"{"__type":"ThrottlingException","message":"Rate exceeded"}"#
                                    .to_string(),
                            )
                        } else {
                            ("text/xml", r#"<ErrorResponse xmlns="https://autoscaling.amazonaws.com/doc/2011-01-01/"><Error><Type>Sender</Type><Code>Throttling</Code><Message>Rate exceeded</Message></Error><RequestId>proxy</RequestId></ErrorResponse>"#.to_string())
                        };
                        let status = if json {
                            "429 Too Many Requests"
                        } else {
                            "400 Bad Request"
                        };
                        let resp = format!(
                            "HTTP/1.1 {status}\r\nContent-Type: {ctype}\r\nx-amzn-ErrorType: ThrottlingException\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{text}",
                            text.len()
                        );
                        let _ = client.write_all(resp.as_bytes()).await;
                        return;
                    }
                    f.fetch_add(1, Ordering::Relaxed);
                    let Ok(mut server) = tokio::net::TcpStream::connect(&up).await else {
                        return;
                    };
                    let head: String = head
                        .split("\r\n")
                        .filter(|l| !l.to_ascii_lowercase().starts_with("connection:"))
                        .collect::<Vec<_>>()
                        .join("\r\n");
                    let req = format!("{}\r\nConnection: close\r\n\r\n", head.trim_end());
                    if server.write_all(req.as_bytes()).await.is_err()
                        || server.write_all(&body).await.is_err()
                    {
                        return;
                    }
                    let mut resp = Vec::new();
                    let _ = server.read_to_end(&mut resp).await;
                    let _ = client.write_all(&resp).await;
                });
            }
        });
        ThrottlingProxy {
            endpoint,
            throttled,
            forwarded,
            task,
        }
    }
}

async fn read_request(c: &mut tokio::net::TcpStream) -> Option<(String, Vec<u8>)> {
    use tokio::io::AsyncReadExt;
    let mut buf = Vec::new();
    let mut chunk = [0u8; 8192];
    let end = loop {
        let n = c.read(&mut chunk).await.ok()?;
        if n == 0 {
            return None;
        }
        buf.extend_from_slice(&chunk[..n]);
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i;
        }
    };
    let head = String::from_utf8_lossy(&buf[..end]).into_owned();
    let len: usize = head
        .lines()
        .find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.eq_ignore_ascii_case("content-length")
                .then(|| v.trim().parse().ok())?
        })
        .unwrap_or(0);
    let mut body = buf[end + 4..].to_vec();
    while body.len() < len {
        let n = c.read(&mut chunk).await.ok()?;
        if n == 0 {
            break;
        }
        body.extend_from_slice(&chunk[..n]);
    }
    Some((head, body))
}

/// (MinSize, DesiredCapacity, MaxSize) of every `UpdateAutoScalingGroup` moto received for
/// `group`, in order.
pub async fn group_updates(m: &Moto, group: &str) -> Vec<(i32, i32, i32)> {
    m.recording()
        .await
        .into_iter()
        .filter(|(a, _)| a == "UpdateAutoScalingGroup")
        .filter_map(|(_, body)| {
            let p = form_pairs(&body);
            let get = |k: &str| p.iter().find(|(x, _)| x == k).map(|(_, v)| v.clone());
            (get("AutoScalingGroupName")? == group).then_some(())?;
            let n = |k: &str| get(k).and_then(|v| v.parse().ok()).unwrap_or(-1);
            Some((n("MinSize"), n("DesiredCapacity"), n("MaxSize")))
        })
        .collect()
}

/// A mapping file of Auto Scaling groups, one per environment.
pub fn asg_mapping(
    dir: &std::path::Path,
    groups: &[(String, String)],
    vcpus_per_unit: Option<u32>,
) -> std::path::PathBuf {
    let mut text = String::new();
    for (env, g) in groups {
        text.push_str(&format!("[asg.\"{env}\"]\ngroup = \"{g}\"\n"));
        if let Some(v) = vcpus_per_unit {
            text.push_str(&format!("vcpus_per_unit = {v}\n"));
        }
        text.push('\n');
    }
    let p = dir.join("aws.toml");
    std::fs::write(&p, text).unwrap();
    p
}

/// What a command asks of a group prescale weights by vCPUs (one unit = one vCPU):
/// (min, desired, max) with the group's max kept for a command without a ceiling.
pub fn expected_sizes(c: &prescale::events::ScalingCommand, group_max: i32) -> (i32, i32, i32) {
    expected_units(c, group_max, 1)
}

/// The same with one capacity unit = `per_unit` vCPUs (sizes rounded up to whole units).
pub fn expected_units(
    c: &prescale::events::ScalingCommand,
    group_max: i32,
    per_unit: i64,
) -> (i32, i32, i32) {
    let u = |v: i64| ((v + per_unit - 1) / per_unit) as i32;
    let min = u(c.min_vcpus);
    let desired = u(c.desired_vcpus).max(min);
    let max = if c.max_vcpus == 0 {
        group_max
    } else {
        u(c.max_vcpus)
    }
    .max(desired);
    (min, desired, max)
}

/// Run an actuator until `done` holds (checked every 100 ms, at most `limit`), then stop it
/// with SIGTERM as an operator would and return its summary JSON (its last stdout line).
pub fn run_until(
    cmd: &mut Proc,
    limit: std::time::Duration,
    mut done: impl FnMut() -> bool,
) -> serde_json::Value {
    use std::process::Stdio;
    // The log goes to a file: a pipe nobody reads would fill and block the actuator.
    let log = tempfile::NamedTempFile::new().unwrap();
    let mut child = cmd
        .stdout(Stdio::piped())
        .stderr(log.reopen().unwrap())
        .spawn()
        .expect("start prescale");
    let tail = || {
        let text = std::fs::read_to_string(log.path()).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(30)..].join("\n")
    };
    let started = std::time::Instant::now();
    while !done() {
        if let Ok(Some(st)) = child.try_wait() {
            panic!("actuator exited early ({st}):\n{}", tail());
        }
        if started.elapsed() > limit {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "condition not reached within {limit:?}; actuator log tail:\n{}",
                tail()
            );
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    let st = Proc::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(st.success());
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "actuator failed:\n{}", tail());
    let stdout = String::from_utf8_lossy(&out.stdout);
    serde_json::from_str(stdout.lines().last().expect("a summary line")).expect("summary JSON")
}

/// The last scaling command id per environment in an actuator's ledger file (its first line is
/// the body's checksum, then the JSON body; a missing or half-written file reads as empty).
/// Reading the actuator's own file lets a test follow its progress without loading the endpoint.
pub fn ledger_last(path: &std::path::Path) -> std::collections::BTreeMap<String, String> {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let body = text.split_once('\n').map(|(_, b)| b).unwrap_or("");
    let v: serde_json::Value = serde_json::from_str(body).unwrap_or_default();
    v.as_object()
        .map(|m| {
            m.iter()
                .filter_map(|(env, e)| {
                    let id = e["scaling"]["command_id"].as_str()?;
                    Some((env.clone(), id.to_string()))
                })
                .collect()
        })
        .unwrap_or_default()
}
