//! secretum's command line (and, later, its HTTP service).

pub mod cli;
pub mod local;
