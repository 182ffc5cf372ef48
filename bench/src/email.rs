//! The email phase of `make bench`: html dispatches sent by the email provider to a local SMTP
//! server (`tests/python/smtp_sink.py --quiet`, aiosmtpd), end to end.

use crate::{cpu_seconds, wait_arrivals, Arrivals, Client, Percentiles};
use futures::StreamExt;
use serde::Serialize;
use std::sync::Arc;
use std::time::{Duration, Instant};

#[derive(Serialize)]
pub struct EmailResult {
    pub dispatches: usize,
    pub seconds_until_last_webhook: f64,
    pub emails_per_second: f64,
    pub submit_to_webhook: Percentiles,
    /// CPU of the worker per email (rendering, MIME, SMTP client).
    pub worker_cpu_ms_per_email: f64,
    /// CPU of the SMTP server per email: a single-threaded Python process, so near 1 000 ms of
    /// CPU per second it is the limit of this figure, not Dispatcher.
    pub smtp_server_cpu_ms_per_email: f64,
    pub smtp_server_busy_fraction: f64,
}

pub async fn email_end_to_end(
    c: Arc<Client>,
    arrivals: &Arrivals,
    callback: &str,
    worker_pid: u32,
    smtp_pid: u32,
    n: usize,
) -> anyhow::Result<EmailResult> {
    let worker_before = cpu_seconds(worker_pid);
    let smtp_before = cpu_seconds(smtp_pid);
    let start = Instant::now();
    let submitted: Vec<anyhow::Result<(String, Instant)>> = futures::stream::iter(0..n)
        .map(|i| {
            let c = c.clone();
            let body = serde_json::json!({
                "template": {"format": "html", "body": "<h1>Invoice {{ number }}</h1><p>Dear {{ name }}, your total is {{ total }}.</p>"},
                "data": {"number": format!("INV-{i:06}"), "name": "Ada", "total": "42.00 EUR"},
                "provider": {"type": "email", "to": [format!("customer-{i}@example.com")],
                             "subject": "Invoice {{ number }}"},
                "callbackUrl": callback,
            });
            async move { c.submit_json(&body).await }
        })
        .buffer_unordered(64)
        .collect()
        .await;
    let submitted = submitted.into_iter().collect::<anyhow::Result<Vec<_>>>()?;
    let ids: Vec<String> = submitted.iter().map(|(id, _)| id.clone()).collect();
    let last = wait_arrivals(arrivals, &ids, Duration::from_secs(600)).await?;
    let secs = last.duration_since(start).as_secs_f64();
    let worker_cpu = cpu_seconds(worker_pid) - worker_before;
    let smtp_cpu = cpu_seconds(smtp_pid) - smtp_before;
    let latency = arrivals.submit_to_webhook(&submitted);
    Ok(EmailResult {
        dispatches: n,
        seconds_until_last_webhook: secs,
        emails_per_second: n as f64 / secs,
        submit_to_webhook: latency,
        worker_cpu_ms_per_email: worker_cpu * 1000.0 / n as f64,
        smtp_server_cpu_ms_per_email: smtp_cpu * 1000.0 / n as f64,
        smtp_server_busy_fraction: smtp_cpu / secs,
    })
}
