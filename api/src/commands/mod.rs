//! What each `secretum` command does, on plain arguments: [`crate::cli`] parses the command
//! line and calls these; they act on the data directory and print.

pub mod audit;
pub mod local;
pub mod policy;
pub mod projects;
pub mod query;
pub mod release;
pub mod users;
pub mod warehouse;

pub use local::{local_actor, runtime};
