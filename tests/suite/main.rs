//! End-to-end tests: real files, real SQLite, real Parquet, the real `secretum` binary.

mod accounting;
mod cluster;
mod cohorts;
mod common;
mod console;
mod golden;
mod ingest;
mod notebooks;
mod omop;
mod oracle;
mod privacy;
mod service;
mod store;
