//! The email provider: its request, how a document becomes a message, and when a transient
//! failure is tried again. The SMTP transport itself lives in dispatch-worker.

use crate::TemplateFormat;
use serde::{Deserialize, Serialize};
use std::time::Duration;

/// Most addresses one dispatch may send to (`to`, `cc` and `bcc` together).
pub const MAX_RECIPIENTS: usize = 50;
/// Longest `subject` template, in bytes.
pub const MAX_SUBJECT_BYTES: usize = 1024;
/// Longest `attachmentName`, in bytes.
pub const MAX_ATTACHMENT_NAME_BYTES: usize = 200;
/// The provider name the email provider's own outcome events carry (`provider.accepted`...).
pub const PROVIDER_NAME: &str = "email";

/// `provider: {"type": "email", ...}` of a dispatch request.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct EmailRequest {
    /// At least one recipient, e.g. `Ada <ada@example.com>` or `ada@example.com`.
    pub to: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub cc: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub bcc: Vec<String>,
    /// A template (same engine as the text formats) rendered with the dispatch's `data`.
    pub subject: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reply_to: Option<String>,
    /// The attachment's file name for a pdf, csv or json document; `document.<ext>` by default.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub attachment_name: Option<String>,
}

impl EmailRequest {
    /// Every address with the field it came from, for validation messages.
    pub fn addresses(&self) -> impl Iterator<Item = (&'static str, &str)> + '_ {
        self.to
            .iter()
            .map(|a| ("to", a.as_str()))
            .chain(self.cc.iter().map(|a| ("cc", a.as_str())))
            .chain(self.bcc.iter().map(|a| ("bcc", a.as_str())))
            .chain(self.reply_to.iter().map(|a| ("replyTo", a.as_str())))
    }

    /// The checks that need no address parser: counts, sizes and the attachment's name.
    pub fn check_shape(&self) -> Result<(), String> {
        if self.to.is_empty() {
            return Err("provider.to needs at least one address".into());
        }
        let n = self.to.len() + self.cc.len() + self.bcc.len();
        if n > MAX_RECIPIENTS {
            return Err(format!(
                "an email may have at most {MAX_RECIPIENTS} recipients (to, cc and bcc), not {n}"
            ));
        }
        if self.subject.trim().is_empty() {
            return Err("provider.subject must not be empty".into());
        }
        if self.subject.len() > MAX_SUBJECT_BYTES {
            return Err(format!(
                "provider.subject is longer than {MAX_SUBJECT_BYTES} bytes"
            ));
        }
        if let Some(name) = &self.attachment_name {
            check_attachment_name(name)?;
        }
        Ok(())
    }
}

/// A file name a mail client can save as is: no directories, no control characters.
pub fn check_attachment_name(name: &str) -> Result<(), String> {
    if name.is_empty() || name.len() > MAX_ATTACHMENT_NAME_BYTES {
        return Err(format!(
            "provider.attachmentName must have 1 to {MAX_ATTACHMENT_NAME_BYTES} bytes"
        ));
    }
    if name == "." || name == ".." || name.chars().any(|c| c.is_control() || "/\\".contains(c)) {
        return Err(
            "provider.attachmentName must be a plain file name (no '/', '\\' or control characters)"
                .into(),
        );
    }
    Ok(())
}

/// How a document of each format travels in an email.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Placement {
    /// The body, as HTML with a plain-text alternative.
    Html,
    /// The body, as Markdown turned into HTML, with the Markdown as the plain-text alternative.
    Markdown,
    /// The body, as plain text.
    Text,
    /// An attachment beside a short text body.
    Attachment { file_extension: &'static str },
}

pub fn placement(format: TemplateFormat) -> Placement {
    match format {
        TemplateFormat::Html => Placement::Html,
        TemplateFormat::Markdown => Placement::Markdown,
        TemplateFormat::Text => Placement::Text,
        TemplateFormat::Pdf => Placement::Attachment {
            file_extension: "pdf",
        },
        TemplateFormat::Csv => Placement::Attachment {
            file_extension: "csv",
        },
        TemplateFormat::Json => Placement::Attachment {
            file_extension: "json",
        },
    }
}

/// The attachment's name: the request's, or `document.<ext>`.
pub fn attachment_name(requested: Option<&str>, file_extension: &str) -> String {
    requested
        .map(str::to_owned)
        .unwrap_or_else(|| format!("document.{file_extension}"))
}

/// The wait before try number `next_try` (2 for the first retry) after a transient failure, or
/// `None` when the schedule is used up and the dispatch should fail.
pub fn retry_delay(next_try: i32, schedule: &[Duration]) -> Option<Duration> {
    let index = usize::try_from(next_try.checked_sub(2)?).ok()?;
    schedule.get(index).copied()
}

/// A readable plain-text version of an HTML body, for the `text/plain` alternative: text of the
/// elements with line breaks where blocks end, scripts and styles dropped, the common entities
/// decoded and runs of blank space folded.
pub fn html_to_text(html: &str) -> String {
    let mut out = String::with_capacity(html.len() / 2);
    let mut rest = html;
    let mut skip_until: Option<&'static str> = None;
    while let Some(lt) = rest.find('<') {
        if skip_until.is_none() {
            push_text(&mut out, &rest[..lt]);
        }
        let after = &rest[lt + 1..];
        let Some(gt) = after.find('>') else {
            // A lone '<' is text.
            if skip_until.is_none() {
                push_text(&mut out, &rest[lt..]);
            }
            rest = "";
            break;
        };
        let tag = after[..gt].trim().to_ascii_lowercase();
        rest = &after[gt + 1..];
        let name: String = tag
            .trim_start_matches('/')
            .chars()
            .take_while(|c| c.is_ascii_alphanumeric())
            .collect();
        if let Some(end) = skip_until {
            if tag.starts_with('/') && name == end {
                skip_until = None;
            }
            continue;
        }
        match name.as_str() {
            "script" => skip_until = Some("script"),
            "style" => skip_until = Some("style"),
            "head" if !tag.starts_with('/') => skip_until = Some("head"),
            "br" => out.push('\n'),
            "li" if !tag.starts_with('/') => {
                newline(&mut out);
                out.push_str("- ");
            }
            "p" | "div" | "tr" | "table" | "ul" | "ol" | "h1" | "h2" | "h3" | "h4" | "h5"
            | "h6" | "section" | "article" | "header" | "footer" | "blockquote" | "pre" | "hr" => {
                newline(&mut out)
            }
            "td" | "th" if tag.starts_with('/') => out.push('\t'),
            _ => {}
        }
    }
    if skip_until.is_none() {
        push_text(&mut out, rest);
    }
    fold_blank_lines(&out)
}

fn newline(out: &mut String) {
    if !out.is_empty() && !out.ends_with('\n') {
        out.push('\n');
    }
}

fn push_text(out: &mut String, text: &str) {
    let mut last_space = out.ends_with([' ', '\n', '\t']) || out.is_empty();
    let decoded = decode_entities(text);
    for c in decoded.chars() {
        if c.is_whitespace() {
            if !last_space {
                out.push(' ');
                last_space = true;
            }
        } else {
            out.push(c);
            last_space = false;
        }
    }
}

fn decode_entities(s: &str) -> std::borrow::Cow<'_, str> {
    if !s.contains('&') {
        return s.into();
    }
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    while let Some(amp) = rest.find('&') {
        out.push_str(&rest[..amp]);
        let after = &rest[amp..];
        let Some(semi) = after.find(';').filter(|i| *i <= 10) else {
            out.push('&');
            rest = &after[1..];
            continue;
        };
        let entity = &after[1..semi];
        let decoded = match entity {
            "amp" => Some('&'),
            "lt" => Some('<'),
            "gt" => Some('>'),
            "quot" => Some('"'),
            "apos" | "#39" => Some('\''),
            "nbsp" => Some(' '),
            "euro" => Some('€'),
            "pound" => Some('£'),
            "yen" => Some('¥'),
            "cent" => Some('¢'),
            "copy" => Some('©'),
            "reg" => Some('®'),
            "trade" => Some('™'),
            "ndash" => Some('–'),
            "mdash" => Some('—'),
            "hellip" => Some('…'),
            "laquo" => Some('«'),
            "raquo" => Some('»'),
            "bull" => Some('•'),
            "middot" => Some('·'),
            _ => entity
                .strip_prefix("#x")
                .or_else(|| entity.strip_prefix("#X"))
                .and_then(|h| u32::from_str_radix(h, 16).ok())
                .or_else(|| entity.strip_prefix('#').and_then(|d| d.parse().ok()))
                .and_then(char::from_u32),
        };
        match decoded {
            Some(c) => {
                out.push(c);
                rest = &after[semi + 1..];
            }
            None => {
                out.push('&');
                rest = &after[1..];
            }
        }
    }
    out.push_str(rest);
    out.into()
}

fn fold_blank_lines(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut blank_run = 0;
    for line in s.lines().map(str::trim_end) {
        let line = line.trim_start_matches(' ');
        if line.is_empty() {
            blank_run += 1;
            if blank_run > 1 || out.is_empty() {
                continue;
            }
        } else {
            blank_run = 0;
        }
        out.push_str(line);
        out.push('\n');
    }
    while out.ends_with("\n\n") {
        out.pop();
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(json: serde_json::Value) -> Result<EmailRequest, serde_json::Error> {
        serde_json::from_value(json)
    }

    #[test]
    fn the_request_shape_is_strict() {
        let r = request(serde_json::json!({
            "to": ["ada@example.com"], "subject": "Invoice {{ number }}",
            "replyTo": "billing@example.com", "attachmentName": "invoice.pdf"
        }))
        .unwrap();
        assert!(r.check_shape().is_ok());
        assert_eq!(r.addresses().count(), 2);
        assert!(
            request(serde_json::json!({"to": ["a@b.c"], "subject": "x", "from": "me"})).is_err()
        );
        assert!(request(serde_json::json!({"to": ["a@b.c"]})).is_err());
    }

    #[test]
    fn shape_errors_name_the_field() {
        let mut r = request(serde_json::json!({"to": [], "subject": "x"})).unwrap();
        assert!(r.check_shape().unwrap_err().contains("provider.to"));
        r.to = vec!["a@b.c".into(); MAX_RECIPIENTS + 1];
        assert!(r.check_shape().unwrap_err().contains("at most"));
        r.to = vec!["a@b.c".into()];
        r.subject = "  ".into();
        assert!(r.check_shape().unwrap_err().contains("subject"));
        r.subject = "s".into();
        for bad in ["../etc/passwd", "a\\b", "", "x\ny", ".."] {
            r.attachment_name = Some(bad.into());
            assert!(
                r.check_shape().unwrap_err().contains("attachmentName"),
                "{bad:?}"
            );
        }
        r.attachment_name = Some("Rechnung 2026-11.pdf".into());
        assert!(r.check_shape().is_ok());
    }

    #[test]
    fn formats_are_placed_as_body_or_attachment() {
        assert_eq!(placement(TemplateFormat::Html), Placement::Html);
        assert_eq!(placement(TemplateFormat::Markdown), Placement::Markdown);
        assert_eq!(placement(TemplateFormat::Text), Placement::Text);
        assert_eq!(
            placement(TemplateFormat::Pdf),
            Placement::Attachment {
                file_extension: "pdf"
            }
        );
        assert_eq!(attachment_name(None, "csv"), "document.csv");
        assert_eq!(attachment_name(Some("r.json"), "json"), "r.json");
    }

    #[test]
    fn retries_follow_the_schedule_then_stop() {
        let s = [Duration::from_secs(1), Duration::from_secs(5)];
        assert_eq!(retry_delay(1, &s), None, "the first try is not a retry");
        assert_eq!(retry_delay(2, &s), Some(Duration::from_secs(1)));
        assert_eq!(retry_delay(3, &s), Some(Duration::from_secs(5)));
        assert_eq!(retry_delay(4, &s), None);
        assert_eq!(retry_delay(2, &[]), None);
        assert_eq!(retry_delay(i32::MIN, &s), None);
    }

    #[test]
    fn html_becomes_readable_text() {
        let html = "<html><head><title>T</title><style>p{color:red}</style></head>\
            <body><h1>Invoice&nbsp;42 &ndash; &euro;</h1><p>Dear   Ada,<br>thanks &amp; regards.</p>\
            <script>alert(1)</script><ul><li>One</li><li>Two &#8364;</li></ul>\
            <table><tr><td>a</td><td>b</td></tr></table></body></html>";
        let text = html_to_text(html);
        assert_eq!(
            text,
            "Invoice 42 – €\nDear Ada,\nthanks & regards.\n- One\n- Two €\na\tb\n"
        );
        assert!(!text.contains("alert") && !text.contains("color"));
    }

    #[test]
    fn html_to_text_survives_broken_markup() {
        assert_eq!(html_to_text("a < b & c"), "a < b & c\n");
        assert_eq!(html_to_text("x &bogus; y &"), "x &bogus; y &\n");
        assert_eq!(html_to_text(""), "");
        assert_eq!(html_to_text("<script>never closed"), "");
    }
}
