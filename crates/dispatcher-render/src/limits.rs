use std::path::PathBuf;
use std::time::Duration;

/// Bounds on one render. A template that exceeds any of them fails its dispatch with
/// `template_render_error` naming the limit, and the renderer goes on with other work.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Limits {
    /// Render threads; 0 means one per available core.
    pub threads: usize,
    /// Longest one render may run once it has started.
    pub timeout: Duration,
    /// Most pages a PDF may have.
    pub max_pages: usize,
    /// Largest document, in bytes, in any format.
    pub max_output_bytes: usize,
    /// minijinja fuel: roughly the number of template instructions one render may execute.
    pub fuel: u64,
    /// Address space of a PDF helper process; 0 leaves it unlimited.
    pub max_memory_bytes: u64,
    /// Compiled templates kept, in estimated bytes: by the text engine, and by each PDF helper.
    pub template_cache_bytes: u64,
    /// The PDF helper binary; `None` looks for `dispatch-render` beside the running executable.
    pub helper: Option<PathBuf>,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            threads: 0,
            timeout: Duration::from_secs(10),
            max_pages: 500,
            max_output_bytes: 20 * 1024 * 1024,
            fuel: 20_000_000,
            max_memory_bytes: 1024 * 1024 * 1024,
            template_cache_bytes: 64 * 1024 * 1024,
            helper: None,
        }
    }
}

impl Limits {
    pub fn from_settings(s: &dispatcher_config::RenderSettings) -> Self {
        Self {
            threads: s.threads,
            timeout: s.timeout,
            max_pages: s.max_pages,
            max_output_bytes: s.max_output_bytes,
            fuel: s.fuel,
            max_memory_bytes: s.max_memory_bytes,
            template_cache_bytes: s.template_cache_bytes,
            helper: (!s.helper.is_empty()).then(|| PathBuf::from(&s.helper)),
        }
    }
}
