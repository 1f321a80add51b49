//! Reports people look at, rather than parse.

pub mod html;
