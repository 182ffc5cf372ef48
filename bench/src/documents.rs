//! The document phases of `make bench`: PDF invoices end to end, and batch ingest.

use crate::{cpu_seconds, percentiles, rss_mib, wait_arrivals, Arrivals, Client, Percentiles};
use anyhow::{bail, Context};
use futures::StreamExt;
use serde::Serialize;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// The worker's PDF helper processes: its children.
fn children(pid: u32) -> Vec<u32> {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return Vec::new();
    };
    tasks
        .flatten()
        .filter_map(|t| std::fs::read_to_string(t.path().join("children")).ok())
        .flat_map(|s| {
            s.split_whitespace()
                .filter_map(|p| p.parse().ok())
                .collect::<Vec<u32>>()
        })
        .collect()
}

/// CPU seconds of a process and its current children.
fn tree_cpu_seconds(pid: u32) -> f64 {
    cpu_seconds(pid) + children(pid).into_iter().map(cpu_seconds).sum::<f64>()
}

#[derive(Serialize, Default)]
pub struct MemorySamples {
    /// Worker RSS at the start and the end of the phase, and the highest seen, in MiB.
    pub worker_start_mib: f64,
    pub worker_end_mib: f64,
    pub worker_max_mib: f64,
    /// The PDF helpers' RSS (all of them together): highest seen, and at the end.
    pub helpers_max_mib: f64,
    pub helpers_end_mib: f64,
}

#[derive(Serialize)]
pub struct PdfResult {
    pub dispatches: usize,
    pub seconds_until_last_webhook: f64,
    pub pdfs_per_second: f64,
    /// Worker plus its PDF helpers, CPU per document.
    pub worker_cpu_ms_per_pdf: f64,
    /// Of which the PDF helpers (Typst).
    pub helpers_cpu_ms_per_pdf: f64,
    pub machine_cpu_ms_per_pdf: f64,
    pub submit_to_webhook: Percentiles,
    pub memory: MemorySamples,
}

#[derive(Serialize)]
pub struct BatchResult {
    pub batches: usize,
    pub items_per_batch: usize,
    pub concurrency: usize,
    pub seconds: f64,
    pub dispatches_per_second: f64,
    pub batch_latency: Percentiles,
}

/// Creates the invoice template from `examples/invoice/`; returns its id and the sample data.
pub async fn invoice_template(
    c: &Client,
    ingest: &str,
) -> anyhow::Result<(String, serde_json::Value)> {
    let body = std::fs::read_to_string("examples/invoice/invoice.typ")
        .context("examples/invoice/invoice.typ (run from the repository root)")?;
    let data: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string("examples/invoice/invoice.json")?)?;
    let r = c
        .http
        .post(format!("{ingest}/v1/templates"))
        .header(reqwest::header::AUTHORIZATION, c.authorization.clone())
        .json(&serde_json::json!({"name": "bench invoice", "format": "pdf", "body": body}))
        .send()
        .await?;
    if r.status() != 201 {
        bail!(
            "creating the invoice template: {} {}",
            r.status(),
            r.text().await?
        );
    }
    let v: serde_json::Value = r.json().await?;
    Ok((
        v["templateId"].as_str().context("templateId")?.to_owned(),
        data,
    ))
}

/// `n` one-page invoices (15 line items), each with its own number, submitted 64 at a time as
/// fast as they are accepted, until every webhook has arrived.
#[allow(clippy::too_many_arguments)]
pub async fn pdf_end_to_end(
    c: Arc<Client>,
    arrivals: &Arrivals,
    callback: &str,
    template_id: &str,
    data: &serde_json::Value,
    worker_pid: u32,
    n: usize,
    machine_cpu_seconds: fn() -> f64,
) -> anyhow::Result<PdfResult> {
    let sampling = Arc::new(std::sync::Mutex::new(MemorySamples {
        worker_start_mib: rss_mib(worker_pid),
        ..MemorySamples::default()
    }));
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let sampler = {
        let (sampling, stop) = (sampling.clone(), stop.clone());
        tokio::spawn(async move {
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let worker = rss_mib(worker_pid);
                let helpers: f64 = children(worker_pid).into_iter().map(rss_mib).sum();
                {
                    let mut s = sampling.lock().unwrap();
                    s.worker_max_mib = s.worker_max_mib.max(worker);
                    s.helpers_max_mib = s.helpers_max_mib.max(helpers);
                }
                tokio::time::sleep(Duration::from_millis(250)).await;
            }
        })
    };
    let cpu_before = tree_cpu_seconds(worker_pid);
    let helpers_before = tree_cpu_seconds(worker_pid) - cpu_seconds(worker_pid);
    let machine_before = machine_cpu_seconds();
    let start = Instant::now();
    let submitted: Vec<anyhow::Result<(String, Instant)>> = futures::stream::iter(0..n)
        .map(|i| {
            let c = c.clone();
            let mut data = data.clone();
            data["number"] = serde_json::json!(format!("INV-BENCH-{i:06}"));
            let body = serde_json::json!({"templateId": template_id, "data": data, "callbackUrl": callback});
            async move { c.submit_json(&body).await }
        })
        .buffer_unordered(64)
        .collect()
        .await;
    let submitted = submitted.into_iter().collect::<anyhow::Result<Vec<_>>>()?;
    let ids: Vec<String> = submitted.iter().map(|(id, _)| id.clone()).collect();
    let last = wait_arrivals(arrivals, &ids, Duration::from_secs(600)).await?;
    let secs = last.duration_since(start).as_secs_f64();
    let worker_cpu = tree_cpu_seconds(worker_pid) - cpu_before;
    let helpers_cpu = tree_cpu_seconds(worker_pid) - cpu_seconds(worker_pid) - helpers_before;
    let machine_cpu = machine_cpu_seconds() - machine_before;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let _ = sampler.await;
    let latency = arrivals.submit_to_webhook(&submitted);
    let mut memory = std::mem::take(&mut *sampling.lock().unwrap());
    memory.worker_end_mib = rss_mib(worker_pid);
    memory.helpers_end_mib = children(worker_pid).into_iter().map(rss_mib).sum();
    Ok(PdfResult {
        dispatches: n,
        seconds_until_last_webhook: secs,
        pdfs_per_second: n as f64 / secs,
        worker_cpu_ms_per_pdf: worker_cpu * 1000.0 / n as f64,
        helpers_cpu_ms_per_pdf: helpers_cpu * 1000.0 / n as f64,
        machine_cpu_ms_per_pdf: machine_cpu * 1000.0 / n as f64,
        submit_to_webhook: latency,
        memory,
    })
}

/// `batches` requests to `POST /v1/dispatches/batch` of `per_batch` text dispatches each,
/// `concurrency` in flight: accepted dispatches per second.
pub async fn batch_ingest(
    c: &Client,
    ingest: &str,
    batches: usize,
    per_batch: usize,
    concurrency: usize,
) -> anyhow::Result<BatchResult> {
    let url = format!("{ingest}/v1/dispatches/batch");
    let start = Instant::now();
    let latencies: Vec<anyhow::Result<Duration>> = futures::stream::iter(0..batches)
        .map(|b| {
            let mut body = String::with_capacity(per_batch * 100);
            body.push_str(r#"{"items":["#);
            for i in 0..per_batch {
                if i > 0 {
                    body.push(',');
                }
                body.push_str(r#"{"template":{"format":"text","body":"Invoice {{ n }} for {{ customer }}"},"data":{"n":"#);
                body.push_str(&(b * per_batch + i).to_string());
                body.push_str(r#","customer":"Ada"}}"#);
            }
            body.push_str("]}");
            let url = url.clone();
            async move {
                let t = Instant::now();
                let r = c
                    .http
                    .post(url)
                    .header(reqwest::header::AUTHORIZATION, c.authorization.clone())
                    .header(reqwest::header::CONTENT_TYPE, "application/json")
                    .body(body)
                    .send()
                    .await?;
                if r.status() != 202 {
                    bail!("batch answered {}: {}", r.status(), r.text().await?);
                }
                let v: serde_json::Value = r.json().await?;
                let accepted = v["data"]
                    .as_array()
                    .map(|d| d.iter().filter(|e| e.get("dispatchId").is_some()).count());
                if accepted != Some(per_batch) {
                    bail!("a batch item was refused: {v}");
                }
                Ok(t.elapsed())
            }
        })
        .buffer_unordered(concurrency)
        .collect()
        .await;
    let secs = start.elapsed().as_secs_f64();
    let latencies = latencies.into_iter().collect::<anyhow::Result<Vec<_>>>()?;
    Ok(BatchResult {
        batches,
        items_per_batch: per_batch,
        concurrency,
        seconds: secs,
        dispatches_per_second: (batches * per_batch) as f64 / secs,
        batch_latency: percentiles(latencies),
    })
}
