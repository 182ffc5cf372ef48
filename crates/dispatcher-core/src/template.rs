//! Template formats and rendering (Jinja syntax through minijinja).
//!
//! Undefined variables are errors rather than empty strings: a document silently missing a customer's
//! name is worse than a failed dispatch that says which variable was missing.

use minijinja::{AutoEscape, Environment, UndefinedBehavior};
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
}

impl TemplateFormat {
    pub const ALL: [TemplateFormat; 5] = [
        TemplateFormat::Html,
        TemplateFormat::Text,
        TemplateFormat::Markdown,
        TemplateFormat::Json,
        TemplateFormat::Csv,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            TemplateFormat::Html => "html",
            TemplateFormat::Text => "text",
            TemplateFormat::Markdown => "markdown",
            TemplateFormat::Json => "json",
            TemplateFormat::Csv => "csv",
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
        }
    }

    /// HTML escapes interpolated values; JSON interpolates values as JSON literals so data cannot
    /// break the document's structure; the plain formats insert values as they are.
    fn auto_escape(self) -> AutoEscape {
        match self {
            TemplateFormat::Html => AutoEscape::Html,
            TemplateFormat::Json => AutoEscape::Json,
            _ => AutoEscape::None,
        }
    }
}

/// A template that does not parse, reported at creation time.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("template syntax error{}: {message}", line.map(|l| format!(" on line {l}")).unwrap_or_default())]
pub struct TemplateSyntaxError {
    pub line: Option<usize>,
    pub message: String,
}

/// A template that parsed but could not be rendered with the given data.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct RenderError {
    pub message: String,
}

fn environment(format: TemplateFormat) -> Environment<'static> {
    let mut env = Environment::new();
    env.set_undefined_behavior(UndefinedBehavior::Strict);
    env.set_auto_escape_callback(move |_| format.auto_escape());
    env
}

fn describe(err: &minijinja::Error) -> String {
    let mut msg = match err.detail() {
        Some(detail) => format!("{}: {detail}", err.kind()),
        None => err.kind().to_string(),
    };
    if let Some(line) = err.line() {
        msg.push_str(&format!(" (line {line})"));
    }
    msg
}

/// Checks that `body` parses. Run when a template is created or submitted inline.
pub fn validate(format: TemplateFormat, body: &str) -> Result<(), TemplateSyntaxError> {
    let env = environment(format);
    env.template_from_str(body)
        .map(|_| ())
        .map_err(|e| TemplateSyntaxError {
            line: e.line(),
            message: e
                .detail()
                .map(str::to_owned)
                .unwrap_or_else(|| e.kind().to_string()),
        })
}

/// Renders `body` with `data` as the context.
pub fn render(
    format: TemplateFormat,
    body: &str,
    data: &serde_json::Value,
) -> Result<String, RenderError> {
    let env = environment(format);
    let tmpl = env.template_from_str(body).map_err(|e| RenderError {
        message: describe(&e),
    })?;
    tmpl.render(data).map_err(|e| RenderError {
        message: describe(&e),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn renders_data() {
        let out = render(
            TemplateFormat::Text,
            "Hello {{ name }}, you owe {{ amount }}.",
            &json!({"name": "Ada", "amount": 42}),
        )
        .unwrap();
        assert_eq!(out, "Hello Ada, you owe 42.");
    }

    #[test]
    fn undefined_variables_are_errors() {
        let err = render(TemplateFormat::Text, "Hi {{ missing }}", &json!({})).unwrap_err();
        assert!(err.message.contains("undefined"), "{}", err.message);
    }

    #[test]
    fn html_is_escaped_and_text_is_not() {
        let data = json!({"x": "<b>&"});
        assert_eq!(
            render(TemplateFormat::Html, "{{ x }}", &data).unwrap(),
            "&lt;b&gt;&amp;"
        );
        assert_eq!(
            render(TemplateFormat::Text, "{{ x }}", &data).unwrap(),
            "<b>&"
        );
    }

    #[test]
    fn json_values_cannot_break_the_document() {
        let out = render(
            TemplateFormat::Json,
            r#"{"name": {{ name }}}"#,
            &json!({"name": "a\", \"admin\": true"}),
        )
        .unwrap();
        let parsed: serde_json::Value = serde_json::from_str(&out).unwrap();
        assert_eq!(parsed["name"], "a\", \"admin\": true");
        assert!(parsed.get("admin").is_none());
    }

    #[test]
    fn syntax_errors_name_the_line() {
        let err = validate(TemplateFormat::Text, "line one\n{% if x %}\nunclosed").unwrap_err();
        assert!(err.line.is_some());
        assert!(!err.message.is_empty());
        assert!(err.to_string().contains("line"));
        assert!(validate(TemplateFormat::Html, "<p>{{ a }}</p>").is_ok());
    }

    #[test]
    fn runtime_errors_are_render_errors() {
        let err = render(TemplateFormat::Text, "{{ \"a\" + 1 }}", &json!({})).unwrap_err();
        assert!(!err.message.is_empty());
    }

    #[test]
    fn formats_have_content_types() {
        for f in TemplateFormat::ALL {
            assert_eq!(TemplateFormat::parse(f.as_str()), Some(f));
            assert!(!f.content_type().is_empty());
        }
        assert_eq!(TemplateFormat::parse("pdf"), None);
    }
}

/// Compiled templates, so rendering the same template again skips parsing. Bounded: when full it
/// starts over (templates are small and the working set of a deployment is its template catalogue).
pub struct RenderCache {
    max: usize,
    map: std::sync::Mutex<
        std::collections::HashMap<(TemplateFormat, String), std::sync::Arc<Environment<'static>>>,
    >,
}

impl RenderCache {
    pub fn new(max: usize) -> Self {
        Self {
            max,
            map: std::sync::Mutex::new(std::collections::HashMap::new()),
        }
    }

    /// Same result as [`render`], compiling each distinct template once.
    pub fn render(
        &self,
        format: TemplateFormat,
        body: &str,
        data: &serde_json::Value,
    ) -> Result<String, RenderError> {
        let key = (format, body.to_owned());
        let cached = self.map.lock().expect("render cache").get(&key).cloned();
        let env = match cached {
            Some(env) => env,
            None => {
                let mut env = environment(format);
                env.add_template_owned("t", body.to_owned())
                    .map_err(|e| RenderError {
                        message: describe(&e),
                    })?;
                let env = std::sync::Arc::new(env);
                let mut map = self.map.lock().expect("render cache");
                if map.len() >= self.max {
                    map.clear();
                }
                map.insert(key, env.clone());
                env
            }
        };
        let tmpl = env.get_template("t").map_err(|e| RenderError {
            message: describe(&e),
        })?;
        tmpl.render(data).map_err(|e| RenderError {
            message: describe(&e),
        })
    }
}

#[cfg(test)]
mod cache_tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn cached_rendering_matches_direct_rendering() {
        let cache = RenderCache::new(2);
        for (f, body, data) in [
            (TemplateFormat::Html, "<b>{{ x }}</b>", json!({"x": "<i>"})),
            (TemplateFormat::Text, "<b>{{ x }}</b>", json!({"x": "<i>"})),
            (
                TemplateFormat::Json,
                "{\"a\": {{ x }}}",
                json!({"x": "q\""}),
            ),
            (TemplateFormat::Html, "<b>{{ x }}</b>", json!({"x": "&"})),
        ] {
            assert_eq!(cache.render(f, body, &data), render(f, body, &data));
        }
        assert!(cache
            .render(TemplateFormat::Text, "{{ nope }}", &json!({}))
            .is_err());
        assert!(cache
            .render(TemplateFormat::Text, "{% if %}", &json!({}))
            .is_err());
    }
}
