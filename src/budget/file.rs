//! The budgets file: allocations read from TOML (`prescale backtest
//! --budgets FILE`), turned into the same [`BudgetAllocation`] events the
//! live service reads from the `budget-allocation` topic.
//!
//! ```toml
//! # One table per scope (`job`, `project`, `user`), one entry per id.
//! [project.group-5]
//! usd = 200.0
//! period = "week"      # optional: total (default), day, week, month
//!
//! [user]
//! user-12 = 50         # shorthand: the amount, period total
//!
//! [job."1234"]
//! usd = 3.5
//! ```
//!
//! Validation happens on load and names the file, the key and the reason
//! (`budgets.toml: key `project.group-5.usd`: must be a finite amount >= 0`),
//! like the policy file.

use super::Period;
use crate::events::{BudgetAllocation, BudgetScope, Millis};

/// A budgets file that failed to load (file, key and reason).
pub type BudgetFileError = crate::policy::FileError;

/// The allocations of a budgets file, in file order per scope (job, project,
/// user), each id once.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct BudgetFile {
    pub origin: String,
    pub allocations: Vec<BudgetAllocation>,
}

impl BudgetFile {
    /// Parses and validates budgets TOML; `origin` names the source in errors.
    /// (`BudgetFile::load`, in `import::settings`, reads it from a file.)
    pub fn from_toml_str(text: &str, origin: &str) -> Result<BudgetFile, BudgetFileError> {
        Self::from_table(&crate::policy::parse_toml(text, origin)?, origin)
    }

    fn from_table(root: &toml::Table, origin: &str) -> Result<BudgetFile, BudgetFileError> {
        let err = |key: &str, reason: String| BudgetFileError {
            file: origin.to_string(),
            key: key.to_string(),
            reason,
        };
        let mut allocations = Vec::new();
        for (scope_name, v) in root {
            let scope = match scope_name.as_str() {
                "job" => BudgetScope::Job,
                "project" => BudgetScope::Project,
                "user" => BudgetScope::User,
                _ => {
                    return Err(err(
                        scope_name,
                        "unknown top-level key (expected `job`, `project` or `user`)".into(),
                    ))
                }
            };
            let toml::Value::Table(ids) = v else {
                return Err(err(
                    scope_name,
                    "must be a table of ids, e.g. `[project.climate]` with `usd = 100`".into(),
                ));
            };
            for (id, entry) in ids {
                let key = format!("{scope_name}.{}", crate::limits::quote(id));
                if id.trim().is_empty() {
                    return Err(err(&key, "the id is empty".into()));
                }
                if id.len() > crate::limits::MAX_NAME_LEN {
                    return Err(err(
                        &key,
                        format!(
                            "the id is longer than {} bytes",
                            crate::limits::MAX_NAME_LEN
                        ),
                    ));
                }
                let (usd, period) = match entry {
                    toml::Value::Table(t) => {
                        for k in t.keys() {
                            if k != "usd" && k != "period" {
                                return Err(err(
                                    &format!("{key}.{k}"),
                                    "unknown key (expected `usd` and optionally `period`)".into(),
                                ));
                            }
                        }
                        let usd = t
                            .get("usd")
                            .ok_or_else(|| err(&format!("{key}.usd"), "missing".into()))?;
                        let usd = amount(usd).map_err(|r| err(&format!("{key}.usd"), r))?;
                        let period = match t.get("period") {
                            None => None,
                            Some(toml::Value::String(s)) => {
                                if Period::parse(Some(s)).is_none() {
                                    return Err(err(
                                        &format!("{key}.period"),
                                        format!(
                                            "unknown period `{}` (expected total, day, week or month)",
                                            crate::limits::quote(s)
                                        ),
                                    ));
                                }
                                Some(s.clone())
                            }
                            Some(_) => {
                                return Err(err(
                                    &format!("{key}.period"),
                                    "must be a string (total, day, week or month)".into(),
                                ))
                            }
                        };
                        (usd, period)
                    }
                    other => (amount(other).map_err(|r| err(&key, r))?, None),
                };
                allocations.push(BudgetAllocation {
                    at: 0,
                    scope,
                    id: id.clone(),
                    usd,
                    period,
                });
            }
        }
        Ok(BudgetFile {
            origin: origin.to_string(),
            allocations,
        })
    }

    /// The allocations as input events at time `at` (a backtest injects
    /// them at the trace start).
    pub fn events(&self, at: Millis) -> Vec<BudgetAllocation> {
        self.allocations
            .iter()
            .map(|a| BudgetAllocation { at, ..a.clone() })
            .collect()
    }
}

fn amount(v: &toml::Value) -> Result<f64, String> {
    let x = match v {
        toml::Value::Float(f) => *f,
        toml::Value::Integer(i) => *i as f64,
        other => {
            return Err(format!(
                "must be a number of US dollars, got a {}",
                other.type_str()
            ))
        }
    };
    let max = crate::limits::MAX_BUDGET_USD;
    if x.is_finite() && (0.0..=max).contains(&x) {
        Ok(x)
    } else {
        Err(format!(
            "must be a finite amount >= 0 (at most {max}), got {x}"
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    #[test]
    fn parses_scopes_periods_and_shorthand() {
        let f = BudgetFile::from_toml_str(
            r#"
[project.group-5]
usd = 200.0
period = "week"

[user]
user-12 = 50

[job."1234"]
usd = 3.5
"#,
            "b.toml",
        )
        .unwrap();
        let got: Vec<(BudgetScope, &str, f64, Option<&str>)> = f
            .allocations
            .iter()
            .map(|a| (a.scope, a.id.as_str(), a.usd, a.period.as_deref()))
            .collect();
        assert_eq!(
            got,
            vec![
                (BudgetScope::Job, "1234", 3.5, None),
                (BudgetScope::Project, "group-5", 200.0, Some("week")),
                (BudgetScope::User, "user-12", 50.0, None),
            ]
        );
        assert!(f.events(77).iter().all(|a| a.at == 77));
    }

    #[test]
    fn invalid_files_name_file_key_and_reason() {
        let bad = |t: &str| BudgetFile::from_toml_str(t, "b.toml").unwrap_err();
        let e = bad("[project.p]\nusd = -1\n");
        assert_eq!(
            (e.file.as_str(), e.key.as_str()),
            ("b.toml", "project.p.usd")
        );
        assert!(e.to_string().contains(">= 0"), "{e}");
        let e = bad("[project.p]\nusd = \"ten\"\n");
        assert_eq!(e.key, "project.p.usd");
        let e = bad("[project.p]\nusd = 1\nperiod = \"fortnight\"\n");
        assert_eq!(e.key, "project.p.period");
        assert!(e.reason.contains("fortnight"));
        let e = bad("[project.p]\nusd = 1\ncap = 2\n");
        assert_eq!(e.key, "project.p.cap");
        let e = bad("[project.p]\nperiod = \"day\"\n");
        assert_eq!(e.key, "project.p.usd");
        assert!(e.reason.contains("missing"));
        let e = bad("[team.x]\nusd = 1\n");
        assert_eq!(e.key, "team");
        let e = bad("project = 3\n");
        assert_eq!(e.key, "project");
        let e = bad("[project.p\nusd = 1\n");
        assert!(e.reason.contains("line 1"), "{e}");
        let e = BudgetFile::load(Path::new("/nonexistent/b.toml")).unwrap_err();
        assert!(e.to_string().contains("/nonexistent/b.toml"));
    }
}
