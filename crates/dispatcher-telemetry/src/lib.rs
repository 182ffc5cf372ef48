//! Logging, tracing and metrics set-up shared by every binary.
//!
//! - Logs: `tracing` with text or JSON output, filtered by `RUST_LOG` or `telemetry.log_level`.
//! - Traces: when `telemetry.otlp_endpoint` is set, spans are exported over OTLP/HTTP and the W3C
//!   trace context travels with the work: from the client's `traceparent` into the ingest span,
//!   through outbox rows and AMQP headers to the worker and the deliverer, and out in each
//!   webhook's `traceparent` header, so one dispatch is one trace. When the endpoint is empty no
//!   OpenTelemetry layer is installed at all: no cost.
//! - Metrics: a process-wide Prometheus recorder whose rendering `/metrics` serves.

use dispatcher_config::{LogFormat, TelemetrySettings};
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};
use opentelemetry::propagation::TextMapPropagator;
use opentelemetry::trace::TracerProvider as _;
use opentelemetry_otlp::{Protocol, WithExportConfig};
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::SdkTracerProvider;
use std::collections::HashMap;
use std::sync::OnceLock;
use std::time::Duration;
use tracing_opentelemetry::OpenTelemetrySpanExt;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Layer};

static METRICS: OnceLock<PrometheusHandle> = OnceLock::new();

/// Flushes and stops trace export when dropped (at the end of `main`).
pub struct TelemetryGuard(Option<SdkTracerProvider>);

impl Drop for TelemetryGuard {
    fn drop(&mut self) {
        if let Some(provider) = self.0.take() {
            let _ = provider.shutdown();
        }
    }
}

/// Installs logging and (if configured) trace export for `service`. Call once, from `main`.
pub fn init(settings: &TelemetrySettings, service: &'static str) -> TelemetryGuard {
    let filter = EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| EnvFilter::new(settings.log_level.clone()));
    let fmt = tracing_subscriber::fmt::layer().with_writer(std::io::stderr);
    // The log filter applies to log output only; traces keep their own level, so quiet logs
    // (RUST_LOG=warn) do not switch tracing off.
    let fmt = match settings.log_format {
        LogFormat::Json => fmt.json().flatten_event(true).with_filter(filter).boxed(),
        LogFormat::Text => fmt.with_filter(filter).boxed(),
    };
    let provider = (!settings.otlp_endpoint.is_empty()).then(|| tracer_provider(settings, service));
    let otel = provider.as_ref().map(|p| {
        tracing_opentelemetry::layer()
            .with_tracer(p.tracer(service))
            .with_filter(tracing_subscriber::filter::LevelFilter::INFO)
    });
    let _ = tracing_subscriber::registry()
        .with(fmt)
        .with(otel)
        .try_init();
    TelemetryGuard(provider)
}

fn tracer_provider(settings: &TelemetrySettings, service: &'static str) -> SdkTracerProvider {
    let endpoint = {
        let base = settings.otlp_endpoint.trim_end_matches('/');
        if base.ends_with("/v1/traces") {
            base.to_owned()
        } else {
            format!("{base}/v1/traces")
        }
    };
    let protocol = match settings.otlp_protocol.as_str() {
        "http/json" => Protocol::HttpJson,
        _ => Protocol::HttpBinary,
    };
    // The exporter's reqwest is built without a TLS crypto provider of its own (the object store
    // shares that reqwest and brings none, to keep aws-lc-rs out): use ring, as the rest does.
    let _ = rustls::crypto::ring::default_provider().install_default();
    // The blocking HTTP client must not be created on a runtime thread.
    let exporter = std::thread::spawn(move || {
        opentelemetry_otlp::SpanExporter::builder()
            .with_http()
            .with_protocol(protocol)
            .with_endpoint(endpoint)
            .build()
    })
    .join()
    .expect("exporter thread")
    .expect("OTLP exporter configuration");
    SdkTracerProvider::builder()
        .with_batch_exporter(exporter)
        .with_resource(
            opentelemetry_sdk::Resource::builder()
                .with_service_name(service)
                .build(),
        )
        .build()
}

/// The `traceparent` of the current span, if tracing is on and the span is sampled.
pub fn current_traceparent() -> Option<String> {
    let cx = tracing::Span::current().context();
    let mut carrier = HashMap::new();
    TraceContextPropagator::new().inject_context(&cx, &mut carrier);
    carrier.remove("traceparent")
}

/// Makes `span` a child of the remote context in `traceparent` (a no-op if tracing is off or the
/// value is malformed).
pub fn set_remote_parent(span: &tracing::Span, traceparent: Option<&str>) {
    let Some(tp) = traceparent else { return };
    let carrier = HashMap::from([("traceparent".to_owned(), tp.to_owned())]);
    let cx = TraceContextPropagator::new().extract(&carrier);
    let _ = span.set_parent(cx);
}

/// How often recorded histogram samples are folded into their buckets when nothing scrapes.
const METRICS_UPKEEP_EVERY: Duration = Duration::from_secs(5);
/// The name of the thread that folds them, so that a test can find it.
const METRICS_UPKEEP_THREAD: &str = "metrics-upkeep";

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
            keep_up(handle.clone());
            handle
        })
        .clone()
}

/// The recorder keeps every histogram sample until a scrape renders it. A process that nobody
/// scrapes (no Prometheus yet, or one that stopped) would hold them all: tens of megabytes an
/// hour at a thousand dispatches a second. A thread of its own, not a task, because the
/// recorder is process-wide and outlives any one runtime (tests start several).
fn keep_up(handle: PrometheusHandle) {
    let spawned = std::thread::Builder::new()
        .name(METRICS_UPKEEP_THREAD.into())
        .spawn(move || loop {
            std::thread::sleep(METRICS_UPKEEP_EVERY);
            handle.run_upkeep();
        });
    if let Err(e) = spawned {
        tracing::warn!(error = %e, "no metrics upkeep thread: histograms are folded only when scraped");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn thread_names() -> Vec<String> {
        std::fs::read_dir("/proc/self/task")
            .expect("Linux exposes the process's threads")
            .filter_map(|t| std::fs::read_to_string(t.ok()?.path().join("comm")).ok())
            .map(|name| name.trim().to_owned())
            .collect()
    }

    #[test]
    fn one_thread_folds_histograms_without_a_scrape() {
        metrics_handle();
        metrics_handle();
        let upkeep = || {
            thread_names()
                .into_iter()
                .filter(|n| n == METRICS_UPKEEP_THREAD)
                .count()
        };
        // The thread names itself once it runs.
        let named_by = std::time::Instant::now() + Duration::from_secs(5);
        while upkeep() == 0 && std::time::Instant::now() < named_by {
            std::thread::sleep(Duration::from_millis(10));
        }
        assert_eq!(upkeep(), 1);
    }
}
