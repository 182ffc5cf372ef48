//! Rendering a template with sample data without storing, queueing or sending anything: what
//! `POST /v1/dispatches/validate` answers and what the dashboard's template editor shows, through
//! one path so both render alike.

use crate::ApiError;
use dispatcher_core::TemplateFormat;
use dispatcher_render::{Document, Renderer};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::Semaphore;

/// Longest a preview waits for a render slot before it is answered 503.
pub const PREVIEW_WAIT: Duration = Duration::from_secs(2);

/// The render slots previews may use: one rendering and one waiting per slot of the renderer.
#[derive(Clone)]
pub struct Previewer {
    renderer: Renderer,
    slots: Arc<Semaphore>,
}

impl Previewer {
    pub fn new(renderer: Renderer) -> Self {
        let slots = Arc::new(Semaphore::new(renderer.slots() * 2));
        Self { renderer, slots }
    }

    /// Renders `body` with `data` once the template passed [`crate::commands::check_template_body`].
    /// When every preview slot stays busy for [`PREVIEW_WAIT`] the answer is 503 at once rather
    /// than a queue: a preview can hold a slot for the whole `render.timeout`. A template that
    /// fails to render is 422 `template_render_error` with the message a dispatch would fail with.
    pub async fn render(
        &self,
        format: TemplateFormat,
        body: String,
        data: serde_json::Value,
    ) -> Result<Document, ApiError> {
        let _permit = tokio::time::timeout(PREVIEW_WAIT, self.slots.acquire())
            .await
            .map_err(|_| ApiError::Unavailable("every render slot is busy with previews".into()))?
            .expect("the semaphore is never closed");
        self.renderer
            .render(format, Arc::from(body), Arc::new(data))
            .await
            .map_err(|e| ApiError::unprocessable("template_render_error", e.message))
    }
}
