//! End-to-end tests: real services, real Postgres and RabbitMQ, a local receiver.

mod api;
mod backpressure;
mod compat;
mod deploy_files;
mod documents;
mod email;
mod faults;
mod foundation;
mod operational;
mod receivers;
mod retention;
mod schemathesis;
mod security;
mod stalls;
mod storage;
mod telemetry;
mod ui;
mod ui_browser;
mod ui_pages;
mod write_path;
