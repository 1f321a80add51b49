//! The AWS variants of `prescale actuate`: flags and construction of the ASG and Batch
//! actuators (the Kafka runtime and its common flags live in `cli::actuate`).

use anyhow::Context;
use prescale::io::aws::asg::AsgActuator;
use prescale::io::aws::batch::BatchActuator;
use prescale::io::aws::config::Mapping;
use prescale::io::aws::{sdk_config, AwsConnect};
use std::path::PathBuf;

/// Where the AWS resources are and how to reach them.
#[derive(Debug, Clone, clap::Args)]
pub struct AwsArgs {
    /// Mapping file (TOML): prescale environment → Auto Scaling group, or → spot and on-demand
    /// compute environments + job queue (see docs/actuators.md).
    #[arg(long, value_name = "FILE", env = "PRESCALE_AWS_MAPPING")]
    pub mapping: PathBuf,
    /// Another AWS endpoint for every call (moto, LocalStack, a VPC endpoint). Credentials and
    /// region otherwise come from the standard AWS chain (env, profile, SSO, instance role).
    #[arg(long, value_name = "URL", env = "PRESCALE_AWS_ENDPOINT")]
    pub endpoint_url: Option<String>,
    /// AWS region (default: AWS_REGION / the profile's region).
    #[arg(long)]
    pub region: Option<String>,
    /// Attempts per API call by the SDK's standard retry (throttling, 5xx, timeouts) before
    /// the command counts as failed (transient: the runtime retries it later).
    #[arg(long, default_value_t = 5, value_parser = clap::value_parser!(u32).range(1..=20))]
    pub sdk_max_attempts: u32,
}

impl AwsArgs {
    async fn load(&self) -> anyhow::Result<(aws_config::SdkConfig, Mapping)> {
        let mapping = Mapping::load(&self.mapping)
            .with_context(|| format!("loading the mapping file {}", self.mapping.display()))?;
        let sdk = sdk_config(&AwsConnect {
            endpoint_url: self.endpoint_url.clone(),
            region: self.region.clone(),
            max_attempts: self.sdk_max_attempts,
        })
        .await;
        Ok((sdk, mapping))
    }

    pub async fn asg(&self) -> anyhow::Result<AsgActuator> {
        let (sdk, mapping) = self.load().await?;
        anyhow::ensure!(
            !mapping.asg.is_empty(),
            "{}: no [asg.<environment>] entries",
            self.mapping.display()
        );
        Ok(AsgActuator::new(&sdk, &mapping))
    }

    pub async fn batch(&self) -> anyhow::Result<BatchActuator> {
        let (sdk, mapping) = self.load().await?;
        anyhow::ensure!(
            !mapping.batch.is_empty(),
            "{}: no [batch.<environment>] entries",
            self.mapping.display()
        );
        Ok(BatchActuator::new(&sdk, &mapping))
    }
}
