//! Building the decision engine from configuration, in one place. `prescale
//! run`, `backtest`, `serve`, the benchmarks and the tests build their
//! engines here, with the same engine configuration, forecaster and planner,
//! which is what makes a replay through Kafka decide what the backtest
//! decides. It picks the implementations (the shipped LSTM or the
//! statistical model, the cost-aware planner) that the engine sees only
//! through its ports, and reads the files that configure them.

use crate::engine::{CapacityPlanner, Engine, EngineConfig, EngineState};
use crate::events::{Command, Event};
use crate::forecast::Forecaster;
use crate::planner::CostAwarePlanner;
use crate::policy::{PolicyError, PolicyFile};
use crate::pricing::{Catalog, CatalogError};
use std::path::Path;
use std::sync::Arc;

/// The on-demand catalogue the backtest and the service use by default
/// (compiled in, so both work from any directory).
pub const SAMPLE_CATALOG: &[u8] = include_bytes!("../data/aws-ondemand-us-east-1.csv");
/// The name [`SAMPLE_CATALOG`] goes by in reports and messages.
pub const SAMPLE_CATALOG_NAME: &str = "data/aws-ondemand-us-east-1.csv";

/// The shipped LSTM checkpoint, used when it fits the engine's bucket and
/// horizon.
const SHIPPED_MODEL: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/models/lstm/model.json");

/// Configuration that could not be read.
#[derive(Debug, thiserror::Error)]
pub enum WiringError {
    #[error("loading {path}")]
    Catalog {
        path: String,
        #[source]
        source: CatalogError,
    },
    #[error(transparent)]
    BundledCatalog(CatalogError),
    #[error(transparent)]
    Policy(#[from] PolicyError),
}

/// Builds engines from one configuration and policy, fresh or restored.
#[derive(Clone)]
pub struct EngineFactory {
    pub config: EngineConfig,
    pub catalog: Arc<Catalog>,
    pub forecaster: Arc<dyn Forecaster>,
    pub planner: Arc<dyn CapacityPlanner>,
}

impl EngineFactory {
    /// The default engine configuration around a catalogue, forecaster and
    /// planner.
    pub fn new(
        catalog: Arc<Catalog>,
        forecaster: Arc<dyn Forecaster>,
        planner: Arc<dyn CapacityPlanner>,
    ) -> Self {
        EngineFactory {
            config: EngineConfig::default(),
            catalog,
            forecaster,
            planner,
        }
    }

    /// A fresh engine (what a file replay uses).
    pub fn engine(&self) -> Engine {
        Engine::new(
            self.config.clone(),
            self.catalog.clone(),
            self.forecaster.clone(),
            self.planner.clone(),
        )
    }

    /// A fresh engine, or one restored from a snapshot's engine state.
    pub fn engine_from(&self, restore: Option<&serde_json::Value>) -> Result<Engine, String> {
        Ok(match restore {
            None => self.engine(),
            Some(v) => {
                let st: EngineState = serde_json::from_value(v.clone()).map_err(|e| {
                    format!("snapshot engine state does not match this version: {e}")
                })?;
                Engine::restore(
                    self.config.clone(),
                    st,
                    self.catalog.clone(),
                    self.forecaster.clone(),
                    self.planner.clone(),
                )
            }
        })
    }

    /// The commands a file replay decides for `events` (in order), ending
    /// with `finish` as the backtest does at end of input.
    pub fn replay(&self, events: &[Event]) -> Vec<Command> {
        let mut e = self.engine();
        let mut out = Vec::new();
        for ev in events {
            e.handle(ev, &mut out);
        }
        e.finish(&mut out);
        out
    }
}

/// Picks the forecaster and planner of an engine for a policy (see
/// [`decision_core`]); a parameter where a caller may pass another.
pub type DecisionCore = fn(&Catalog, PolicyFile) -> (Arc<dyn Forecaster>, Arc<dyn CapacityPlanner>);

/// The forecaster and planner the engine runs with: the shipped LSTM (or
/// the statistical model, see [`default_forecaster`]) and the cost-aware
/// planner under `policy`.
pub fn decision_core(
    _catalog: &Catalog,
    policy: PolicyFile,
) -> (Arc<dyn Forecaster>, Arc<dyn CapacityPlanner>) {
    (
        default_forecaster(),
        Arc::new(CostAwarePlanner::new(policy)),
    )
}

/// The shipped LSTM (`models/lstm`), or the statistical model (ETS) when the
/// checkpoint is missing, corrupt or made for another bucket or horizon;
/// the reason goes to stderr, the one place a user of the CLI sees it.
pub fn default_forecaster() -> Arc<dyn Forecaster> {
    let (f, err) = crate::model_file::load_or_fallback(Path::new(SHIPPED_MODEL), 300_000, 12);
    if let Some(e) = err {
        eprintln!("forecaster: {e}; using the statistical model (ETS)");
    }
    Arc::new(f)
}

/// The engine the service runs, with `forecaster` instead of the default
/// one when given (the backtest's oracle).
pub fn make_engine(
    catalog: Arc<Catalog>,
    forecaster: Option<Arc<dyn Forecaster>>,
    policy: &PolicyFile,
) -> Engine {
    let (default_fc, planner) = decision_core(&catalog, policy.clone());
    EngineFactory::new(catalog, forecaster.unwrap_or(default_fc), planner).engine()
}

/// The engine `prescale serve` answers from: the policy's cost-aware
/// planner (so budget admissions follow each environment's over-budget
/// policy as in `prescale run`) and `forecaster`, over `state`'s buckets.
pub fn serve_engine(
    catalog: Arc<Catalog>,
    policy: &PolicyFile,
    forecaster: Arc<dyn Forecaster>,
    state: crate::state::StateConfig,
) -> Engine {
    let planner = Arc::new(CostAwarePlanner::new(policy.clone()));
    let mut factory = EngineFactory::new(catalog, forecaster, planner);
    factory.config.state = state;
    factory.engine()
}

/// The policy file at `path`, or the defaults (see `policy::EnvPolicy`).
/// A provisioning quantile beyond the levels the engine forecasts is named
/// on stderr: the planner provisions it at the nearest level.
pub fn load_policy(path: Option<&Path>) -> Result<PolicyFile, PolicyError> {
    let policy = match path {
        Some(p) => PolicyFile::load(p)?,
        None => PolicyFile::default(),
    };
    let levels = crate::engine::EngineConfig::default().quantiles;
    let lo = levels.iter().copied().fold(f64::INFINITY, f64::min);
    let hi = levels.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    for (key, v) in policy.quantiles_outside(lo, hi) {
        let near = if v > hi { hi } else { lo };
        eprintln!(
            "policy {}: {key} = {v} is outside the forecast's levels {lo}..{hi}; \
             it provisions at {near}",
            policy.origin
        );
    }
    Ok(policy)
}

/// The catalogue at `path`, or the bundled one ([`SAMPLE_CATALOG`]), so the
/// service and the backtest decide over the same offers.
pub fn load_catalog(path: Option<&Path>) -> Result<Catalog, WiringError> {
    match path {
        Some(p) => Catalog::load(p).map_err(|source| WiringError::Catalog {
            path: p.display().to_string(),
            source,
        }),
        None => {
            Catalog::parse(SAMPLE_CATALOG, SAMPLE_CATALOG_NAME).map_err(WiringError::BundledCatalog)
        }
    }
}

/// The engines `prescale run` (and `bench kafka`) runs: the catalogue and
/// policy from their files (or the defaults), the forecaster and planner of
/// `core`.
pub fn engine_factory(
    catalog: Option<&Path>,
    policy: Option<&Path>,
    core: DecisionCore,
) -> Result<EngineFactory, WiringError> {
    let catalog = Arc::new(load_catalog(catalog)?);
    let (forecaster, planner) = core(&catalog, load_policy(policy)?);
    Ok(EngineFactory::new(catalog, forecaster, planner))
}
