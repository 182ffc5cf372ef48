//! Renders N different invoices through the PDF helper process, as the worker does, and prints
//! the helpers' resident memory every 10 000 documents: Typst's memo cache is trimmed after each
//! document, so it should stay flat.
//!
//! `cargo build --release --bins --examples && target/release/examples/memory 100000`
//! (from the repository root; the helper `dispatch-render` is found beside the example's
//! directory).

use dispatcher_core::TemplateFormat;
use dispatcher_render::{Limits, Renderer};
use std::sync::Arc;

fn helper_rss_mib() -> f64 {
    let me = std::process::id();
    let children: Vec<u32> = std::fs::read_dir(format!("/proc/{me}/task"))
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|t| std::fs::read_to_string(t.path().join("children")).ok())
        .flat_map(|s| {
            s.split_whitespace()
                .filter_map(|p| p.parse().ok())
                .collect::<Vec<u32>>()
        })
        .collect();
    children
        .iter()
        .filter_map(|pid| std::fs::read_to_string(format!("/proc/{pid}/status")).ok())
        .filter_map(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|kb| kb.parse::<f64>().ok())
        })
        .sum::<f64>()
        / 1024.0
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let n: usize = std::env::args()
        .nth(1)
        .and_then(|v| v.parse().ok())
        .unwrap_or(100_000);
    let body: Arc<str> = std::fs::read_to_string("examples/invoice/invoice.typ")?.into();
    let data: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string("examples/invoice/invoice.json")?)?;
    let renderer = Renderer::start(Limits::default())?;
    let slots = std::thread::available_parallelism().map_or(2, |n| n.get());
    let started = std::time::Instant::now();
    let mut done = 0;
    while done < n {
        let chunk = (n - done).min(10_000);
        let mut tasks = tokio::task::JoinSet::new();
        for i in done..done + chunk {
            let mut d = data.clone();
            // Every document differs: its number and the first line's quantity.
            d["number"] = format!("INV-{i:07}").into();
            d["items"][0]["quantity"] = (i % 97 + 1).into();
            let (r, body) = (renderer.clone(), body.clone());
            tasks.spawn(async move { r.render(TemplateFormat::Pdf, body, Arc::new(d)).await });
            if tasks.len() >= slots * 4 {
                tasks.join_next().await.expect("a task")??;
            }
        }
        while let Some(t) = tasks.join_next().await {
            t??;
        }
        done += chunk;
        println!(
            "{done:>7} documents  {:>7.1} s  helpers' RSS {:>6.1} MiB",
            started.elapsed().as_secs_f64(),
            helper_rss_mib()
        );
    }
    Ok(())
}
