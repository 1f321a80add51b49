//! LSTM checkpoint files: where the forecaster's checkpoint bytes
//! ([`LstmForecaster::to_checkpoint`] / [`LstmForecaster::from_checkpoint`])
//! meet the file system, so the forecasting core itself does no I/O.
//!
//! A file is written whole to a temporary name beside it and renamed into
//! place, so a crash while saving (a retraining run killed mid-write) leaves
//! the previous model, never half of a new one, for the next start to load.

use crate::forecast::{FallbackForecaster, ForecastError, LstmForecaster};
use std::io::Write;
use std::path::Path;

/// Write `model`'s checkpoint to `path`, creating its directory.
pub fn save(model: &LstmForecaster, path: &Path) -> Result<(), ForecastError> {
    let io = |source| ForecastError::Io {
        path: path.display().to_string(),
        source,
    };
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).map_err(io)?;
    }
    let mut tmp_name = path.as_os_str().to_owned();
    tmp_name.push(".tmp");
    let tmp = Path::new(&tmp_name);
    let mut f = std::fs::File::create(tmp).map_err(io)?;
    f.write_all(&model.to_checkpoint()).map_err(io)?;
    f.sync_all().map_err(io)?;
    std::fs::rename(tmp, path).map_err(io)
}

/// Read and verify the checkpoint at `path` (see
/// [`LstmForecaster::from_checkpoint`]).
pub fn load(path: &Path) -> Result<LstmForecaster, ForecastError> {
    let origin = path.display().to_string();
    let bytes = std::fs::read(path).map_err(|source| ForecastError::Io {
        path: origin.clone(),
        source,
    })?;
    LstmForecaster::from_checkpoint(&bytes, &origin)
}

/// The checkpoint at `path` for use at `bucket_ms` / `horizon`; on any
/// problem (missing, corrupt, mismatched) the statistical model and the
/// typed error instead of failing.
pub fn load_or_fallback(
    path: &Path,
    bucket_ms: i64,
    horizon: usize,
) -> (FallbackForecaster, Option<ForecastError>) {
    let origin = path.display().to_string();
    let loaded = load(path).and_then(|m| {
        m.expect(bucket_ms, horizon, &origin)?;
        Ok(m)
    });
    FallbackForecaster::from_loaded(loaded)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::forecast::Forecaster;

    #[test]
    fn a_missing_or_corrupt_file_falls_back_to_statistical() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("bad.json");
        std::fs::write(&p, b"{not json").unwrap();
        let (f, err) = load_or_fallback(&p, 300_000, 12);
        assert!(matches!(err, Some(ForecastError::Corrupt { .. })));
        assert!(err.unwrap().to_string().contains("bad.json"));
        assert_eq!(f.name(), "ets");
        let (f, err) = load_or_fallback(&dir.path().join("missing.json"), 300_000, 12);
        assert!(matches!(err, Some(ForecastError::Io { .. })));
        assert_eq!(f.name(), "ets");
    }

    #[test]
    fn the_shipped_model_round_trips_through_a_file_and_leaves_no_temporary() {
        let shipped = load(Path::new(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/models/lstm/model.json"
        )))
        .unwrap();
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("sub/model.json");
        save(&shipped, &p).unwrap();
        assert_eq!(std::fs::read(&p).unwrap(), shipped.to_checkpoint());
        assert!(!dir.path().join("sub/model.json.tmp").exists());
        let (f, err) = load_or_fallback(&p, 300_000, 12);
        assert!(err.is_none());
        assert_eq!(f.name(), "lstm");
        // made for another bucket width: refused, named, fallback
        let (f, err) = load_or_fallback(&p, 60_000, 12);
        assert!(matches!(err, Some(ForecastError::Mismatch { .. })));
        assert_eq!(f.name(), "ets");
    }
}
