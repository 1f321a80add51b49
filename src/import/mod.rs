//! Importers: public traces and exports → events.

pub mod alibaba;
