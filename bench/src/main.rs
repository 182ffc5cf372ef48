//! `dispatcher-bench`: the load generator behind `make bench`.
//!
//! It drives an already running Dispatcher (started by `scripts/bench.sh`) from this machine,
//! runs a local webhook receiver, and measures:
//!
//! 1. end to end, open loop at `DISPATCHER_BENCH_RATE`: submit-to-webhook latency percentiles;
//! 2. async ingest, open loop at 2 000 requests/s (latency measured from the scheduled send
//!    time, so a slow server cannot hide its queueing);
//! 3. async ingest, closed loop at maximum: requests/s and latency percentiles;
//! 4. sustained end to end: N dispatches submitted as fast as accepted, until every webhook has
//!    arrived: dispatches/s;
//! 5. PDF end to end: one-page invoices with 15 line items (`examples/invoice/`), as fast as
//!    accepted, until every webhook has arrived: PDFs/s, CPU per PDF in the worker and its PDF
//!    helpers, and their memory sampled through the run;
//! 6. batch ingest: `POST /v1/dispatches/batch` with 100 dispatches per request: dispatches/s;
//! 7. purge under load, 8. email end to end;
//!
//! and, after phase 4, the closed-loop end-to-end runs at 16 and 64 clients (each client sends
//! its next dispatch when the last was accepted) with what a dispatch costs: CPU of each service,
//! of PostgreSQL and of RabbitMQ, Postgres transactions, statements and rows written, broker
//! messages and ack frames (see [`cost`]).
//!
//! The fixed-rate phases run first, on a system in steady state; the saturating phases after.
//!
//! plus peak RSS and CPU seconds per 1 000 dispatches of each service (from /proc). Results are
//! printed as a table and written as JSON.
//!
//! Every request goes to loopback addresses given in the environment.

use anyhow::{bail, Context};
use axum::body::Bytes;
use axum::extract::State;
use axum::routing::post;
use axum::Router;
use futures::StreamExt;
use serde::Serialize;
use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

mod cost;
mod documents;
mod email;

struct Config {
    ingest: String,
    status: String,
    email: String,
    password: String,
    pids: Vec<(String, u32)>,
    n: usize,
    rate: u64,
    out: String,
    /// `Some(seconds)` for `make soak`: a long run at `rate` instead of the benchmark phases.
    soak_seconds: Option<u64>,
    /// `BENCH_MODE=e2e`: only the sustained end-to-end phase (`BENCH_CLUSTER=1` runs it against
    /// one broker node and against three).
    e2e_only: bool,
    /// `BENCH_MODE=closed`: only the closed-loop end-to-end phases at 16 and 64 clients
    /// (`BENCH_BASELINE=<commit>` runs them against that commit's services and this tree's).
    closed_only: bool,
    /// `BENCH_MODE=documents`: only the PDF and batch-ingest phases (5 and 6).
    documents_only: bool,
}

fn env(name: &str) -> anyhow::Result<String> {
    std::env::var(name).with_context(|| format!("{name} is not set"))
}

fn config() -> anyhow::Result<Config> {
    let pids = env("BENCH_PIDS")?
        .split(',')
        .filter(|s| !s.is_empty())
        .map(|p| {
            let (name, pid) = p.split_once('=').context("BENCH_PIDS is name=pid,...")?;
            Ok((name.to_owned(), pid.parse()?))
        })
        .collect::<anyhow::Result<_>>()?;
    let ingest = env("BENCH_INGEST_URL")?;
    if !ingest.starts_with("http://127.") && !ingest.starts_with("http://localhost") {
        bail!("the benchmark only targets loopback addresses");
    }
    let status = env("BENCH_STATUS_URL")?;
    if !status.starts_with("http://127.") && !status.starts_with("http://localhost") {
        bail!("the benchmark only targets loopback addresses");
    }
    Ok(Config {
        ingest,
        status,
        email: env("BENCH_EMAIL")?,
        password: env("BENCH_PASSWORD")?,
        pids,
        n: std::env::var("DISPATCHER_BENCH_N")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(20_000),
        rate: std::env::var("DISPATCHER_BENCH_RATE")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(1_000),
        out: std::env::var("BENCH_OUT").unwrap_or_else(|_| "bench/results.json".into()),
        soak_seconds: match std::env::var("BENCH_MODE").as_deref() {
            Ok("soak") => Some(
                std::env::var("DISPATCHER_SOAK_SECONDS")
                    .ok()
                    .and_then(|v| v.parse().ok())
                    .unwrap_or(600),
            ),
            _ => None,
        },
        e2e_only: std::env::var("BENCH_MODE").as_deref() == Ok("e2e"),
        closed_only: std::env::var("BENCH_MODE").as_deref() == Ok("closed"),
        documents_only: std::env::var("BENCH_MODE").as_deref() == Ok("documents"),
    })
}

/// Arrival time of each dispatch's webhook.
#[derive(Clone, Default)]
struct Arrivals {
    at: Arc<Mutex<HashMap<String, Instant>>>,
    count: Arc<AtomicUsize>,
}

impl Arrivals {
    /// Submission-to-first-webhook percentiles of `submitted` (id, when sent), all arrived.
    fn submit_to_webhook(&self, submitted: &[(String, Instant)]) -> Percentiles {
        let at = self.at.lock().unwrap();
        percentiles(
            submitted
                .iter()
                .map(|(id, t)| at[id].saturating_duration_since(*t))
                .collect(),
        )
    }
}

/// The one field of a webhook the receiver needs (the rest is skipped, not built).
#[derive(serde::Deserialize)]
struct Hook {
    data: HookData,
}

#[derive(serde::Deserialize)]
struct HookData {
    #[serde(rename = "dispatchId")]
    dispatch_id: String,
}

async fn receive(State(a): State<Arrivals>, body: Bytes) -> &'static str {
    let now = Instant::now();
    if let Ok(hook) = serde_json::from_slice::<Hook>(&body) {
        a.at.lock()
            .unwrap()
            .entry(hook.data.dispatch_id)
            .or_insert(now);
    }
    a.count.fetch_add(1, Ordering::Relaxed);
    "ok"
}

#[derive(Debug, Clone, Serialize)]
struct Percentiles {
    p50_ms: f64,
    p95_ms: f64,
    p99_ms: f64,
    max_ms: f64,
}

fn percentiles(mut v: Vec<Duration>) -> Percentiles {
    if v.is_empty() {
        return Percentiles {
            p50_ms: 0.0,
            p95_ms: 0.0,
            p99_ms: 0.0,
            max_ms: 0.0,
        };
    }
    v.sort();
    let at = |q: f64| {
        v[((v.len() as f64 * q).ceil() as usize).clamp(1, v.len()) - 1].as_secs_f64() * 1000.0
    };
    Percentiles {
        p50_ms: at(0.50),
        p95_ms: at(0.95),
        p99_ms: at(0.99),
        max_ms: at(1.0),
    }
}

struct Client {
    http: reqwest::Client,
    url: String,
    /// The `Authorization` header, encoded once.
    authorization: reqwest::header::HeaderValue,
}

/// The part of a `202` answer the load generator reads.
#[derive(serde::Deserialize)]
struct Accepted {
    #[serde(rename = "dispatchId")]
    dispatch_id: String,
}

impl Client {
    fn new(
        http: reqwest::Client,
        url: String,
        email: &str,
        password: &str,
    ) -> anyhow::Result<Self> {
        let probe = http
            .get("http://127.0.0.1/")
            .basic_auth(email, Some(password))
            .build()?;
        Ok(Self {
            authorization: probe.headers()[reqwest::header::AUTHORIZATION].clone(),
            http,
            url,
        })
    }

    /// Submits one async dispatch given as JSON; returns its id and when it was sent.
    async fn submit_json(&self, body: &serde_json::Value) -> anyhow::Result<(String, Instant)> {
        let at = Instant::now();
        let r = self
            .http
            .post(&self.url)
            .header(reqwest::header::AUTHORIZATION, self.authorization.clone())
            .json(body)
            .send()
            .await?;
        if r.status() != 202 {
            bail!(
                "ingest answered {}: {}",
                r.status(),
                r.text().await.unwrap_or_default()
            );
        }
        let v: serde_json::Value = r.json().await?;
        Ok((
            v["dispatchId"].as_str().context("dispatchId")?.to_owned(),
            at,
        ))
    }

    /// Submits one async dispatch; returns its id.
    async fn submit(&self, i: usize, callback: Option<&str>) -> anyhow::Result<String> {
        // Written by hand rather than through a JSON tree: the generator shares the CPU with
        // the system it measures.
        let mut body = String::with_capacity(160);
        body.push_str(r#"{"template":{"format":"text","body":"Invoice {{ n }} for {{ customer }}"},"data":{"n":"#);
        body.push_str(&i.to_string());
        body.push_str(r#","customer":"Ada"}"#);
        if let Some(cb) = callback {
            body.push_str(r#","callbackUrl":"#);
            body.push_str(&serde_json::to_string(cb)?);
        }
        body.push('}');
        let r = self
            .http
            .post(&self.url)
            .header(reqwest::header::AUTHORIZATION, self.authorization.clone())
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .body(body)
            .send()
            .await?;
        if r.status() != 202 {
            bail!(
                "ingest answered {}: {}",
                r.status(),
                r.text().await.unwrap_or_default()
            );
        }
        let accepted: Accepted = serde_json::from_slice(&r.bytes().await?)?;
        Ok(accepted.dispatch_id)
    }
}

/// CPU seconds (user + system) of a process so far.
fn cpu_seconds(pid: u32) -> f64 {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return 0.0;
    };
    // Fields after the parenthesised command name; utime and stime are fields 14 and 15.
    let rest = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| f.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    (ticks(11) + ticks(12)) / 100.0
}

/// CPU seconds the whole machine spent so far (all processes: services, Postgres, RabbitMQ and
/// the load generator), from the first line of /proc/stat.
fn machine_cpu_seconds() -> f64 {
    std::fs::read_to_string("/proc/stat")
        .ok()
        .and_then(|s| {
            let line = s.lines().next()?.to_owned();
            let f: Vec<f64> = line
                .split_whitespace()
                .skip(1)
                .filter_map(|v| v.parse().ok())
                .collect();
            // user nice system idle iowait irq softirq steal: busy = all but idle and iowait.
            let busy: f64 = f
                .iter()
                .enumerate()
                .filter(|(i, _)| *i != 3 && *i != 4)
                .map(|(_, v)| v)
                .sum();
            Some(busy / 100.0)
        })
        .unwrap_or(0.0)
}

/// Machines of the same nominal size differ by several times (and one machine drifts), so every
/// result carries two calibration figures to make runs comparable (lower is faster):
/// milliseconds of fixed integer work on one core, and microseconds per loopback TCP round trip
/// between two threads (wake-ups and syscalls, which dominate a system of small messages).
#[derive(Serialize, Clone, Copy)]
struct Calibration {
    integer_work_ms: f64,
    loopback_round_trip_us: f64,
}

fn calibrate() -> Calibration {
    let start = Instant::now();
    let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
    for _ in 0..50_000_000u32 {
        // xorshift64: cheap, branch-free, and impossible for the compiler to fold away.
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
    }
    std::hint::black_box(x);
    let integer_work_ms = start.elapsed().as_secs_f64() * 1000.0;
    Calibration {
        integer_work_ms,
        loopback_round_trip_us: loopback_round_trip_us().unwrap_or(f64::NAN),
    }
}

fn loopback_round_trip_us() -> std::io::Result<f64> {
    use std::io::{Read, Write};
    const ROUNDS: u32 = 20_000;
    let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
    let addr = listener.local_addr()?;
    let echo = std::thread::spawn(move || -> std::io::Result<()> {
        let (mut s, _) = listener.accept()?;
        s.set_nodelay(true)?;
        let mut buf = [0u8; 64];
        for _ in 0..ROUNDS {
            s.read_exact(&mut buf)?;
            s.write_all(&buf)?;
        }
        Ok(())
    });
    let mut c = std::net::TcpStream::connect(addr)?;
    c.set_nodelay(true)?;
    let mut buf = [7u8; 64];
    let start = Instant::now();
    for _ in 0..ROUNDS {
        c.write_all(&buf)?;
        c.read_exact(&mut buf)?;
    }
    let us = start.elapsed().as_secs_f64() * 1e6 / ROUNDS as f64;
    echo.join().expect("echo thread")?;
    Ok(us)
}

/// Current resident set size in MiB.
fn rss_mib(pid: u32) -> f64 {
    status_mib(pid, "VmRSS:")
}

/// Peak resident set size in MiB.
fn peak_rss_mib(pid: u32) -> f64 {
    status_mib(pid, "VmHWM:")
}

/// A kB field of `/proc/{pid}/status`, in MiB (0 if the process is gone).
fn status_mib(pid: u32, field: &str) -> f64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with(field))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|kb| kb.parse::<f64>().ok())
        })
        .map(|kb| kb / 1024.0)
        .unwrap_or(0.0)
}

#[derive(Serialize)]
struct IngestResult {
    requests: usize,
    seconds: f64,
    requests_per_second: f64,
    latency: Percentiles,
}

async fn ingest_closed_loop(
    c: &Client,
    total: usize,
    concurrency: usize,
) -> anyhow::Result<IngestResult> {
    let start = Instant::now();
    let lat: Vec<anyhow::Result<Duration>> = futures::stream::iter(0..total)
        .map(|i| async move {
            let t = Instant::now();
            c.submit(i, None).await?;
            Ok(t.elapsed())
        })
        .buffer_unordered(concurrency)
        .collect()
        .await;
    let secs = start.elapsed().as_secs_f64();
    let lat = lat.into_iter().collect::<anyhow::Result<Vec<_>>>()?;
    Ok(IngestResult {
        requests: total,
        seconds: secs,
        requests_per_second: total as f64 / secs,
        latency: percentiles(lat),
    })
}

/// Sends at `rate`/s for `secs`, each request at its scheduled time; latency counts from then.
async fn open_loop(
    c: Arc<Client>,
    rate: u64,
    secs: u64,
    callback: Option<String>,
) -> anyhow::Result<(Vec<(String, Instant)>, Vec<Duration>, f64)> {
    let total = (rate * secs) as usize;
    let interval = Duration::from_secs_f64(1.0 / rate as f64);
    let start = Instant::now();
    let mut tasks = Vec::with_capacity(total);
    for i in 0..total {
        let scheduled = start + interval.mul_f64(i as f64);
        tokio::time::sleep_until(scheduled.into()).await;
        let c = c.clone();
        let cb = callback.clone();
        tasks.push(tokio::spawn(async move {
            let id = c.submit(i, cb.as_deref()).await?;
            Ok::<_, anyhow::Error>((id, scheduled, scheduled.elapsed()))
        }));
    }
    let sent_for = start.elapsed().as_secs_f64();
    let mut ids = Vec::with_capacity(total);
    let mut lat = Vec::with_capacity(total);
    for t in tasks {
        let (id, at, l) = t.await??;
        ids.push((id, at));
        lat.push(l);
    }
    Ok((ids, lat, total as f64 / sent_for))
}

/// Ingest latency at a fixed rate without, then with, `dispatchctl purge` deleting every
/// finished dispatch of the earlier phases (with their deliveries and attempts) in its
/// background batches: what retention costs the traffic, and how fast it deletes.
async fn purge_under_load(c: Arc<Client>) -> anyhow::Result<serde_json::Value> {
    let dispatchctl = env("BENCH_DISPATCHCTL")?;
    let rate = 500;
    let secs = 8;
    let (_, baseline, _) = open_loop(c.clone(), rate, secs, None).await?;
    let before = chrono::Utc::now().to_rfc3339();
    let started = Instant::now();
    let purge = tokio::process::Command::new(&dispatchctl)
        .args(["purge", "--before", &before])
        .stderr(std::process::Stdio::inherit())
        .output();
    let load = open_loop(c.clone(), rate, secs, None);
    let (out, load) = tokio::join!(purge, load);
    let (_, during, _) = load?;
    let out = out?;
    let purge_secs = started.elapsed().as_secs_f64();
    if !out.status.success() {
        bail!("dispatchctl purge failed: {}", out.status);
    }
    let report: serde_json::Value = serde_json::from_slice(&out.stdout)?;
    let dispatches = report["dispatches"].as_f64().unwrap_or(0.0);
    Ok(serde_json::json!({
        "offered_per_second": rate,
        "ingest_latency_without_purge": percentiles(baseline),
        "ingest_latency_during_purge": percentiles(during),
        "purged": report,
        "purge_seconds": purge_secs,
        "dispatches_purged_per_second": dispatches / purge_secs,
    }))
}

/// Waits until no dispatch is queued or processing, so a phase does not pay for the previous
/// phase's backlog.
async fn wait_idle(c: &Client, status_url: &str) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(300);
    loop {
        let mut busy = false;
        for st in ["queued", "processing"] {
            let v: serde_json::Value = c
                .http
                .get(format!("{status_url}/v1/dispatches?status={st}&limit=1"))
                .header(reqwest::header::AUTHORIZATION, c.authorization.clone())
                .send()
                .await?
                // An error answer has no `data`: it must fail the run, not read as idle.
                .error_for_status()?
                .json()
                .await?;
            busy |= v["data"].as_array().is_some_and(|d| !d.is_empty());
        }
        if !busy {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!("the system did not drain within 300 s");
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

async fn wait_arrivals(a: &Arrivals, ids: &[String], limit: Duration) -> anyhow::Result<Instant> {
    let deadline = Instant::now() + limit;
    loop {
        {
            let at = a.at.lock().unwrap();
            let missing = ids.iter().filter(|id| !at.contains_key(*id)).count();
            if missing == 0 {
                return Ok(ids
                    .iter()
                    .map(|id| at[id])
                    .max()
                    .unwrap_or_else(Instant::now));
            }
            if Instant::now() > deadline {
                bail!("{missing} of {} webhooks never arrived", ids.len());
            }
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[derive(Serialize)]
struct ServiceUsage {
    peak_rss_mib: f64,
    cpu_seconds_per_1000_dispatches: f64,
}

#[derive(Serialize)]
struct Results {
    machine: String,
    /// [`calibrate`] before the first phase and after the last.
    calibration: [Calibration; 2],
    ingest_closed_loop: IngestResult,
    /// Everything the machine did while the closed-loop ingest phase ran (the worker and the
    /// deliverer keep processing the accepted dispatches meanwhile), per 1 000 requests.
    ingest_closed_loop_machine_cpu_seconds_per_1000: f64,
    ingest_open_loop: serde_json::Value,
    end_to_end_sustained: serde_json::Value,
    end_to_end_open_loop: serde_json::Value,
    /// Closed-loop end to end at 16 and 64 clients, with the cost of a dispatch.
    end_to_end_closed_loop: Vec<serde_json::Value>,
    services: HashMap<String, ServiceUsage>,
    pdf_end_to_end: documents::PdfResult,
    batch_ingest: documents::BatchResult,
    purge_under_load: serde_json::Value,
    email_end_to_end: email::EmailResult,
}

#[derive(Serialize)]
struct SoakWindow {
    second: u64,
    dispatches: usize,
    submit_to_webhook: Percentiles,
    rss_mib: HashMap<String, f64>,
}

/// `make soak`: open loop at `rate` for `seconds`, in windows of up to a minute. Each window's
/// webhooks must all arrive before the next starts; a missing one fails the run. Prints one line
/// per window (latency, and every service's current RSS, to show growth) and writes the windows
/// as JSON.
async fn soak(
    cfg: &Config,
    client: Arc<Client>,
    arrivals: &Arrivals,
    callback: &str,
    seconds: u64,
) -> anyhow::Result<()> {
    let window = seconds.clamp(1, 60);
    let mut windows = Vec::new();
    let mut total = 0;
    let start = Instant::now();
    println!(
        "soak: {} dispatches/s for {seconds} s, windows of {window} s",
        cfg.rate
    );
    let webhooks_before = arrivals.count.load(Ordering::Relaxed);
    let mut sent_for = 0;
    while sent_for < seconds {
        let this_window = window.min(seconds - sent_for);
        sent_for += this_window;
        let (sent, _, _) = open_loop(
            client.clone(),
            cfg.rate,
            this_window,
            Some(callback.to_owned()),
        )
        .await?;
        let ids: Vec<String> = sent.iter().map(|(id, _)| id.clone()).collect();
        // Fails the run if any webhook of the window is missing.
        wait_arrivals(arrivals, &ids, Duration::from_secs(120)).await?;
        let lat: Vec<Duration> = {
            let at = arrivals.at.lock().unwrap();
            sent.iter()
                .map(|(id, t)| at[id].saturating_duration_since(*t))
                .collect()
        };
        total += ids.len();
        let w = SoakWindow {
            second: start.elapsed().as_secs(),
            dispatches: ids.len(),
            submit_to_webhook: percentiles(lat),
            rss_mib: cfg
                .pids
                .iter()
                .map(|(n, p)| (n.clone(), rss_mib(*p)))
                .collect(),
        };
        let mut rss: Vec<_> = w.rss_mib.iter().collect();
        rss.sort_by(|a, b| a.0.cmp(b.0));
        println!(
            "{:>5} s  {:>6} delivered  p50 {:>7.1} ms  p99 {:>7.1} ms  RSS {}",
            w.second,
            total,
            w.submit_to_webhook.p50_ms,
            w.submit_to_webhook.p99_ms,
            rss.iter()
                .map(|(n, v)| format!("{n} {v:.0}"))
                .collect::<Vec<_>>()
                .join(", ")
        );
        windows.push(w);
    }
    // Every dispatch has one webhook; more requests than dispatches are redeliveries.
    let requests = arrivals.count.load(Ordering::Relaxed) - webhooks_before;
    let result = serde_json::json!({
        "offered_per_second": cfg.rate,
        "seconds": seconds,
        "dispatches": total,
        "webhooks_delivered": total,
        "duplicate_webhook_requests": requests.saturating_sub(total),
        "windows": windows,
    });
    println!(
        "soak: {total} submitted, {total} delivered, {} duplicate requests",
        requests.saturating_sub(total)
    );
    std::fs::write(&cfg.out, serde_json::to_string_pretty(&result)? + "\n")?;
    println!("written to {}", cfg.out);
    Ok(())
}

/// `clients` closed-loop clients (each sends its next dispatch once the last was accepted) send
/// `cfg.n` dispatches with a callback: the accepted and the delivered rate, the ingest's and the
/// submit-to-webhook latency, and what each dispatch cost.
async fn closed_loop_e2e(
    cfg: &Config,
    client: &Arc<Client>,
    arrivals: &Arrivals,
    callback: &str,
    clients: usize,
) -> anyhow::Result<serde_json::Value> {
    let metrics_urls: Vec<String> = std::env::var("BENCH_METRICS_URLS")
        .unwrap_or_default()
        .split(',')
        .filter(|u| !u.is_empty())
        .map(str::to_owned)
        .collect();
    let probe = cost::CostProbe::start(cfg.pids.clone(), metrics_urls).await;
    let next = Arc::new(AtomicUsize::new(0));
    let start = Instant::now();
    let per_client = futures::future::try_join_all((0..clients).map(|_| {
        let (c, next, cb) = (client.clone(), next.clone(), callback.to_owned());
        let n = cfg.n;
        async move {
            let mut sent = Vec::new();
            let mut ingest = Vec::new();
            while next.fetch_add(1, Ordering::Relaxed) < n {
                let at = Instant::now();
                let id = c.submit(sent.len(), Some(&cb)).await?;
                ingest.push(at.elapsed());
                sent.push((id, at));
            }
            anyhow::Ok((sent, ingest))
        }
    }))
    .await?;
    let accepted_secs = start.elapsed().as_secs_f64();
    let (sent, ingest): (Vec<_>, Vec<_>) = per_client.into_iter().unzip();
    let sent: Vec<(String, Instant)> = sent.into_iter().flatten().collect();
    let ingest: Vec<Duration> = ingest.into_iter().flatten().collect();
    let ids: Vec<String> = sent.iter().map(|(id, _)| id.clone()).collect();
    let last = wait_arrivals(arrivals, &ids, Duration::from_secs(300)).await?;
    let delivered_secs = last.duration_since(start).as_secs_f64();
    let cost = probe.finish(ids.len()).await;
    let stages = probe.stages(&ids).await;
    let quarters = in_flight_by_quarter(arrivals, &sent, start, accepted_secs);
    let result = serde_json::json!({
        "clients": clients,
        "dispatches": ids.len(),
        "accepted_per_second": ids.len() as f64 / accepted_secs,
        "delivered_per_second": ids.len() as f64 / delivered_secs,
        "backlog": {
            "in_flight_by_quarter": quarters,
            "drain_after_last_accept_ms": (delivered_secs - accepted_secs) * 1000.0,
        },
        "ingest_latency": percentiles(ingest),
        "submit_to_webhook": arrivals.submit_to_webhook(&sent),
        "stages": stages,
        "cost": cost,
    });
    println!("{}", serde_json::to_string_pretty(&result)?);
    Ok(result)
}

/// How many submitted dispatches were still waiting for their webhook at the end of each quarter
/// of the submitting window. Flat when delivery keeps pace with ingest (what is in flight is the
/// pipeline itself, its rate times its latency); rising quarter by quarter when a backlog builds.
/// The delivered rate alone cannot tell the two apart: it always trails the accepted rate by the
/// last dispatch's own latency.
fn in_flight_by_quarter(
    arrivals: &Arrivals,
    sent: &[(String, Instant)],
    start: Instant,
    accepted_secs: f64,
) -> Vec<usize> {
    let at = arrivals.at.lock().unwrap();
    (1..=4)
        .map(|q| {
            let t = start + Duration::from_secs_f64(accepted_secs * q as f64 / 4.0);
            sent.iter()
                .filter(|(id, submitted)| *submitted <= t && at[id] > t)
                .count()
        })
        .collect()
}

/// Phase 4: `cfg.n` dispatches submitted as fast as they are accepted (128 in flight), until
/// the last webhook: the rate, the machine's CPU per dispatch and each service's share.
async fn end_to_end_sustained(
    cfg: &Config,
    client: &Arc<Client>,
    arrivals: &Arrivals,
    callback: &str,
) -> anyhow::Result<(serde_json::Value, HashMap<String, ServiceUsage>)> {
    let cpu_before: Vec<f64> = cfg.pids.iter().map(|(_, p)| cpu_seconds(*p)).collect();
    let machine_before = machine_cpu_seconds();
    let own_before = cpu_seconds(std::process::id());
    let start = Instant::now();
    let ids: Vec<anyhow::Result<String>> = futures::stream::iter(0..cfg.n)
        .map(|i| {
            let c = client.clone();
            let cb = callback.to_owned();
            async move { c.submit(i, Some(&cb)).await }
        })
        .buffer_unordered(128)
        .collect()
        .await;
    let ids = ids.into_iter().collect::<anyhow::Result<Vec<_>>>()?;
    let submitted = start.elapsed().as_secs_f64();
    let last = wait_arrivals(arrivals, &ids, Duration::from_secs(300)).await?;
    let e2e_secs = last.duration_since(start).as_secs_f64();
    let cpu_after: Vec<f64> = cfg.pids.iter().map(|(_, p)| cpu_seconds(*p)).collect();
    let machine_cpu = machine_cpu_seconds() - machine_before;
    let own_cpu = cpu_seconds(std::process::id()) - own_before;
    let sustained = serde_json::json!({
        "dispatches": cfg.n,
        "machine_cpu_seconds_per_1000_dispatches": machine_cpu * 1000.0 / cfg.n as f64,
        "load_generator_cpu_seconds_per_1000_dispatches": own_cpu * 1000.0 / cfg.n as f64,
        "submit_seconds": submitted,
        "seconds_until_last_webhook": e2e_secs,
        "dispatches_per_second": cfg.n as f64 / e2e_secs,
    });

    let services = cfg
        .pids
        .iter()
        .zip(cpu_before.iter().zip(&cpu_after))
        .map(|((name, pid), (b, a))| {
            (
                name.clone(),
                ServiceUsage {
                    peak_rss_mib: peak_rss_mib(*pid),
                    cpu_seconds_per_1000_dispatches: (a - b) * 1000.0 / cfg.n as f64,
                },
            )
        })
        .collect::<HashMap<_, _>>();
    Ok((sustained, services))
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cfg = config()?;
    let arrivals = Arrivals::default();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let callback = format!("http://{}/hook", listener.local_addr()?);
    let app = Router::new()
        .route("/hook", post(receive))
        .with_state(arrivals.clone());
    tokio::spawn(async move { axum::serve(listener, app).await });

    let client = Arc::new(Client::new(
        reqwest::Client::builder()
            .pool_max_idle_per_host(512)
            .build()?,
        format!("{}/v1/dispatches?async=true", cfg.ingest),
        &cfg.email,
        &cfg.password,
    )?);
    let calibration_before = calibrate();
    // Warm up (connections, prepared statements, caches) along the whole path.
    ingest_closed_loop(&client, 500, 32).await?;
    let warm: Vec<String> = futures::stream::iter(0..500)
        .map(|i| {
            let c = client.clone();
            let cb = callback.clone();
            async move { c.submit(i, Some(&cb)).await }
        })
        .buffer_unordered(32)
        .collect::<Vec<_>>()
        .await
        .into_iter()
        .collect::<anyhow::Result<_>>()?;
    wait_arrivals(&arrivals, &warm, Duration::from_secs(120)).await?;
    if let Some(seconds) = cfg.soak_seconds {
        return soak(&cfg, client, &arrivals, &callback, seconds).await;
    }
    if cfg.e2e_only {
        println!("end to end, {} dispatches as fast as accepted ...", cfg.n);
        let (sustained, services) =
            end_to_end_sustained(&cfg, &client, &arrivals, &callback).await?;
        println!(
            "  {:.0} dispatches/s, {:.2} machine CPU-s per 1 000",
            sustained["dispatches_per_second"].as_f64().unwrap_or(0.0),
            sustained["machine_cpu_seconds_per_1000_dispatches"]
                .as_f64()
                .unwrap_or(0.0)
        );
        return write_mode_results(
            &cfg.out,
            calibration_before,
            serde_json::json!({
                "end_to_end_sustained": sustained,
                "services": services,
            }),
        );
    }

    if cfg.closed_only {
        let mut closed = Vec::new();
        for clients in [16, 64] {
            wait_idle(&client, &cfg.status).await?;
            println!("end to end, closed loop with {clients} clients ...");
            closed.push(closed_loop_e2e(&cfg, &client, &arrivals, &callback, clients).await?);
        }
        return write_mode_results(
            &cfg.out,
            calibration_before,
            serde_json::json!({
                "end_to_end_closed_loop": closed,
            }),
        );
    }

    if cfg.documents_only {
        let (_, pdf, batch) = document_phases(&cfg, &client, &arrivals, &callback).await?;
        println!(
            "  {:.0} PDFs/s, {:.2} CPU-ms per PDF in the worker and its helpers ({:.2} in the \
             helpers), {:.2} for the machine; batch ingest {:.0} dispatches/s",
            pdf.pdfs_per_second,
            pdf.worker_cpu_ms_per_pdf,
            pdf.helpers_cpu_ms_per_pdf,
            pdf.machine_cpu_ms_per_pdf,
            batch.dispatches_per_second
        );
        return write_mode_results(
            &cfg.out,
            calibration_before,
            serde_json::json!({
                "pdf_end_to_end": pdf,
                "batch_ingest": batch,
            }),
        );
    }

    // Latency at fixed offered rates first, on a system in steady state; then the saturating
    // closed-loop phases (which leave vacuum and broker work behind them).
    println!("1/8 end to end, open loop at {} dispatches/s ...", cfg.rate);
    let secs = 10;
    let (sent, _, offered) =
        open_loop(client.clone(), cfg.rate, secs, Some(callback.clone())).await?;
    let sent_ids: Vec<String> = sent.iter().map(|(id, _)| id.clone()).collect();
    wait_arrivals(&arrivals, &sent_ids, Duration::from_secs(120)).await?;
    let e2e_lat: Vec<Duration> = {
        let at = arrivals.at.lock().unwrap();
        sent.iter()
            .map(|(id, t)| at[id].saturating_duration_since(*t))
            .collect()
    };
    let e2e_open = serde_json::json!({"offered_per_second": offered, "dispatches": sent.len(), "submit_to_webhook": percentiles(e2e_lat)});

    wait_idle(&client, &cfg.status).await?;
    println!("2/8 async ingest, open loop at 2000 req/s ...");
    let (_, lat, offered) = open_loop(client.clone(), 2000, 5, None).await?;
    let ingest_open =
        serde_json::json!({"offered_per_second": offered, "latency": percentiles(lat)});

    wait_idle(&client, &cfg.status).await?;
    println!("3/8 async ingest, closed loop ...");
    let machine_before = machine_cpu_seconds();
    let ingest_max = ingest_closed_loop(&client, cfg.n, 64).await?;
    let ingest_machine_cpu = (machine_cpu_seconds() - machine_before) * 1000.0 / cfg.n as f64;

    wait_idle(&client, &cfg.status).await?;
    println!(
        "4/8 end to end, {} dispatches as fast as accepted ...",
        cfg.n
    );
    let (sustained, services) = end_to_end_sustained(&cfg, &client, &arrivals, &callback).await?;
    let mut closed = Vec::new();
    for clients in [16, 64] {
        wait_idle(&client, &cfg.status).await?;
        println!(
            "4/8 end to end, closed loop with {clients} clients, and the cost of a dispatch ..."
        );
        closed.push(closed_loop_e2e(&cfg, &client, &arrivals, &callback, clients).await?);
    }

    let (worker_pid, pdf, batch) = document_phases(&cfg, &client, &arrivals, &callback).await?;

    wait_idle(&client, &cfg.status).await?;
    println!("7/8 retention: a purge of everything above while ingest runs ...");
    let purge = purge_under_load(client.clone()).await?;

    wait_idle(&client, &cfg.status).await?;
    let email_n: usize = std::env::var("DISPATCHER_BENCH_EMAIL_N")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(3_000);
    println!("8/8 email: {email_n} html dispatches to the local SMTP server ...");
    let smtp_pid: u32 = env("BENCH_SMTP_PID")?.parse()?;
    let email = email::email_end_to_end(
        client.clone(),
        &arrivals,
        &callback,
        worker_pid,
        smtp_pid,
        email_n,
    )
    .await?;

    let results = Results {
        machine: format!(
            "{} cores",
            std::thread::available_parallelism()
                .map(|n| n.get())
                .unwrap_or(0)
        ),
        calibration: [calibration_before, calibrate()],
        ingest_closed_loop: ingest_max,
        ingest_closed_loop_machine_cpu_seconds_per_1000: ingest_machine_cpu,
        ingest_open_loop: ingest_open,
        end_to_end_sustained: sustained,
        end_to_end_open_loop: e2e_open,
        end_to_end_closed_loop: closed,
        services,
        pdf_end_to_end: pdf,
        batch_ingest: batch,
        purge_under_load: purge,
        email_end_to_end: email,
    };
    print_table(&results);
    if let Some(dir) = std::path::Path::new(&cfg.out).parent() {
        std::fs::create_dir_all(dir)?;
    }
    std::fs::write(&cfg.out, serde_json::to_string_pretty(&results)? + "\n")?;
    println!("\nwritten to {}", cfg.out);
    Ok(())
}

/// Writes a single-mode run's results (`BENCH_MODE=e2e`, `closed`, `documents`) with the
/// machine's calibration before and after it.
fn write_mode_results(
    out: &str,
    calibration_before: Calibration,
    mut results: serde_json::Value,
) -> anyhow::Result<()> {
    results["calibration"] = serde_json::json!([calibration_before, calibrate()]);
    std::fs::write(out, serde_json::to_string_pretty(&results)?)?;
    Ok(())
}

/// Phases 5 and 6: PDF invoices end to end (`DISPATCHER_BENCH_PDF_N`, default 3 000), then batch
/// ingest. Returns the worker's pid with their results.
async fn document_phases(
    cfg: &Config,
    client: &Arc<Client>,
    arrivals: &Arrivals,
    callback: &str,
) -> anyhow::Result<(u32, documents::PdfResult, documents::BatchResult)> {
    wait_idle(client, &cfg.status).await?;
    let pdf_n: usize = std::env::var("DISPATCHER_BENCH_PDF_N")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(3_000);
    println!("5/8 PDF invoices end to end, {pdf_n} as fast as accepted ...");
    let worker_pid = cfg
        .pids
        .iter()
        .find(|(n, _)| n == "dispatch-worker")
        .map(|(_, p)| *p)
        .context("BENCH_PIDS names no dispatch-worker")?;
    let (template_id, invoice) = documents::invoice_template(client, &cfg.ingest).await?;
    let pdfs = |n| {
        documents::pdf_end_to_end(
            client.clone(),
            arrivals,
            callback,
            &template_id,
            &invoice,
            worker_pid,
            n,
            machine_cpu_seconds,
        )
    };
    // Warm the PDF helpers (fonts, first compilation) outside the measurement.
    pdfs(50).await?;
    let pdf = pdfs(pdf_n).await?;

    wait_idle(client, &cfg.status).await?;
    println!("6/8 batch ingest, 100 dispatches per request ...");
    let batch = documents::batch_ingest(client, &cfg.ingest, 300, 100, 4).await?;
    Ok((worker_pid, pdf, batch))
}

fn print_table(r: &Results) {
    let p = |v: &serde_json::Value, k: &str| v[k].as_f64().unwrap_or(0.0);
    println!("\n{:<52} {:>12}", "measure", "value");
    println!("{}", "-".repeat(65));
    let row = |name: &str, v: f64, unit: &str| println!("{name:<52} {v:>10.3} {unit}");
    for (when, c) in ["before", "after"].iter().zip(&r.calibration) {
        row(
            &format!("calibration {when}: integer work (lower is faster)"),
            c.integer_work_ms,
            "ms",
        );
        row(
            &format!("calibration {when}: loopback TCP round trip"),
            c.loopback_round_trip_us,
            "us",
        );
    }
    row(
        "async ingest, closed loop (64 clients)",
        r.ingest_closed_loop.requests_per_second,
        "req/s",
    );
    row("  latency p50", r.ingest_closed_loop.latency.p50_ms, "ms");
    row("  latency p99", r.ingest_closed_loop.latency.p99_ms, "ms");
    row(
        "  whole machine: CPU per 1000 requests",
        r.ingest_closed_loop_machine_cpu_seconds_per_1000,
        "s",
    );
    row(
        "async ingest, open loop: offered",
        p(&r.ingest_open_loop, "offered_per_second"),
        "req/s",
    );
    let l = &r.ingest_open_loop["latency"];
    row("  latency p50", p(l, "p50_ms"), "ms");
    row("  latency p95", p(l, "p95_ms"), "ms");
    row("  latency p99", p(l, "p99_ms"), "ms");
    row(
        "end to end, sustained",
        p(&r.end_to_end_sustained, "dispatches_per_second"),
        "disp/s",
    );
    row(
        "  whole machine: CPU per 1000 dispatches",
        p(
            &r.end_to_end_sustained,
            "machine_cpu_seconds_per_1000_dispatches",
        ),
        "s",
    );
    row(
        "  of which the load generator",
        p(
            &r.end_to_end_sustained,
            "load_generator_cpu_seconds_per_1000_dispatches",
        ),
        "s",
    );
    row(
        "end to end, open loop: offered",
        p(&r.end_to_end_open_loop, "offered_per_second"),
        "disp/s",
    );
    let l = &r.end_to_end_open_loop["submit_to_webhook"];
    row("  submit->webhook p50", p(l, "p50_ms"), "ms");
    row("  submit->webhook p95", p(l, "p95_ms"), "ms");
    row("  submit->webhook p99", p(l, "p99_ms"), "ms");
    let pdf = &r.pdf_end_to_end;
    row("PDF invoices end to end", pdf.pdfs_per_second, "PDF/s");
    row(
        "  worker + helpers: CPU per PDF",
        pdf.worker_cpu_ms_per_pdf,
        "ms",
    );
    row(
        "  of which the PDF helpers",
        pdf.helpers_cpu_ms_per_pdf,
        "ms",
    );
    row(
        "  whole machine: CPU per PDF",
        pdf.machine_cpu_ms_per_pdf,
        "ms",
    );
    row("  submit->webhook p50", pdf.submit_to_webhook.p50_ms, "ms");
    row("  submit->webhook p99", pdf.submit_to_webhook.p99_ms, "ms");
    row("  worker RSS at start", pdf.memory.worker_start_mib, "MiB");
    row("  worker RSS at end", pdf.memory.worker_end_mib, "MiB");
    row("  worker RSS max", pdf.memory.worker_max_mib, "MiB");
    row(
        "  PDF helpers RSS max (all)",
        pdf.memory.helpers_max_mib,
        "MiB",
    );
    row(
        "  PDF helpers RSS at end (all)",
        pdf.memory.helpers_end_mib,
        "MiB",
    );
    let b = &r.batch_ingest;
    row(
        "batch ingest (100 per request, 4 in flight)",
        b.dispatches_per_second,
        "disp/s",
    );
    row("  batch latency p50", b.batch_latency.p50_ms, "ms");
    row("  batch latency p99", b.batch_latency.p99_ms, "ms");
    let pu = &r.purge_under_load;
    row(
        "purge during load: dispatches deleted/s",
        p(pu, "dispatches_purged_per_second"),
        "disp/s",
    );
    row(
        "  rows deleted (dispatches)",
        pu["purged"]["dispatches"].as_f64().unwrap_or(0.0),
        "",
    );
    for (name, key) in [
        ("  ingest p50 without / during purge", "p50_ms"),
        ("  ingest p99 without / during purge", "p99_ms"),
    ] {
        println!(
            "{name:<52} {:>10.3} / {:.3} ms",
            pu["ingest_latency_without_purge"][key]
                .as_f64()
                .unwrap_or(0.0),
            pu["ingest_latency_during_purge"][key]
                .as_f64()
                .unwrap_or(0.0),
        );
    }
    let e = &r.email_end_to_end;
    row(
        "email end to end (local aiosmtpd)",
        e.emails_per_second,
        "mail/s",
    );
    row("  submit->webhook p50", e.submit_to_webhook.p50_ms, "ms");
    row("  submit->webhook p99", e.submit_to_webhook.p99_ms, "ms");
    row("  worker CPU per email", e.worker_cpu_ms_per_email, "ms");
    row(
        "  SMTP server CPU per email",
        e.smtp_server_cpu_ms_per_email,
        "ms",
    );
    row(
        "  SMTP server busy (1.0 = its one core: the limit)",
        e.smtp_server_busy_fraction,
        "",
    );
    let mut names: Vec<_> = r.services.keys().collect();
    names.sort();
    for n in names {
        let s = &r.services[n];
        row(&format!("{n}: peak RSS"), s.peak_rss_mib, "MiB");
        row(
            &format!("{n}: CPU per 1000 dispatches"),
            s.cpu_seconds_per_1000_dispatches,
            "s",
        );
    }
}
