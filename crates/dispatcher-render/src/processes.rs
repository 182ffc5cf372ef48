//! PDF rendering in helper processes (`dispatch-render`), one per render slot.
//!
//! Typst cannot be interrupted in-process, and a template can ask it for a hundred thousand pages.
//! So each slot keeps one helper process and hands it one render at a time; a render that passes
//! its time limit, or a helper that dies (it caps its own memory), costs only that process: it is
//! killed, the dispatch fails with `template_render_error`, and the slot starts a fresh helper for
//! the next render. The worker's own memory and threads are never involved.

use crate::helper::HelperArgs;
use crate::{error, wire, Limits};
use dispatcher_core::RenderError;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;
use tokio::io::{AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::process::{Child, ChildStdin, ChildStdout, Command};
use tokio::sync::{mpsc, oneshot, Mutex};

pub(crate) const HELPER_NAME: &str = "dispatch-render";

struct Job {
    body: Arc<str>,
    data: Arc<serde_json::Value>,
    reply: oneshot::Sender<Result<Vec<u8>, RenderError>>,
}

#[derive(Clone)]
pub(crate) struct PdfProcesses {
    tx: mpsc::Sender<Job>,
}

/// The helper binary: `configured`, else `dispatch-render` beside the running executable (or one
/// directory up, where Cargo puts binaries relative to test executables).
pub(crate) fn locate_helper(configured: Option<&Path>) -> Result<PathBuf, RenderError> {
    if let Some(p) = configured {
        return if p.is_file() {
            Ok(p.to_path_buf())
        } else {
            Err(error(format!(
                "render.helper {} does not exist",
                p.display()
            )))
        };
    }
    let exe = std::env::current_exe()
        .map_err(|e| error(format!("cannot find the running executable: {e}")))?;
    exe.ancestors()
        .skip(1)
        .take(2)
        .map(|dir| dir.join(HELPER_NAME))
        .find(|p| p.is_file())
        .ok_or_else(|| {
            error(format!(
                "the PDF helper `{HELPER_NAME}` is not beside {} (build it with `cargo build --bins`, or set render.helper)",
                exe.display()
            ))
        })
}

impl PdfProcesses {
    /// `slots` render slots, each keeping one helper process. Must run inside a Tokio runtime.
    pub(crate) fn start(helper: PathBuf, slots: usize, limits: &Limits) -> Self {
        let (tx, rx) = mpsc::channel(slots * 64);
        let rx = Arc::new(Mutex::new(rx));
        let args = HelperArgs {
            max_pages: limits.max_pages,
            max_output_bytes: limits.max_output_bytes,
            max_memory_bytes: limits.max_memory_bytes,
            template_cache_bytes: limits.template_cache_bytes,
        }
        .to_args();
        for _ in 0..slots {
            tokio::spawn(run_slot(
                helper.clone(),
                args.clone(),
                limits.timeout,
                rx.clone(),
            ));
        }
        Self { tx }
    }

    pub(crate) async fn render(
        &self,
        body: Arc<str>,
        data: Arc<serde_json::Value>,
    ) -> Result<Vec<u8>, RenderError> {
        let (reply, answer) = oneshot::channel();
        self.tx
            .send(Job { body, data, reply })
            .await
            .map_err(|_| error("the renderer has stopped"))?;
        answer
            .await
            .map_err(|_| error("the renderer has stopped"))?
    }
}

struct Helper {
    child: Child,
    stdin: ChildStdin,
    stdout: BufReader<ChildStdout>,
}

impl Helper {
    fn spawn(path: &Path, args: &[String]) -> std::io::Result<Self> {
        let mut child = Command::new(path)
            .args(args)
            // The helper caps its address space (render.max_memory_bytes). mimalloc, its
            // allocator, would otherwise reserve 1 GiB of address space at start, leaving a 1 GiB
            // cap no room for anything else; 64 MiB steps keep the cap meaning what it says.
            .env("MIMALLOC_ARENA_RESERVE", "64MiB")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .kill_on_drop(true)
            .spawn()?;
        let stdin = child.stdin.take().expect("piped stdin");
        let stdout = BufReader::new(child.stdout.take().expect("piped stdout"));
        Ok(Self {
            child,
            stdin,
            stdout,
        })
    }

    async fn render(&mut self, request: &[u8]) -> std::io::Result<Result<Vec<u8>, String>> {
        self.stdin.write_all(request).await?;
        self.stdin.flush().await?;
        let status = self.stdout.read_u8().await?;
        let len = self.stdout.read_u32().await? as usize;
        if len > wire::MAX_FRAME {
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                "answer too large",
            ));
        }
        let mut payload = vec![0u8; len];
        self.stdout.read_exact(&mut payload).await?;
        Ok(match status {
            wire::OK => Ok(payload),
            _ => Err(String::from_utf8_lossy(&payload).into_owned()),
        })
    }

    async fn kill(mut self) {
        let _ = self.child.kill().await;
    }
}

/// Starts a helper, retrying briefly: a failed fork (memory pressure) is usually momentary.
async fn spawn_helper(path: &Path, args: &[String]) -> Result<Helper, RenderError> {
    let mut last = None;
    for delay_ms in [0, 50, 250, 1000] {
        tokio::time::sleep(std::time::Duration::from_millis(delay_ms)).await;
        match Helper::spawn(path, args) {
            Ok(h) => return Ok(h),
            Err(e) => last = Some(e),
        }
    }
    Err(error(format!(
        "cannot start the PDF helper {}: {}",
        path.display(),
        last.expect("at least one attempt")
    )))
}

/// Why a helper stopped mid-render, from its exit status.
async fn describe_exit(mut h: Helper) -> String {
    use std::os::unix::process::ExitStatusExt;
    let status = match tokio::time::timeout(std::time::Duration::from_secs(1), h.child.wait()).await
    {
        Ok(Ok(status)) => Some(status),
        _ => None,
    };
    h.kill().await;
    match status.and_then(|s| s.signal()) {
        // An allocation the address-space cap refused aborts the process.
        Some(6) => "the document needs more memory than render.max_memory_bytes allows".into(),
        Some(9) => "the PDF helper was killed (by the system's out-of-memory killer?)".into(),
        Some(sig) => format!("the PDF helper stopped on signal {sig}"),
        None => match status.and_then(|s| s.code()) {
            Some(code) => format!("the PDF helper exited with status {code}"),
            None => "the PDF helper stopped".into(),
        },
    }
}

/// One render on the slot's helper, starting one if there is none. A helper that was already
/// running and fails before answering (it died while idle) is replaced and the render tried once
/// more on a fresh one.
async fn render_once(
    path: &Path,
    args: &[String],
    timeout: std::time::Duration,
    helper: &mut Option<Helper>,
    request: &[u8],
) -> Result<Vec<u8>, RenderError> {
    for attempt in 0..2 {
        let (mut h, fresh) = match helper.take() {
            Some(h) => (h, false),
            None => (spawn_helper(path, args).await?, true),
        };
        match tokio::time::timeout(timeout, h.render(request)).await {
            Ok(Ok(Ok(pdf))) => {
                *helper = Some(h);
                return Ok(pdf);
            }
            Ok(Ok(Err(message))) => {
                *helper = Some(h);
                return Err(error(message));
            }
            Ok(Err(e)) => {
                metrics::counter!("dispatcher_render_helper_failures_total").increment(1);
                if !fresh && attempt == 0 {
                    tracing::warn!(error = %e, "the PDF helper had stopped; starting a new one");
                    h.kill().await;
                    continue;
                }
                let why = describe_exit(h).await;
                return Err(error(format!(
                    "the PDF renderer stopped while rendering: {why}"
                )));
            }
            Err(_) => {
                h.kill().await;
                metrics::counter!("dispatcher_render_timeouts_total").increment(1);
                return Err(error(format!(
                    "rendering took longer than its limit of {timeout:?}"
                )));
            }
        }
    }
    unreachable!("the second attempt always returns")
}

async fn run_slot(
    path: PathBuf,
    args: Vec<String>,
    timeout: std::time::Duration,
    jobs: Arc<Mutex<mpsc::Receiver<Job>>>,
) {
    let mut helper: Option<Helper> = None;
    loop {
        let job = { jobs.lock().await.recv().await };
        let Some(job) = job else { break };
        if job.reply.is_closed() {
            // Nobody waits for this render any more (a cancelled preview request).
            continue;
        }
        let data = serde_json::to_vec(&*job.data).expect("JSON serializes");
        let request = wire::encode_request(&job.body, &data);
        let answer = render_once(&path, &args, timeout, &mut helper, &request).await;
        let _ = job.reply.send(answer);
    }
    if let Some(h) = helper {
        h.kill().await;
    }
}
