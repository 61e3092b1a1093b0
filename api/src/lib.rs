//! secretum's command line and HTTP service.
//!
//! - [`cli`]: the command line's arguments and dispatch.
//! - [`commands`]: what each command does, on plain arguments.
//! - [`output`]: answers rendered as JSON, CSV, Arrow IPC and text.
//! - [`client`]: `secretum query --server`.
//! - [`demo`]: `secretum demo`.
//! - [`local`]: Garage, a scheduler and executors on loopback (`secretum demo --cluster`).
//! - [`server`]: `secretum serve`, the governed HTTP service.

pub mod cli;
pub mod client;
pub mod commands;
pub mod demo;
pub mod local;
pub mod output;
pub mod server;
