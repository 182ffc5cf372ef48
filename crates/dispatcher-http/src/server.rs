//! The middleware stack every API shares, graceful serving, and the shutdown signal.

use crate::error::error_response;
use axum::extract::{DefaultBodyLimit, MatchedPath, Request, State};
use axum::http::{HeaderName, StatusCode};
use axum::middleware::{self, Next};
use axum::response::Response;
use axum::Router;
use std::time::{Duration, Instant};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tower_http::catch_panic::CatchPanicLayer;
use tower_http::request_id::{MakeRequestUuid, PropagateRequestIdLayer, SetRequestIdLayer};
use tower_http::trace::TraceLayer;

const REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

/// Adds JSON 404/405 fallbacks, the body limit, a time limit per request, request ids, tracing,
/// metrics and panic safety.
pub fn with_common_layers(
    router: Router,
    max_body_bytes: usize,
    request_timeout: Duration,
) -> Router {
    router
        .fallback(|| async { error_response(StatusCode::NOT_FOUND, "not_found", "no such route") })
        .method_not_allowed_fallback(|| async {
            error_response(
                StatusCode::METHOD_NOT_ALLOWED,
                "method_not_allowed",
                "method not allowed on this route",
            )
        })
        .layer(DefaultBodyLimit::max(max_body_bytes))
        .layer(middleware::from_fn_with_state(request_timeout, time_limit))
        .layer(middleware::from_fn(record_metrics))
        .layer(CatchPanicLayer::custom(|_| {
            error_response(
                StatusCode::INTERNAL_SERVER_ERROR,
                "internal_error",
                "internal error",
            )
        }))
        .layer(PropagateRequestIdLayer::new(REQUEST_ID))
        .layer(TraceLayer::new_for_http().make_span_with(|req: &Request| {
            let span = tracing::info_span!(
                "http.request",
                method = %req.method(),
                path = %req.uri().path(),
            );
            // Continue the client's trace if it sent one.
            dispatcher_telemetry::set_remote_parent(
                &span,
                req.headers()
                    .get("traceparent")
                    .and_then(|v| v.to_str().ok()),
            );
            span
        }))
        .layer(SetRequestIdLayer::new(REQUEST_ID, MakeRequestUuid))
}

/// Answers 503 `request_timeout` for a request still running after `limit` (its work is
/// dropped; nothing a client was told about is lost, since every write commits before its
/// answer).
async fn time_limit(State(limit): State<Duration>, req: Request, next: Next) -> Response {
    match tokio::time::timeout(limit, next.run(req)).await {
        Ok(resp) => resp,
        Err(_) => {
            metrics::counter!("dispatcher_http_request_timeouts_total").increment(1);
            let mut resp = error_response(
                StatusCode::SERVICE_UNAVAILABLE,
                "request_timeout",
                &format!("the request did not finish within {limit:?}; try again"),
            );
            resp.headers_mut()
                .insert("retry-after", axum::http::HeaderValue::from_static("1"));
            resp
        }
    }
}

async fn record_metrics(req: Request, next: Next) -> Response {
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map(|p| p.as_str().to_owned())
        .unwrap_or_else(|| "unmatched".to_owned());
    let method = req.method().to_string();
    let start = Instant::now();
    let resp = next.run(req).await;
    let status = resp.status().as_u16().to_string();
    let labels = [("route", route), ("method", method), ("status", status)];
    metrics::counter!("dispatcher_http_requests_total", &labels).increment(1);
    metrics::histogram!("dispatcher_http_request_duration_seconds", &labels)
        .record(start.elapsed().as_secs_f64());
    resp
}

/// Serves until `cancel`, then stops accepting and lets in-flight requests finish for at most
/// `drain`; requests still running then are cut off, so shutdown keeps its deadline.
pub async fn serve(
    listener: TcpListener,
    router: Router,
    cancel: CancellationToken,
    drain: Duration,
) -> std::io::Result<()> {
    let stop = cancel.clone();
    let server = axum::serve(
        listener,
        router.into_make_service_with_connect_info::<std::net::SocketAddr>(),
    )
    .with_graceful_shutdown(async move { stop.cancelled().await });
    tokio::select! {
        r = server => r,
        _ = async {
            cancel.cancelled().await;
            tokio::time::sleep(drain).await;
        } => {
            tracing::warn!(?drain, "requests still in flight past the drain deadline; closing them");
            Ok(())
        }
    }
}

/// A token cancelled on SIGTERM or SIGINT.
pub fn shutdown_signal() -> CancellationToken {
    let token = CancellationToken::new();
    let t = token.clone();
    tokio::spawn(async move {
        let ctrl_c = tokio::signal::ctrl_c();
        #[cfg(unix)]
        {
            let mut term =
                tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
                    .expect("install SIGTERM handler");
            tokio::select! {
                _ = ctrl_c => {}
                _ = term.recv() => {}
            }
        }
        #[cfg(not(unix))]
        let _ = ctrl_c.await;
        tracing::info!("shutdown requested");
        t.cancel();
    });
    token
}
