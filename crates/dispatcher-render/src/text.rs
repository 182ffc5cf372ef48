//! The text formats (html, text, markdown, json, csv), in Jinja syntax through minijinja.
//!
//! Undefined variables are errors rather than empty strings: a document silently missing a
//! customer's name is worse than a failed dispatch that says which variable was missing. Each
//! render has fuel (about one unit per template instruction) and an output cap, so a template that
//! loops for ever or writes without end fails instead of holding a render thread.

use crate::{error, Limits};
use dispatcher_core::{RenderError, TemplateFormat, TemplateSyntaxError};
use minijinja::{AutoEscape, Environment, ErrorKind, UndefinedBehavior};
use moka::sync::Cache;
use std::hash::{Hash, Hasher};
use std::sync::Arc;

/// A compiled template's memory per byte of its body: the environment keeps the source and its
/// instructions (measured at 1 to 3.5 times the source, plain text to a dense HTML email).
const COMPILED_PER_BODY_BYTE: usize = 4;
/// An entry's memory besides its body: the environment's own tables (measured at 9.5 KiB) and the
/// cache's bookkeeping.
const ENTRY_OVERHEAD: usize = 10 * 1024;

/// HTML escapes interpolated values; JSON interpolates values as JSON literals so data cannot
/// break the document's structure; the plain formats insert values as they are.
fn auto_escape(format: TemplateFormat) -> AutoEscape {
    match format {
        TemplateFormat::Html => AutoEscape::Html,
        TemplateFormat::Json => AutoEscape::Json,
        _ => AutoEscape::None,
    }
}

fn environment(format: TemplateFormat, fuel: Option<u64>) -> Environment<'static> {
    let mut env = Environment::new();
    env.set_undefined_behavior(UndefinedBehavior::Strict);
    env.set_auto_escape_callback(move |_| auto_escape(format));
    env.set_fuel(fuel);
    env
}

fn describe(err: &minijinja::Error) -> String {
    if err.kind() == ErrorKind::OutOfFuel {
        return "the template ran out of fuel: it executes too many instructions (an endless or very long loop?)".into();
    }
    let mut msg = match err.detail() {
        Some(detail) => format!("{}: {detail}", err.kind()),
        None => err.kind().to_string(),
    };
    if let Some(line) = err.line() {
        msg.push_str(&format!(" (line {line})"));
    }
    msg
}

pub(crate) fn check_syntax(format: TemplateFormat, body: &str) -> Result<(), TemplateSyntaxError> {
    let env = environment(format, None);
    env.template_from_str(body)
        .map(|_| ())
        .map_err(|e| TemplateSyntaxError {
            line: e.line(),
            column: None,
            message: e
                .detail()
                .map(str::to_owned)
                .unwrap_or_else(|| e.kind().to_string()),
        })
}

/// Collects output and refuses to grow past a cap; minijinja then stops with a write error.
struct CappedWriter {
    buf: Vec<u8>,
    cap: usize,
    overflowed: bool,
}

impl std::io::Write for CappedWriter {
    fn write(&mut self, data: &[u8]) -> std::io::Result<usize> {
        if self.buf.len() + data.len() > self.cap {
            self.overflowed = true;
            return Err(std::io::Error::other("document too large"));
        }
        self.buf.extend_from_slice(data);
        Ok(data.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Compiled templates by format and body.
type Compiled = Cache<(TemplateFormat, String), Arc<Environment<'static>>>;

/// A `(format, body)` key borrowed from a request, so a lookup does not copy the body. Hashes as
/// the owned key does (a tuple hashes its fields in order).
struct Lookup<'a>(TemplateFormat, &'a str);

impl Hash for Lookup<'_> {
    fn hash<H: Hasher>(&self, state: &mut H) {
        self.0.hash(state);
        self.1.hash(state);
    }
}

impl moka::Equivalent<(TemplateFormat, String)> for Lookup<'_> {
    fn equivalent(&self, key: &(TemplateFormat, String)) -> bool {
        self.0 == key.0 && self.1 == key.1
    }
}

/// Estimated memory of one compiled template: its body as the key, and compiled.
fn weight(body: &str) -> u32 {
    u32::try_from(body.len() * (1 + COMPILED_PER_BODY_BYTE) + ENTRY_OVERHEAD).unwrap_or(u32::MAX)
}

/// Renders the text formats, compiling each distinct template once.
pub(crate) struct TextEngine {
    fuel: u64,
    max_output_bytes: usize,
    /// Bounded by `Limits::template_cache_bytes`; the templates used most stay.
    compiled: Compiled,
}

impl TextEngine {
    pub(crate) fn new(limits: &Limits) -> Self {
        Self {
            fuel: limits.fuel,
            max_output_bytes: limits.max_output_bytes,
            compiled: Cache::builder()
                .max_capacity(limits.template_cache_bytes)
                .weigher(|(_, body): &(TemplateFormat, String), _: &Arc<Environment>| weight(body))
                .build(),
        }
    }

    fn compiled(
        &self,
        format: TemplateFormat,
        body: &str,
    ) -> Result<Arc<Environment<'static>>, RenderError> {
        if let Some(env) = self.compiled.get(&Lookup(format, body)) {
            return Ok(env);
        }
        let mut env = environment(format, Some(self.fuel));
        env.add_template_owned("t", body.to_owned())
            .map_err(|e| error(describe(&e)))?;
        let env = Arc::new(env);
        self.compiled.insert((format, body.to_owned()), env.clone());
        Ok(env)
    }

    pub(crate) fn render(
        &self,
        format: TemplateFormat,
        body: &str,
        data: &serde_json::Value,
    ) -> Result<Vec<u8>, RenderError> {
        let env = self.compiled(format, body)?;
        let tmpl = env.get_template("t").map_err(|e| error(describe(&e)))?;
        let mut out = CappedWriter {
            buf: Vec::new(),
            cap: self.max_output_bytes,
            overflowed: false,
        };
        let rendered = tmpl.render_captured_to(data, &mut out).map(drop);
        match rendered {
            Ok(()) if format == TemplateFormat::Json => {
                // Served and sent as application/json: it has to be JSON.
                serde_json::from_slice::<serde::de::IgnoredAny>(&out.buf)
                    .map_err(|e| error(format!("the rendered document is not valid JSON: {e}")))?;
                Ok(out.buf)
            }
            Ok(()) => Ok(out.buf),
            Err(_) if out.overflowed => Err(error(format!(
                "the document exceeds the output limit of {} bytes",
                self.max_output_bytes
            ))),
            Err(e) => Err(error(describe(&e))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn engine() -> TextEngine {
        TextEngine::new(&Limits::default())
    }

    fn render(
        format: TemplateFormat,
        body: &str,
        data: serde_json::Value,
    ) -> Result<String, RenderError> {
        engine()
            .render(format, body, &data)
            .map(|b| String::from_utf8(b).unwrap())
    }

    #[test]
    fn renders_data() {
        let out = render(
            TemplateFormat::Text,
            "Hello {{ name }}, you owe {{ amount }}.",
            json!({"name": "Ada", "amount": 42}),
        )
        .unwrap();
        assert_eq!(out, "Hello Ada, you owe 42.");
    }

    #[test]
    fn undefined_variables_are_errors() {
        let err = render(TemplateFormat::Text, "Hi {{ missing }}", json!({})).unwrap_err();
        assert!(err.message.contains("undefined"), "{}", err.message);
    }

    #[test]
    fn html_is_escaped_and_text_is_not() {
        let data = json!({"x": "<b>&"});
        assert_eq!(
            render(TemplateFormat::Html, "{{ x }}", data.clone()).unwrap(),
            "&lt;b&gt;&amp;"
        );
        assert_eq!(
            render(TemplateFormat::Text, "{{ x }}", data).unwrap(),
            "<b>&"
        );
    }

    #[test]
    fn json_values_cannot_break_the_document() {
        let out = render(
            TemplateFormat::Json,
            r#"{"name": {{ name }}}"#,
            json!({"name": "a\", \"admin\": true"}),
        )
        .unwrap();
        let parsed: serde_json::Value = serde_json::from_str(&out).unwrap();
        assert_eq!(parsed["name"], "a\", \"admin\": true");
        assert!(parsed.get("admin").is_none());
    }

    #[test]
    fn a_json_template_must_render_json() {
        let err = render(TemplateFormat::Json, "{\"a\": {{ a }}", json!({"a": 1})).unwrap_err();
        assert!(err.message.contains("not valid JSON"), "{}", err.message);
        assert!(render(TemplateFormat::Json, "", json!({})).is_err());
        assert_eq!(
            render(TemplateFormat::Json, "[{{ a }}]", json!({"a": 1})).unwrap(),
            "[1]"
        );
    }

    #[test]
    fn syntax_errors_name_the_line() {
        let err = check_syntax(TemplateFormat::Text, "line one\n{% if x %}\nunclosed").unwrap_err();
        assert!(err.line.is_some());
        assert!(!err.message.is_empty());
        assert!(err.to_string().contains("line"));
        assert!(check_syntax(TemplateFormat::Html, "<p>{{ a }}</p>").is_ok());
    }

    #[test]
    fn runtime_errors_are_render_errors() {
        let err = render(TemplateFormat::Text, "{{ \"a\" + 1 }}", json!({})).unwrap_err();
        assert!(!err.message.is_empty());
    }

    #[test]
    fn a_runaway_loop_runs_out_of_fuel() {
        let e = TextEngine::new(&Limits {
            fuel: 100_000,
            ..Limits::default()
        });
        let body = "{% for a in range(10000) %}{% for b in range(10000) %}{% endfor %}{% endfor %}";
        let err = e
            .render(TemplateFormat::Text, body, &json!({}))
            .unwrap_err();
        assert!(err.message.contains("fuel"), "{}", err.message);
        // The engine goes on with other templates.
        assert_eq!(
            e.render(TemplateFormat::Text, "ok", &json!({})).unwrap(),
            b"ok"
        );
    }

    #[test]
    fn output_is_capped() {
        let e = TextEngine::new(&Limits {
            max_output_bytes: 1000,
            ..Limits::default()
        });
        let body = "{% for a in range(100) %}0123456789abcdef{% endfor %}";
        let err = e
            .render(TemplateFormat::Text, body, &json!({}))
            .unwrap_err();
        assert!(err.message.contains("1000 bytes"), "{}", err.message);
        let small = "{% for a in range(10) %}0123456789{% endfor %}";
        assert_eq!(
            e.render(TemplateFormat::Text, small, &json!({}))
                .unwrap()
                .len(),
            100
        );
    }

    #[test]
    fn compiled_templates_stay_within_their_bytes_and_the_used_ones_stay() {
        let budget = 512 * 1024;
        let e = TextEngine::new(&Limits {
            template_cache_bytes: budget,
            ..Limits::default()
        });
        let hot = "Dear {{ name }}, your order {{ order }} has shipped.";
        let filler = "Lorem ipsum dolor sit amet. ".repeat(40);
        let data = json!({"name": "Ada", "order": 42, "i": 1});
        // About 16 KiB each: 2 000 of them are some 60 times the budget.
        for i in 0..2000 {
            assert_eq!(
                e.render(TemplateFormat::Text, hot, &data).unwrap(),
                b"Dear Ada, your order 42 has shipped."
            );
            let body = format!("{{{{ i }}}} {i} {filler}");
            e.render(TemplateFormat::Html, &body, &data).unwrap();
            if i % 100 == 0 {
                e.compiled.run_pending_tasks();
            }
        }
        e.compiled.run_pending_tasks();
        let size = e.compiled.weighted_size();
        assert!(size <= budget, "{size} bytes held");
        assert!(size > budget / 2, "the cache is used: {size} bytes held");
        assert!(e.compiled.contains_key(&Lookup(TemplateFormat::Text, hot)));
        // The same body in another format is another template.
        assert!(!e.compiled.contains_key(&Lookup(TemplateFormat::Html, hot)));
    }

    #[test]
    fn cached_templates_render_like_fresh_ones() {
        let e = engine();
        for _ in 0..3 {
            assert_eq!(
                e.render(TemplateFormat::Html, "<b>{{ x }}</b>", &json!({"x": "<i>"}))
                    .unwrap(),
                b"<b>&lt;i&gt;</b>"
            );
            assert_eq!(
                e.render(TemplateFormat::Text, "<b>{{ x }}</b>", &json!({"x": "<i>"}))
                    .unwrap(),
                b"<b><i></b>"
            );
        }
        assert!(e
            .render(TemplateFormat::Text, "{% if %}", &json!({}))
            .is_err());
    }
}
