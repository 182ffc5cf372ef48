//! Template formats and the errors templates give. The engines that render them live in
//! `dispatcher-render`.

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "snake_case")]
pub enum TemplateFormat {
    Html,
    Text,
    Markdown,
    Json,
    Csv,
    /// Typst markup, rendered to PDF.
    Pdf,
}

impl TemplateFormat {
    pub const ALL: [TemplateFormat; 6] = [
        TemplateFormat::Html,
        TemplateFormat::Text,
        TemplateFormat::Markdown,
        TemplateFormat::Json,
        TemplateFormat::Csv,
        TemplateFormat::Pdf,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            TemplateFormat::Html => "html",
            TemplateFormat::Text => "text",
            TemplateFormat::Markdown => "markdown",
            TemplateFormat::Json => "json",
            TemplateFormat::Csv => "csv",
            TemplateFormat::Pdf => "pdf",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|f| f.as_str() == s)
    }

    /// The content type `/result` is served with.
    pub fn content_type(self) -> &'static str {
        match self {
            TemplateFormat::Html => "text/html; charset=utf-8",
            TemplateFormat::Text => "text/plain; charset=utf-8",
            TemplateFormat::Markdown => "text/markdown; charset=utf-8",
            TemplateFormat::Json => "application/json",
            TemplateFormat::Csv => "text/csv; charset=utf-8",
            TemplateFormat::Pdf => "application/pdf",
        }
    }
}

/// A template that does not parse, reported at creation time.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("template syntax error{}: {message}", position(*line, *column))]
pub struct TemplateSyntaxError {
    /// 1-based.
    pub line: Option<usize>,
    /// 1-based, where the engine reports it.
    pub column: Option<usize>,
    pub message: String,
}

fn position(line: Option<usize>, column: Option<usize>) -> String {
    match (line, column) {
        (Some(l), Some(c)) => format!(" on line {l}, column {c}"),
        (Some(l), None) => format!(" on line {l}"),
        _ => String::new(),
    }
}

/// A template that parsed but could not be rendered with the given data, or that exceeded a
/// render limit.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct RenderError {
    pub message: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_have_content_types() {
        for f in TemplateFormat::ALL {
            assert_eq!(TemplateFormat::parse(f.as_str()), Some(f));
            assert!(!f.content_type().is_empty());
        }
        assert_eq!(TemplateFormat::parse("pdf"), Some(TemplateFormat::Pdf));
        assert_eq!(TemplateFormat::Pdf.content_type(), "application/pdf");
        assert_eq!(TemplateFormat::parse("docx"), None);
    }

    #[test]
    fn syntax_errors_say_where() {
        let e = TemplateSyntaxError {
            line: Some(3),
            column: Some(7),
            message: "unclosed delimiter".into(),
        };
        assert_eq!(
            e.to_string(),
            "template syntax error on line 3, column 7: unclosed delimiter"
        );
    }
}
