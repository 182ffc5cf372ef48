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
        let mut h = match helper.take() {
            Some(h) => h,
            None => match Helper::spawn(&path, &args) {
                Ok(h) => h,
                Err(e) => {
                    let _ = job.reply.send(Err(error(format!(
                        "cannot start the PDF helper {}: {e}",
                        path.display()
                    ))));
                    continue;
                }
            },
        };
        let data = serde_json::to_vec(&*job.data).expect("JSON serializes");
        let request = wire::encode_request(&job.body, &data);
        let answer = match tokio::time::timeout(timeout, h.render(&request)).await {
            Ok(Ok(Ok(pdf))) => {
                helper = Some(h);
                Ok(pdf)
            }
            Ok(Ok(Err(message))) => {
                helper = Some(h);
                Err(error(message))
            }
            Ok(Err(e)) => {
                // The helper died mid-render: most often its memory cap.
                h.kill().await;
                metrics::counter!("dispatcher_render_helper_failures_total").increment(1);
                Err(error(format!(
                    "the PDF renderer stopped while rendering ({e}): the document needs more memory than render.max_memory_bytes allows"
                )))
            }
            Err(_) => {
                h.kill().await;
                metrics::counter!("dispatcher_render_timeouts_total").increment(1);
                Err(error(format!(
                    "rendering took longer than its limit of {timeout:?}"
                )))
            }
        };
        let _ = job.reply.send(answer);
    }
    if let Some(h) = helper {
        h.kill().await;
    }
}
