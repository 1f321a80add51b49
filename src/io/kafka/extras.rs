//! Settings of what `prescale run` does besides consuming and deciding: the
//! prediction store it writes to and periodic retraining. Plain data, layered
//! like [`super::config::KafkaConfig`]: defaults < the same TOML file
//! (`[store]`, `[retrain]` tables) < environment < flags.
//!
//! Environment: the store keeps the names `docs/telemetry.md` documents for
//! the writer (`PRESCALE_INFLUX_URL`, `_ORG`, `_BUCKET`, `_TOKEN`, and
//! `INFLUX_TOKEN` as a fallback token); retraining reads
//! `PRESCALE_RETRAIN_<FIELD>` (e.g. `PRESCALE_RETRAIN_INTERVAL_S`).

use crate::io::retrain::RetrainConfig;
use crate::store::StoreConfig;
use figment::providers::{Env, Format, Serialized, Toml};
use figment::Figment;
use serde::Serialize;
use std::path::{Path, PathBuf};

use super::config::ConfigError;

/// Store and retraining settings of the service.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct ServiceExtras {
    /// `None`: no store configured (no `url` at any layer); nothing written.
    pub store: Option<StoreConfig>,
    pub retrain: RetrainConfig,
}

/// Flag values (unset flags leave lower layers alone).
#[derive(Debug, Clone, Default)]
pub struct ExtrasOverrides {
    pub store_url: Option<String>,
    pub store_org: Option<String>,
    pub store_bucket: Option<String>,
    pub store_token: Option<String>,
    pub retrain_interval_s: Option<u64>,
    pub models_dir: Option<PathBuf>,
}

#[derive(Serialize)]
struct StoreFlags<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    url: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    org: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    bucket: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    token: Option<&'a str>,
}

#[derive(Serialize)]
struct RetrainFlags<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    interval_s: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    models_dir: Option<&'a Path>,
}

impl ServiceExtras {
    /// Load from the service's TOML file (if any), the environment and flags.
    pub fn load(file: Option<&Path>, ov: &ExtrasOverrides) -> Result<Self, ConfigError> {
        Self::load_with_env(
            file,
            ov,
            Env::prefixed("PRESCALE_INFLUX_").only(&["url", "org", "bucket", "token"]),
            Env::raw().only(&["influx_token"]).map(|_| "token".into()),
            Env::prefixed("PRESCALE_RETRAIN_"),
        )
    }

    fn load_with_env(
        file: Option<&Path>,
        ov: &ExtrasOverrides,
        store_env: Env,
        token_fallback: Env,
        retrain_env: Env,
    ) -> Result<Self, ConfigError> {
        let err = |e| ConfigError::Figment(Box::new(e));
        let mut base = Figment::new();
        if let Some(p) = file {
            base = base.merge(Toml::file_exact(p));
        }
        // Store: file `[store]` < env < flags; a store exists once a URL does.
        let store = Figment::new()
            .merge(base.clone().focus("store"))
            .merge(store_env)
            .join(token_fallback)
            .merge(Serialized::defaults(StoreFlags {
                url: ov.store_url.as_deref(),
                org: ov.store_org.as_deref(),
                bucket: ov.store_bucket.as_deref(),
                token: ov.store_token.as_deref(),
            }));
        let has_url = store
            .extract_inner::<String>("url")
            .map(|u| !u.is_empty())
            .unwrap_or(false);
        let store = if has_url {
            let defaults = Figment::from(Serialized::defaults(StoreConfig::default()));
            Some(defaults.merge(store).extract().map_err(err)?)
        } else {
            None
        };
        let retrain = Figment::from(Serialized::defaults(RetrainConfig::default()))
            .merge(base.focus("retrain"))
            .merge(retrain_env)
            .merge(Serialized::defaults(RetrainFlags {
                interval_s: ov.retrain_interval_s,
                models_dir: ov.models_dir.as_deref(),
            }))
            .extract()
            .map_err(err)?;
        Ok(ServiceExtras { store, retrain })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(prefix: &str) -> Env {
        Env::prefixed(prefix)
    }

    #[test]
    fn no_url_means_no_store_and_retraining_is_off() {
        let x = ServiceExtras::load_with_env(
            None,
            &ExtrasOverrides::default(),
            env("XNONE_S_"),
            env("XNONE_T_"),
            env("XNONE_R_"),
        )
        .unwrap();
        assert_eq!(x.store, None);
        assert_eq!(x.retrain, RetrainConfig::default());
        assert_eq!(x.retrain.interval_s, 0);
    }

    #[test]
    fn precedence_file_env_flags() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("prescale.toml");
        std::fs::write(
            &path,
            r#"
brokers = "ignored:1"
[store]
url = "http://file:8086"
org = "file-org"
bucket = "file-bucket"
batch_size = 7
capacity = 70
[retrain]
interval_s = 3600
epochs = 3
models_dir = "from-file"
"#,
        )
        .unwrap();
        let vars = [
            ("XEXTRA_S_ORG", "env-org"),
            ("XEXTRA_S_TOKEN", "env-token"),
            ("XEXTRA_T_FALLBACK", "fallback-token"),
            ("XEXTRA_R_EPOCHS", "5"),
            ("XEXTRA_R_STEPS_PER_EPOCH", "9"),
        ];
        for (k, v) in vars {
            std::env::set_var(k, v);
        }
        let ov = ExtrasOverrides {
            store_url: Some("http://flag:8428".into()),
            retrain_interval_s: Some(60),
            ..Default::default()
        };
        let x = ServiceExtras::load_with_env(
            Some(&path),
            &ov,
            env("XEXTRA_S_"),
            env("XEXTRA_T_").map(|_| "token".into()),
            env("XEXTRA_R_"),
        )
        .unwrap();
        for (k, _) in vars {
            std::env::remove_var(k);
        }
        let s = x.store.unwrap();
        assert_eq!(s.url, "http://flag:8428");
        assert_eq!(s.org, "env-org");
        assert_eq!(s.bucket, "file-bucket");
        // the explicit token wins over the fallback variable
        assert_eq!(s.token, "env-token");
        assert_eq!((s.batch_size, s.capacity), (7, 70));
        assert_eq!(s.max_retries, StoreConfig::default().max_retries);
        assert_eq!(x.retrain.interval_s, 60);
        assert_eq!(x.retrain.epochs, 5);
        assert_eq!(x.retrain.steps_per_epoch, 9);
        assert_eq!(x.retrain.models_dir, PathBuf::from("from-file"));
    }

    #[test]
    fn env_url_alone_enables_the_store_and_fallback_token_applies() {
        std::env::set_var("XURL_S_URL", "http://env:8086");
        std::env::set_var("XURL_T_X", "tok");
        let x = ServiceExtras::load_with_env(
            None,
            &ExtrasOverrides::default(),
            env("XURL_S_"),
            env("XURL_T_").map(|_| "token".into()),
            env("XURL_R_"),
        )
        .unwrap();
        std::env::remove_var("XURL_S_URL");
        std::env::remove_var("XURL_T_X");
        let s = x.store.unwrap();
        assert_eq!(s.url, "http://env:8086");
        assert_eq!(s.token, "tok");
        assert_eq!(s.org, "prescale");
    }

    #[test]
    fn bad_value_names_the_key() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("bad.toml");
        std::fs::write(&path, "[retrain]\ninterval_s = \"daily\"\n").unwrap();
        let e = ServiceExtras::load_with_env(
            Some(&path),
            &ExtrasOverrides::default(),
            env("XBAD_S_"),
            env("XBAD_T_"),
            env("XBAD_R_"),
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("interval_s"), "{e}");
    }
}
