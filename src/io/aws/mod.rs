//! AWS adapters (feature `aws`): actuators that apply prescale's commands to EC2 Auto Scaling
//! groups ([`asg`]) and AWS Batch compute environments ([`batch`]), and a producer that turns
//! AWS Batch job events into prescale's input events ([`ingest`]).
//!
//! The decision core never sees AWS: the actuators implement the shared
//! [`Actuator`](crate::io::actuate::Actuator) trait, whose runtime owns the Kafka loop, the
//! ledger of applied commands, retries and dead letters. What lives here is the mapping from a
//! command to API calls, kept in pure functions ([`asg::plan`], [`batch::plan`]) so it is tested
//! without an endpoint, and the SDK calls around them.
//!
//! Credentials and region come from the AWS SDK's standard chain (environment, profile, SSO,
//! container or instance role); `--endpoint-url` points every client at another endpoint (a
//! moto server in the tests). Throttling and 5xx answers are retried by the SDK's standard retry
//! (exponential backoff with jitter); what is still failing afterwards is reported as
//! [`Retry::Transient`] so the runtime retries it later instead of dropping it.

pub mod asg;
pub mod batch;
pub mod config;
pub mod ingest;
pub use crate::io::actuate::{ActuateError, Actuator, Retry};

use aws_config::retry::RetryConfig;
use aws_config::timeout::TimeoutConfig;
use aws_config::{BehaviorVersion, Region, SdkConfig};
use std::time::Duration;

/// How to reach AWS: the standard chain, with an optional endpoint and region override.
#[derive(Debug, Clone, Default)]
pub struct AwsConnect {
    /// Another endpoint for every service (a moto server, a VPC endpoint, LocalStack).
    pub endpoint_url: Option<String>,
    /// Region override; otherwise `AWS_REGION` / the profile's region.
    pub region: Option<String>,
    /// Attempts per call by the SDK's standard retry (throttling, 5xx, timeouts).
    pub max_attempts: u32,
}

/// Load the SDK configuration from the standard chain.
pub async fn sdk_config(c: &AwsConnect) -> SdkConfig {
    let retry = RetryConfig::standard()
        .with_max_attempts(c.max_attempts.max(1))
        .with_initial_backoff(Duration::from_millis(100))
        .with_max_backoff(Duration::from_secs(5));
    // Bounded calls, so a hung endpoint can never stall the consumer for long.
    let timeouts = TimeoutConfig::builder()
        .connect_timeout(Duration::from_secs(5))
        .operation_attempt_timeout(Duration::from_secs(20))
        .operation_timeout(Duration::from_secs(60))
        .build();
    let mut loader = aws_config::defaults(BehaviorVersion::latest())
        .retry_config(retry)
        .timeout_config(timeouts);
    if let Some(url) = &c.endpoint_url {
        loader = loader.endpoint_url(url.clone());
    }
    if let Some(r) = &c.region {
        loader = loader.region(Region::new(r.clone()));
    }
    loader.load().await
}

/// Error codes AWS uses for throttling and temporary trouble; retrying later is right.
const TRANSIENT_CODES: &[&str] = &[
    "Throttling",
    "ThrottlingException",
    "ThrottledException",
    "RequestThrottled",
    "RequestThrottledException",
    "RequestLimitExceeded",
    "TooManyRequestsException",
    "ProvisionedThroughputExceededException",
    "ServiceUnavailable",
    "ServiceUnavailableException",
    "InternalFailure",
    "InternalError",
    "ServerException",
    "RequestTimeout",
    "RequestTimeoutException",
    // EC2 Auto Scaling: another update or scaling activity holds the group.
    "ResourceContention",
    "ScalingActivityInProgress",
];

/// Map an SDK error to the runtime's retry decision, with a message naming the call and target.
pub(crate) fn classify<E>(
    call: &str,
    target: &str,
    err: &aws_sdk_autoscaling::error::SdkError<E, aws_sdk_autoscaling::config::http::HttpResponse>,
) -> ActuateError
where
    E: aws_sdk_autoscaling::error::ProvideErrorMetadata + std::error::Error + 'static,
{
    use aws_sdk_autoscaling::error::SdkError;
    let msg = |detail: String| format!("{call} {target}: {detail}");
    match err {
        SdkError::ServiceError(ctx) => {
            let code = ctx.err().code().unwrap_or("unknown");
            let status = ctx.raw().status().as_u16();
            let text = msg(format!(
                "{code} (HTTP {status}): {}",
                ctx.err().message().unwrap_or("")
            ));
            if TRANSIENT_CODES.contains(&code) || status >= 500 || status == 429 {
                ActuateError::transient(text)
            } else {
                ActuateError::permanent(text)
            }
        }
        SdkError::ConstructionFailure(_) => {
            ActuateError::permanent(msg(format!("request not built: {err:?}")))
        }
        // Timeouts, connection failures, unreadable answers: the endpoint may come back.
        _ => ActuateError::transient(msg(format!("{}", DisplayChain(err)))),
    }
}

/// An error with its sources, `a: b: c` (the SDK's Display alone says only "dispatch failure").
struct DisplayChain<'a>(&'a (dyn std::error::Error + 'static));

impl std::fmt::Display for DisplayChain<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.0)?;
        let mut cur = self.0.source();
        while let Some(e) = cur {
            write!(f, ": {e}")?;
            cur = e.source();
        }
        Ok(())
    }
}

/// The tags prescale writes on what it changed, so an operator sees in the console which
/// command last set a group or compute environment.
pub mod tags {
    pub const LAST_COMMAND_ID: &str = "prescale:last-command-id";
    pub const LAST_ISSUED_AT: &str = "prescale:last-issued-at";
    pub const MANAGED_BY: &str = "prescale:managed-by";
}

/// vCPUs of a command's instance mix, split by market. Reserved capacity is on-demand capacity
/// with a billing discount, so it counts as on-demand. Unknown instance types are an error
/// (a permanent one: the command cannot be applied as written).
pub(crate) fn market_vcpus(
    cmd: &crate::events::ScalingCommand,
    vcpus: &config::InstanceVcpus,
) -> Result<MarketSplit, ActuateError> {
    use crate::events::Market;
    let mut s = MarketSplit::default();
    for a in &cmd.instance_mix {
        let v = vcpus.get(&a.instance_type).ok_or_else(|| {
            ActuateError::permanent(format!(
                "command {}: instance_mix: unknown instance type `{}` (add it under [instance_vcpus] in the mapping file)",
                cmd.command_id, a.instance_type
            ))
        })?;
        let total = v * f64::from(a.count.max(0));
        match a.market {
            Market::Spot => s.spot += total,
            Market::OnDemand | Market::Reserved => s.on_demand += total,
        }
    }
    Ok(s)
}

/// vCPUs bought on each market.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub(crate) struct MarketSplit {
    pub spot: f64,
    pub on_demand: f64,
}

impl MarketSplit {
    pub fn total(&self) -> f64 {
        self.spot + self.on_demand
    }
}
