//! Reading the core's settings files from disk: the instance catalogue, the
//! policy file and the budgets file. The core parses their text and checks
//! every value ([`Catalog::parse`], [`PolicyFile::from_toml_str`],
//! [`BudgetFile::from_toml_str`]); opening a file is I/O, so it is done
//! here. The loaders keep their types' names (`Catalog::load`, …), so
//! callers read as they did.

use crate::budget::{BudgetFile, BudgetFileError};
use crate::policy::{FileError, PolicyError, PolicyFile};
use crate::pricing::{Catalog, CatalogError};
use std::path::Path;

impl Catalog {
    /// Reads a catalogue CSV, plain or compressed (see
    /// [`super::open_maybe_compressed`]).
    pub fn load(path: &Path) -> Result<Catalog, CatalogError> {
        let p = path.display().to_string();
        let r = super::open_maybe_compressed(path).map_err(|source| CatalogError::Io {
            path: p.clone(),
            source,
        })?;
        Catalog::parse(r, &p)
    }
}

impl PolicyFile {
    /// Reads and validates a policy file.
    pub fn load(path: &Path) -> Result<PolicyFile, PolicyError> {
        let (file, text) = read_settings(path)?;
        PolicyFile::from_toml_str(&text, &file)
    }
}

impl BudgetFile {
    /// Reads and validates a budgets file.
    pub fn load(path: &Path) -> Result<BudgetFile, BudgetFileError> {
        let (file, text) = read_settings(path)?;
        BudgetFile::from_toml_str(&text, &file)
    }
}

/// A settings file's name (for messages) and text; an unreadable file is an
/// error naming it.
fn read_settings(path: &Path) -> Result<(String, String), FileError> {
    let file = path.display().to_string();
    let text = std::fs::read_to_string(path).map_err(|e| FileError {
        file: file.clone(),
        key: String::new(),
        reason: format!("cannot read: {e}"),
    })?;
    Ok((file, text))
}
