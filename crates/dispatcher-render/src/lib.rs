//! Turns a template and a dispatch's data into a document.
//!
//! Two engines: minijinja for the text formats (html, text, markdown, json, csv) and an embedded
//! Typst compiler for `pdf`. Both are pure computation with no file, network or clock access, and
//! both are bounded, and neither runs on the async runtime's threads:
//! - the text formats render on a pool of threads sized to the cores, stopped by fuel and an output cap;
//! - PDFs render in helper processes (`dispatch-render`, see [`helper`]), stopped by page, byte
//!   and memory limits, and killed when they pass the time limit.

pub mod helper;
mod limits;
mod pdf;
mod pool;
mod processes;
mod text;
mod wire;

pub use limits::Limits;
use pool::RenderPool;

use dispatcher_core::{RenderError, TemplateFormat, TemplateSyntaxError};
use std::sync::Arc;

/// A rendered document and the content type it is served and sent with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Document {
    pub bytes: Vec<u8>,
    pub content_type: &'static str,
}

/// Checks that `body` parses in its format's template language. Run when a template is created
/// or submitted inline, so a syntax error is answered at once instead of failing a dispatch.
pub fn check_syntax(format: TemplateFormat, body: &str) -> Result<(), TemplateSyntaxError> {
    match format {
        TemplateFormat::Pdf => pdf::check_syntax(body),
        _ => text::check_syntax(format, body),
    }
}

/// Renders documents within [`Limits`]: text formats on a bounded pool of threads, PDFs in as
/// many helper processes.
#[derive(Clone)]
pub struct Renderer {
    pool: RenderPool,
    text: Arc<text::TextEngine>,
    pdf: processes::PdfProcesses,
}

impl Renderer {
    /// Finds the PDF helper (`limits.helper`, or `dispatch-render` beside this executable) and
    /// starts the render slots. Must run inside a Tokio runtime.
    pub fn start(limits: Limits) -> Result<Self, RenderError> {
        let helper = processes::locate_helper(limits.helper.as_deref())?;
        let pool = RenderPool::new(limits.threads, limits.timeout);
        let pdf = processes::PdfProcesses::start(helper, pool.size(), &limits);
        Ok(Self {
            text: Arc::new(text::TextEngine::new(&limits)),
            pool,
            pdf,
        })
    }

    /// Render slots: threads for the text formats, helper processes for PDFs.
    pub fn slots(&self) -> usize {
        self.pool.size()
    }

    /// Renders `body` with `data`. Waits for a free render thread, then at most `limits.timeout`
    /// for the render itself.
    pub async fn render(
        &self,
        format: TemplateFormat,
        body: Arc<str>,
        data: Arc<serde_json::Value>,
    ) -> Result<Document, RenderError> {
        let started = std::time::Instant::now();
        let out = match format {
            TemplateFormat::Pdf => self.pdf.render(body, data).await,
            _ => {
                let engine = self.text.clone();
                self.pool
                    .run(move || engine.render(format, &body, &data))
                    .await
            }
        };
        metrics::histogram!("dispatcher_render_seconds", "format" => format.as_str())
            .record(started.elapsed().as_secs_f64());
        if out.is_err() {
            metrics::counter!("dispatcher_render_failures_total", "format" => format.as_str())
                .increment(1);
        }
        out.map(|bytes| Document {
            bytes,
            content_type: format.content_type(),
        })
    }
}

/// Renders on the calling thread, without a time limit or a helper process: for tools and tests
/// that render trusted templates.
pub fn render_in_process(
    format: TemplateFormat,
    body: &str,
    data: &serde_json::Value,
    limits: &Limits,
) -> Result<Document, RenderError> {
    let bytes = match format {
        TemplateFormat::Pdf => pdf::render(body, data, limits),
        _ => text::TextEngine::new(limits).render(format, body, data),
    }?;
    Ok(Document {
        bytes,
        content_type: format.content_type(),
    })
}

/// A render error with the given message.
pub(crate) fn error(message: impl Into<String>) -> RenderError {
    RenderError {
        message: message.into(),
    }
}
