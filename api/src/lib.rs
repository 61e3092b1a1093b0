//! secretum's command line and HTTP service.

pub mod cli;
pub mod client;
pub mod format;
pub mod local;
pub mod server;
