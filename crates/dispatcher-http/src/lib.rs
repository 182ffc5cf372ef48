//! HTTP pieces shared by the services: the error type and its one mapping to responses, the JSON
//! and Basic-auth extractors (so every rejection has the project's error shape), health and metrics
//! routes, the common middleware stack and graceful serving.

pub mod auth;
pub mod commands;
pub mod cursor;
pub mod documents;
pub mod error;
pub mod health;
pub mod json;
pub mod preview;
pub mod server;
pub mod views;

pub use auth::{AuthAccount, Authenticator};
pub use error::ApiError;
pub use health::{health_app, health_router, HealthState};
pub use json::{ApiJson, ApiQuery};
pub use server::{serve, shutdown_signal, with_common_layers};
