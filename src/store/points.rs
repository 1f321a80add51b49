//! Points written to the store. Pure: no I/O.
//!
//! Every timestamp is epoch milliseconds (the writer sends `precision=ms`).
//! Every field is a float, so a series never changes field type (InfluxDB
//! rejects that), and non-finite values are left out (line protocol cannot
//! carry NaN/inf; one would make the server reject the whole batch).
//! A point with no finite field is not produced at all.

use std::collections::BTreeMap;

use influxdb2::models::DataPoint;

use crate::events::{Command, Millis, PreemptionCommand, PriceTick, ScalingCommand};
use crate::forecast::Forecast;

/// Measurement names. A VictoriaMetrics reader sees field `f` of measurement
/// `m` as metric `m_f`.
pub mod measurement {
    /// Observed concurrent demand per compute environment.
    pub const DEMAND: &str = "demand";
    /// Forecast quantiles per compute environment, at the target time.
    pub const FORECAST: &str = "forecast";
    /// Instance prices.
    pub const PRICE: &str = "price";
    /// Scaling decisions (one point per ScalingCommand).
    pub const DECISION: &str = "decision";
    /// Preemption commands per environment, action and tick.
    pub const PREEMPTION: &str = "preemption";
    /// Provisioned capacity per compute environment.
    pub const CAPACITY: &str = "capacity";
    /// Spend per compute environment.
    pub const SPEND: &str = "spend";
    /// Budget ledgers per scope and id.
    pub const BUDGET: &str = "budget";
    /// All measurements, for docs and dashboard checks.
    pub const ALL: [&str; 8] = [
        DEMAND, FORECAST, PRICE, DECISION, PREEMPTION, CAPACITY, SPEND, BUDGET,
    ];
}

/// Fields written per measurement (`decision` also carries one
/// `forecast_p<NN>` per quantile the command used).
pub const FIELDS: &[(&str, &[&str])] = &[
    (
        measurement::DEMAND,
        &["vcpus", "memory_mib", "gpus", "submissions"],
    ),
    (measurement::FORECAST, &["vcpus"]),
    (measurement::PRICE, &["usd_per_hour"]),
    (
        measurement::DECISION,
        &["min_vcpus", "desired_vcpus", "max_vcpus", "instances"],
    ),
    (measurement::PREEMPTION, &["jobs"]),
    (
        measurement::CAPACITY,
        &["vcpus", "booting_vcpus", "instances"],
    ),
    (measurement::SPEND, &["usd_total", "usd_per_hour"]),
    (
        measurement::BUDGET,
        &["allocated_usd", "committed_usd", "spent_usd"],
    ),
];

/// Tag names.
pub mod tag {
    pub const COMPUTE_ENVIRONMENT: &str = "compute_environment";
    pub const MODEL: &str = "model";
    pub const QUANTILE: &str = "quantile";
    pub const HORIZON_S: &str = "horizon_s";
    pub const PROVIDER: &str = "provider";
    pub const REGION: &str = "region";
    pub const ZONE: &str = "zone";
    pub const INSTANCE_TYPE: &str = "instance_type";
    pub const MARKET: &str = "market";
    pub const ACTION: &str = "action";
    pub const SCOPE: &str = "scope";
    pub const ID: &str = "id";
}

/// One point as a line of InfluxDB line protocol (with its trailing newline).
///
/// Why not `influxdb2::models::DataPoint`: that type holds two `BTreeMap`s of
/// owned `String`s, about ten allocations per point, paid on the decision
/// loop's thread. A `Point` is one `String` built in place, with the same
/// escaping and ordering as `DataPoint` (sorted tag and field keys), and the
/// writer sends the lines through the `influxdb2` client unchanged.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Point {
    line: String,
}

impl Point {
    /// The line, newline-terminated.
    pub fn line(&self) -> &str {
        &self.line
    }

    /// The measurement name (unescaped prefix up to the first unescaped `,` or space).
    pub fn measurement(&self) -> &str {
        let b = self.line.as_bytes();
        let mut i = 0;
        while i < b.len() {
            match b[i] {
                b'\\' => i += 2,
                b',' | b' ' => break,
                _ => i += 1,
            }
        }
        &self.line[..i.min(b.len())]
    }
}

impl From<DataPoint> for Point {
    fn from(p: DataPoint) -> Self {
        use influxdb2::models::WriteDataPoint;
        let mut v = Vec::new();
        // Writing into a Vec cannot fail.
        let _ = p.write_data_point_to(&mut v);
        Point {
            line: String::from_utf8_lossy(&v).into_owned(),
        }
    }
}

/// Appends `s` escaping the line-protocol delimiters `delims` with a
/// backslash. Newlines cannot be carried at all; they become escaped spaces.
fn push_escaped(out: &mut String, s: &str, delims: &[char]) {
    for c in s.chars() {
        match c {
            '\n' | '\r' => out.push_str("\\ "),
            c if delims.contains(&c) => {
                out.push('\\');
                out.push(c);
            }
            c => out.push(c),
        }
    }
}

const MEASUREMENT_DELIMS: &[char] = &[',', ' '];
const KEY_DELIMS: &[char] = &[',', '=', ' '];

/// Builds a point from tags and float fields, skipping non-finite fields
/// and empty tag values. Tags and fields must be given sorted by key.
fn point(
    measurement: &str,
    at: Millis,
    tags: &[(&str, &str)],
    fields: &[(&str, f64)],
) -> Option<Point> {
    use std::fmt::Write as _;
    debug_assert!(
        tags.windows(2).all(|w| w[0].0 < w[1].0),
        "tags sorted: {tags:?}"
    );
    debug_assert!(
        fields.windows(2).all(|w| w[0].0 < w[1].0),
        "fields sorted: {fields:?}"
    );
    if !fields.iter().any(|(_, v)| v.is_finite()) {
        return None;
    }
    let mut line = String::with_capacity(96);
    push_escaped(&mut line, measurement, MEASUREMENT_DELIMS);
    for (k, v) in tags {
        if !v.is_empty() {
            line.push(',');
            push_escaped(&mut line, k, KEY_DELIMS);
            line.push('=');
            push_escaped(&mut line, v, KEY_DELIMS);
        }
    }
    let mut first = true;
    for (k, v) in fields {
        if v.is_finite() {
            line.push(if first { ' ' } else { ',' });
            first = false;
            push_escaped(&mut line, k, KEY_DELIMS);
            let _ = write!(line, "={v}");
        }
    }
    let _ = writeln!(line, " {at}");
    Some(Point { line })
}

/// Observed demand of one bucket.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct Demand {
    /// Concurrent vCPUs requested (running + queued).
    pub vcpus: f64,
    /// Concurrent memory requested, MiB.
    pub memory_mib: f64,
    /// Concurrent GPUs requested.
    pub gpus: f64,
    /// Jobs submitted in the bucket.
    pub submissions: f64,
}

/// `demand` point: fields `vcpus`, `memory_mib`, `gpus`, `submissions`.
pub fn demand(compute_environment: &str, at: Millis, d: &Demand) -> Option<Point> {
    point(
        measurement::DEMAND,
        at,
        &[(tag::COMPUTE_ENVIRONMENT, compute_environment)],
        &[
            ("gpus", d.gpus),
            ("memory_mib", d.memory_mib),
            ("submissions", d.submissions),
            ("vcpus", d.vcpus),
        ],
    )
}

/// Formats a quantile level as its tag value (`0.1`, `0.5`, `0.9`).
pub fn quantile_tag(q: f64) -> String {
    format!("{q}")
}

/// `forecast` points for every horizon step and quantile of `f`: step `h`
/// (0-based) targets the bucket starting at `origin + h * bucket_ms`, so it is
/// stamped with that time and tagged `horizon_s = (h + 1) * bucket_s`; field
/// `vcpus`. Tags: `compute_environment`, `model`, `quantile`, `horizon_s`.
pub fn forecast(
    compute_environment: &str,
    model: &str,
    origin: Millis,
    bucket_ms: i64,
    f: &Forecast,
) -> Vec<Point> {
    let qtags: Vec<String> = f.quantiles.iter().map(|q| quantile_tag(*q)).collect();
    let mut out = Vec::with_capacity(f.values.len() * f.quantiles.len());
    for (h, row) in f.values.iter().enumerate() {
        let at = origin + h as i64 * bucket_ms;
        let horizon = ((h as i64 + 1) * bucket_ms / 1000).to_string();
        for (qi, v) in row.iter().enumerate() {
            let Some(qt) = qtags.get(qi) else { continue };
            if let Some(p) = point(
                measurement::FORECAST,
                at,
                &[
                    (tag::COMPUTE_ENVIRONMENT, compute_environment),
                    (tag::HORIZON_S, &horizon),
                    (tag::MODEL, model),
                    (tag::QUANTILE, qt),
                ],
                &[("vcpus", *v)],
            ) {
                out.push(p);
            }
        }
    }
    out
}

/// `price` point from a price tick: field `usd_per_hour`.
pub fn price(t: &PriceTick) -> Option<Point> {
    point(
        measurement::PRICE,
        t.at,
        &[
            (tag::INSTANCE_TYPE, &t.instance_type),
            (tag::MARKET, t.market.as_str()),
            (tag::PROVIDER, &t.provider),
            (tag::REGION, &t.region),
            (tag::ZONE, t.zone.as_deref().unwrap_or("")),
        ],
        &[("usd_per_hour", t.usd_per_hour)],
    )
}

/// `decision` point from a scaling command: fields `min_vcpus`,
/// `desired_vcpus`, `max_vcpus`, `instances`, and `forecast_p<NN>` for each
/// forecast quantile the command used (e.g. `forecast_p90`).
pub fn scaling(c: &ScalingCommand) -> Option<Point> {
    let instances: i64 = c.instance_mix.iter().map(|a| a.count as i64).sum();
    let mut fields: Vec<(String, f64)> = vec![
        ("min_vcpus".into(), c.min_vcpus as f64),
        ("desired_vcpus".into(), c.desired_vcpus as f64),
        ("max_vcpus".into(), c.max_vcpus as f64),
        ("instances".into(), instances as f64),
    ];
    for q in &c.forecast {
        fields.push((
            format!("forecast_p{}", (q.quantile * 100.0).round() as i64),
            q.vcpus,
        ));
    }
    fields.sort_by(|a, b| a.0.cmp(&b.0));
    fields.dedup_by(|a, b| a.0 == b.0);
    let fields: Vec<(&str, f64)> = fields.iter().map(|(k, v)| (k.as_str(), *v)).collect();
    point(
        measurement::DECISION,
        c.issued_at,
        &[(tag::COMPUTE_ENVIRONMENT, &c.compute_environment)],
        &fields,
    )
}

/// `preemption` points: commands grouped by (environment, action, issued_at),
/// field `jobs` = how many jobs got that action in that tick. Grouping keeps
/// job ids out of tags (unbounded cardinality) while still showing decisions.
pub fn preemptions<'a>(cmds: impl IntoIterator<Item = &'a PreemptionCommand>) -> Vec<Point> {
    let mut groups: BTreeMap<(&str, &'static str, Millis), f64> = BTreeMap::new();
    for c in cmds {
        *groups
            .entry((c.compute_environment.as_str(), action_str(c), c.issued_at))
            .or_default() += 1.0;
    }
    groups
        .into_iter()
        .filter_map(|((env, action, at), n)| {
            point(
                measurement::PREEMPTION,
                at,
                &[(tag::ACTION, action), (tag::COMPUTE_ENVIRONMENT, env)],
                &[("jobs", n)],
            )
        })
        .collect()
}

fn action_str(c: &PreemptionCommand) -> &'static str {
    use crate::events::PreemptionAction as A;
    match c.action {
        A::Queue => "queue",
        A::Preempt => "preempt",
        A::Migrate => "migrate",
        A::Resume => "resume",
    }
}

/// Lower-case kind of a command, as used by the `prescale_decisions_total`
/// metric: `scaling` or the preemption action.
pub fn command_kind(c: &Command) -> &'static str {
    match c {
        Command::Scaling(_) => "scaling",
        Command::Preemption(p) => action_str(p),
    }
}

/// Points for a batch of commands: one `decision` per scaling command plus
/// grouped `preemption` points.
pub fn commands(cmds: &[Command]) -> Vec<Point> {
    let mut out: Vec<Point> = cmds
        .iter()
        .filter_map(|c| match c {
            Command::Scaling(s) => scaling(s),
            Command::Preemption(_) => None,
        })
        .collect();
    out.extend(preemptions(cmds.iter().filter_map(|c| match c {
        Command::Preemption(p) => Some(p),
        Command::Scaling(_) => None,
    })));
    out
}

/// `capacity` point: provisioned capacity of an environment; fields `vcpus`
/// (running instances' vCPUs), `booting_vcpus`, `instances`.
pub fn capacity(
    compute_environment: &str,
    at: Millis,
    vcpus: f64,
    booting_vcpus: f64,
    instances: f64,
) -> Option<Point> {
    point(
        measurement::CAPACITY,
        at,
        &[(tag::COMPUTE_ENVIRONMENT, compute_environment)],
        &[
            ("booting_vcpus", booting_vcpus),
            ("instances", instances),
            ("vcpus", vcpus),
        ],
    )
}

/// `spend` point: fields `usd_total` (cumulative) and `usd_per_hour` (current
/// burn rate) of an environment.
pub fn spend(
    compute_environment: &str,
    at: Millis,
    usd_total: f64,
    usd_per_hour: f64,
) -> Option<Point> {
    point(
        measurement::SPEND,
        at,
        &[(tag::COMPUTE_ENVIRONMENT, compute_environment)],
        &[("usd_per_hour", usd_per_hour), ("usd_total", usd_total)],
    )
}

/// `budget` point for one ledger (`scope` = job | project | user): fields
/// `allocated_usd`, `committed_usd`, `spent_usd`.
pub fn budget(
    scope: &str,
    id: &str,
    at: Millis,
    allocated_usd: f64,
    committed_usd: f64,
    spent_usd: f64,
) -> Option<Point> {
    point(
        measurement::BUDGET,
        at,
        &[(tag::ID, id), (tag::SCOPE, scope)],
        &[
            ("allocated_usd", allocated_usd),
            ("committed_usd", committed_usd),
            ("spent_usd", spent_usd),
        ],
    )
}

/// Concatenates points into a line-protocol body (what the writer sends).
pub fn to_line_protocol(points: &[Point], out: &mut Vec<u8>) {
    for p in points {
        out.extend_from_slice(p.line.as_bytes());
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::events::{InstanceAllocation, Market, PreemptionAction, QuantileValue};

    fn lp(points: &[Point]) -> String {
        let mut v = Vec::new();
        to_line_protocol(points, &mut v);
        String::from_utf8(v).unwrap()
    }

    #[test]
    fn same_line_as_influxdb2_data_point() {
        let ours = point(
            "m x",
            7,
            &[("a", "v,1"), ("b=c", "w x")],
            &[("f", 1.5), ("g", -2.0)],
        )
        .unwrap();
        let theirs = DataPoint::builder("m x")
            .tag("b=c", "w x")
            .tag("a", "v,1")
            .field("g", -2.0)
            .field("f", 1.5)
            .timestamp(7)
            .build()
            .unwrap();
        assert_eq!(ours, Point::from(theirs));
        assert_eq!(ours.measurement(), "m\\ x");
    }

    #[test]
    fn newlines_in_tags_cannot_break_the_line() {
        let p = demand(
            "a\nb",
            1,
            &Demand {
                vcpus: 1.0,
                ..Default::default()
            },
        )
        .unwrap();
        assert_eq!(p.line().matches('\n').count(), 1, "{:?}", p.line());
    }

    #[test]
    fn demand_line_protocol_is_exact() {
        let p = demand(
            "ce a",
            1_700_000_000_000,
            &Demand {
                vcpus: 12.5,
                memory_mib: 2048.0,
                gpus: 0.0,
                submissions: 3.0,
            },
        )
        .unwrap();
        assert_eq!(
            lp(&[p]),
            "demand,compute_environment=ce\\ a gpus=0,memory_mib=2048,submissions=3,vcpus=12.5 1700000000000\n"
        );
    }

    #[test]
    fn non_finite_fields_are_skipped_and_all_non_finite_gives_none() {
        let p = demand(
            "x",
            0,
            &Demand {
                vcpus: f64::NAN,
                memory_mib: 1.0,
                gpus: f64::INFINITY,
                submissions: 0.0,
            },
        )
        .unwrap();
        let s = lp(&[p]);
        assert!(!s.contains("vcpus") && !s.contains("gpus"), "{s}");
        assert!(spend("x", 0, f64::NAN, f64::NAN).is_none());
    }

    #[test]
    fn forecast_points_cover_each_step_and_quantile() {
        let f = Forecast {
            quantiles: vec![0.1, 0.5, 0.9],
            values: vec![vec![1.0, 2.0, 3.0], vec![2.0, 3.0, f64::NAN]],
        };
        let pts = forecast("ce", "lstm", 600_000, 300_000, &f);
        assert_eq!(pts.len(), 5);
        let s = lp(&pts);
        assert!(s.contains("forecast,compute_environment=ce,horizon_s=300,model=lstm,quantile=0.1 vcpus=1 600000\n"), "{s}");
        assert!(s.contains("forecast,compute_environment=ce,horizon_s=600,model=lstm,quantile=0.5 vcpus=3 900000\n"), "{s}");
    }

    #[test]
    fn price_without_zone_omits_the_tag() {
        let t = PriceTick {
            at: 5,
            provider: "aws".into(),
            region: "us-east-1".into(),
            zone: None,
            instance_type: "m5.large".into(),
            market: Market::Spot,
            usd_per_hour: 0.031,
        };
        let s = lp(&[price(&t).unwrap()]);
        assert!(!s.contains("zone="), "{s}");
        assert!(s.starts_with("price,instance_type=m5.large,market="), "{s}");
    }

    #[test]
    fn commands_become_decision_and_grouped_preemption_points() {
        let sc = ScalingCommand {
            command_id: "c1".into(),
            issued_at: 1000,
            compute_environment: "ce".into(),
            min_vcpus: 2,
            desired_vcpus: 8,
            max_vcpus: 16,
            instance_mix: vec![InstanceAllocation {
                instance_type: "m5.large".into(),
                market: Market::Spot,
                region: "r".into(),
                count: 4,
            }],
            constraints: Default::default(),
            forecast: vec![QuantileValue {
                quantile: 0.9,
                vcpus: 7.5,
            }],
            reason: "test".into(),
        };
        let pre = |job: &str| PreemptionCommand {
            command_id: format!("p-{job}"),
            issued_at: 1000,
            job_id: job.into(),
            compute_environment: "ce".into(),
            action: PreemptionAction::Preempt,
            reason: "budget".into(),
        };
        let cmds = vec![
            Command::Scaling(sc),
            Command::Preemption(pre("a")),
            Command::Preemption(pre("b")),
        ];
        let s = lp(&commands(&cmds));
        assert!(s.contains("decision,compute_environment=ce desired_vcpus=8,forecast_p90=7.5,instances=4,max_vcpus=16,min_vcpus=2 1000\n"), "{s}");
        assert!(
            s.contains("preemption,action=preempt,compute_environment=ce jobs=2 1000\n"),
            "{s}"
        );
        assert_eq!(command_kind(&cmds[1]), "preempt");
    }
}
