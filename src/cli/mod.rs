//! Sub-commands. Each lives in its own file with its `Args` and `run`.

use clap::{Parser, Subcommand};

mod actuate;
#[cfg(feature = "aws")]
mod actuate_aws;
mod actuate_slurm;
mod backtest;
#[cfg(feature = "bench")]
mod bench;
#[cfg(not(feature = "bench"))]
mod bench_absent;
#[cfg(feature = "bench")]
pub mod bench_kafka;
#[cfg(feature = "bench")]
mod bench_sparse;
#[cfg(feature = "bench")]
mod bench_spot;
#[cfg(feature = "bench")]
mod bench_store;
pub mod forecast;
mod import;
pub mod ingest;
#[cfg(feature = "aws")]
mod ingest_batch;
mod ingest_slurm;
mod inputs;
pub mod produce;
pub mod run;
pub mod serve;
pub mod tail;
pub mod train;
mod values;

#[derive(Debug, Parser)]
#[command(
    name = "prescale",
    version,
    about = "Scale batch compute before demand arrives, at the lowest price that meets deadlines and budgets",
    long_about = "prescale reads scheduler events (job submissions and completions, price ticks), \
forecasts demand per compute environment, and decides each environment's capacity and instance mix \
ahead of need. Run `prescale backtest` to compare scaling policies on the bundled sample trace."
)]
pub struct Cli {
    #[command(subcommand)]
    pub cmd: Cmd,
}

#[derive(Debug, Subcommand)]
pub enum Cmd {
    // one line per sub-command; keep alphabetical to ease merges
    /// Apply the command topics to real compute environments (EC2 Auto Scaling, AWS Batch, Slurm, a file).
    Actuate(actuate::ActuateArgs),
    /// Replay a trace with real prices through the engine and a simulated cluster; compare policies.
    Backtest(backtest::BacktestArgs),
    /// Throughput benchmarks (events/s).
    #[cfg(feature = "bench")]
    Bench(bench::BenchArgs),
    /// Benchmarks: not in this build (rebuild with `--features bench`).
    #[cfg(not(feature = "bench"))]
    Bench(bench_absent::BenchArgs),
    /// Turn public traces and price histories into events files.
    Import(import::ImportArgs),
    /// Turn a live scheduler's jobs (Slurm; AWS Batch with feature `aws`) into input events.
    Ingest(ingest::IngestArgs),
    /// Evaluate forecasters on a trace (rolling origin, after the training cut).
    Forecast(forecast::ForecastArgs),
    /// Serve the HTTP API (predict_demand, get_optimal_instance, allocate_budget).
    Serve(serve::ServeArgs),
    /// Publish an events file, SWF trace or price history to the input topics.
    Produce(produce::ProduceArgs),
    /// The live service: consume input topics, decide, publish commands (Kafka).
    Run(run::RunArgs),
    /// Decode the command topics and print them as JSON lines.
    Tail(tail::TailArgs),
    /// Train the LSTM forecaster on a trace; writes a checkpoint and model card.
    Train(train::TrainArgs),
}

pub fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.cmd {
        Cmd::Actuate(a) => actuate::run(a),
        Cmd::Backtest(a) => backtest::run(a),
        #[cfg(feature = "bench")]
        Cmd::Bench(a) => bench::run(a),
        #[cfg(not(feature = "bench"))]
        Cmd::Bench(a) => bench_absent::run(a),
        Cmd::Import(a) => import::run(a),
        Cmd::Ingest(a) => ingest::run(a),
        Cmd::Forecast(a) => forecast::run(a),
        Cmd::Serve(a) => serve::run(a),
        Cmd::Train(a) => train::run(a),
        Cmd::Produce(a) => produce::run(a),
        Cmd::Run(a) => run::run(a, prescale::wiring::decision_core),
        Cmd::Tail(a) => tail::run(a),
    }
}
