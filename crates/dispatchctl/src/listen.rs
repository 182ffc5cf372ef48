//! `dispatchctl listen`: a webhook receiver for trying Dispatcher out. It prints every request's
//! Standard Webhooks headers and body, says whether the signature verifies, and answers 200.

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::routing::any;
use axum::Router;
use dispatcher_core::signing::WebhookSecret;
use std::sync::Arc;

pub async fn run(host: &str, port: u16, secret: Option<String>) -> anyhow::Result<()> {
    let secret = secret
        .map(|s| WebhookSecret::parse(&s).map_err(|e| anyhow::anyhow!("--secret: {e}")))
        .transpose()?;
    let listener = tokio::net::TcpListener::bind((host, port)).await?;
    eprintln!(
        "listening on http://{}/ (any path); Ctrl-C to stop",
        listener.local_addr()?
    );
    let app = Router::new()
        .fallback(any(receive))
        .with_state(Arc::new(secret));
    axum::serve(listener, app)
        .with_graceful_shutdown(async {
            let _ = tokio::signal::ctrl_c().await;
        })
        .await?;
    Ok(())
}

async fn receive(
    State(secret): State<Arc<Option<WebhookSecret>>>,
    headers: HeaderMap,
    body: Bytes,
) -> StatusCode {
    let h = |n: &str| {
        headers
            .get(n)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_owned()
    };
    let (id, ts, sig) = (
        h("webhook-id"),
        h("webhook-timestamp"),
        h("webhook-signature"),
    );
    let verdict = match (secret.as_ref(), ts.parse::<i64>()) {
        (Some(key), Ok(t)) if key.verify(&id, t, &body, &sig) => "signature OK",
        (Some(_), _) => "signature INVALID",
        (None, _) => "signature not checked (pass --secret)",
    };
    println!("--- webhook {} ---", chrono::Utc::now().to_rfc3339());
    println!("webhook-id: {id}");
    println!("webhook-timestamp: {ts}");
    println!("webhook-signature: {sig}");
    println!("{verdict}");
    println!("{}", String::from_utf8_lossy(&body));
    StatusCode::OK
}
