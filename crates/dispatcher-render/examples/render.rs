//! Renders a template file with a JSON data file in this process, as a render slot would, and
//! prints what it cost: `cargo run --release -p dispatcher-render --example render -- FORMAT
//! TEMPLATE DATA OUT [N]`.
//!
//! With N (default 5) it renders N documents that differ (the data's `number` changes each
//! time, as invoices do), so memoized results help only as much as they do in production, and
//! prints the mean CPU time and the spread of wall time of one render after the first five.

use dispatcher_core::TemplateFormat;
use dispatcher_render::Limits;
use std::time::Duration;

/// The allocator of the PDF helper (`dispatch-render`), so the figures are the helper's.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// CPU time of the calling thread so far (the render runs on it), whatever else the machine
/// is doing.
fn thread_cpu() -> Duration {
    let stat = std::fs::read_to_string("/proc/thread-self/schedstat").unwrap_or_default();
    let ns = stat
        .split_whitespace()
        .next()
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    Duration::from_nanos(ns)
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let (format, template, data, out, n) = match args.as_slice() {
        [f, t, d, o] => (f, t, d, o, 5),
        [f, t, d, o, n] => (f, t, d, o, n.parse()?),
        _ => return Err("usage: render FORMAT TEMPLATE DATA OUT [N]".into()),
    };
    let format = TemplateFormat::parse(format).ok_or("unknown format")?;
    let body = std::fs::read_to_string(template)?;
    let data: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(data)?)?;
    dispatcher_render::check_syntax(format, &body)?;
    let limits = Limits {
        max_pages: usize::MAX,
        max_output_bytes: usize::MAX,
        ..Limits::default()
    };
    let mut doc = None;
    let mut cpu = Vec::with_capacity(n);
    let mut wall = Vec::with_capacity(n);
    for i in 0..n {
        let mut d = data.clone();
        if i > 0 && d.get("number").is_some() {
            d["number"] = format!("N-{i:07}").into();
        }
        let started = thread_cpu();
        let wall_started = std::time::Instant::now();
        doc = Some(dispatcher_render::render_in_process(
            format, &body, &d, &limits,
        )?);
        let spent = thread_cpu() - started;
        wall.push(wall_started.elapsed());
        if n <= 5 {
            eprintln!("render {i}: {spent:?} of CPU");
        }
        cpu.push(spent);
    }
    let doc = doc.expect("rendered");
    std::fs::write(out, &doc.bytes)?;
    eprintln!("{} bytes of {}", doc.bytes.len(), doc.content_type);
    if n > 5 {
        // The thread's CPU clock may advance in scheduler ticks (4 ms here): only its mean over
        // many renders means something; the wall clock gives the spread on an idle machine.
        let cpu_mean = cpu[5..].iter().sum::<Duration>() / (n - 5) as u32;
        let mut warm = wall[5..].to_vec();
        warm.sort();
        let at = |q: f64| warm[((warm.len() - 1) as f64 * q) as usize];
        eprintln!(
            "{} renders after the first 5: CPU mean {cpu_mean:?}; wall p10 {:?}, p50 {:?}, p90 {:?}",
            warm.len(),
            at(0.1),
            at(0.5),
            at(0.9),
        );
    }
    Ok(())
}
