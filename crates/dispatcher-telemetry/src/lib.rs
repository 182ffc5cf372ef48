//! Logging and metrics set-up shared by every binary.
//!
//! `init` installs the tracing subscriber (text or JSON, filtered by `RUST_LOG` or
//! `telemetry.log_level`) and the Prometheus recorder whose text rendering `/metrics` serves.
//! Both are process-global, so `init` is idempotent: tests that start several services in one
//! process share them.

use dispatcher_config::{LogFormat, TelemetrySettings};
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};
use std::sync::OnceLock;
use tracing_subscriber::EnvFilter;

static METRICS: OnceLock<PrometheusHandle> = OnceLock::new();

/// Installs logging (once per process) and returns the metrics handle.
pub fn init(settings: &TelemetrySettings) -> PrometheusHandle {
    let filter = EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| EnvFilter::new(settings.log_level.clone()));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    // A second call (tests) finds a subscriber already set; that is fine.
    let _ = match settings.log_format {
        LogFormat::Json => builder.json().flatten_event(true).try_init(),
        LogFormat::Text => builder.try_init(),
    };
    metrics_handle()
}

/// The process-wide Prometheus recorder, installed on first use.
pub fn metrics_handle() -> PrometheusHandle {
    METRICS
        .get_or_init(|| {
            let recorder = PrometheusBuilder::new()
                .set_buckets(&[
                    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
                ])
                .expect("static buckets are valid")
                .build_recorder();
            let handle = recorder.handle();
            // Fails only if another recorder was installed first, in which case ours stays unused.
            let _ = metrics::set_global_recorder(recorder);
            handle
        })
        .clone()
}
