//! PDF documents: Typst markup compiled in memory, with the dispatch's data bound as `data`.
//!
//! The compiler sees two files: the template, behind a one-line prelude that binds `data`, and
//! the data as JSON. Fonts are the ones embedded in the binary; imports, `read`, `image` and every
//! other file or package access are refused, the current date is not available, and the PDF
//! carries no creation timestamp, so the same template and data always give the same bytes.
//!
//! The data comes in as a file rather than as a definition in the standard library, so the
//! library stays one value for every render: Typst hashes it for its memo cache, and hashing a
//! library per document cost about 0.4 ms. The parsed template is kept for the next render.

use crate::{error, Limits};
use dispatcher_core::{RenderError, TemplateSyntaxError};
use moka::sync::Cache;
use std::sync::{LazyLock, OnceLock};
use typst::diag::{FileError, FileResult, SourceDiagnostic};
use typst::foundations::{Bytes, Datetime};
use typst::syntax::{DiagSpan, DiagSpanKind, FileId, RootedPath, Source, VirtualPath, VirtualRoot};
use typst::text::{Font, FontBook};
use typst::utils::LazyHash;
use typst::{Library, LibraryExt, World};
use typst_kit::fonts::FontStore;
use typst_layout::PagedDocument;

/// Memoized results not used by the last render are dropped after each render, so memory stays
/// flat however many different documents a helper renders. Measured on a one-page invoice with
/// distinct data each time: keeping results for 1 render took 6.2 ms per document, for 8 renders
/// 8.5 ms, for 16 renders 8.6 ms (a larger cache costs more to look up and to trim than it saves).
const MEMO_MAX_AGE: usize = 1;

/// Binds the data file as `data` ahead of the template's first line.
const PRELUDE: &str = "#let data = json(\"/data.json\")\n";

/// A parsed template's memory, which depends on its markup more than on its length (from 4 times
/// the text for prose to 30 times for code like examples/invoice): per byte of text, the key and
/// the source's text and line index; per syntax node, the node (measured at 50 to 75 bytes); and
/// per entry, the source's own allocations and the cache's bookkeeping.
const SOURCE_PER_TEXT_BYTE: usize = 3;
const SOURCE_PER_NODE: usize = 64;
const SOURCE_OVERHEAD: usize = 1024;

static FONTS: LazyLock<FontStore> = LazyLock::new(|| {
    let mut fonts = FontStore::new();
    fonts.extend(typst_kit::fonts::embedded());
    fonts
});

/// The standard library, hashed once.
static LIBRARY: LazyLock<LazyHash<Library>> =
    LazyLock::new(|| LazyHash::new(Library::builder().build()));

fn file_id(path: &str) -> FileId {
    RootedPath::new(
        VirtualRoot::Project,
        VirtualPath::new(path).expect("a valid path"),
    )
    .intern()
}

static MAIN: LazyLock<FileId> = LazyLock::new(|| file_id("template.typ"));
static DATA: LazyLock<FileId> = LazyLock::new(|| file_id("data.json"));

/// Parsed templates (prelude included) by body, within `Limits::template_cache_bytes` of the
/// first render in this process (a helper renders with one set of limits); the templates used
/// most stay.
static SOURCES: OnceLock<Cache<String, Source>> = OnceLock::new();

/// Estimated memory of one parsed template.
fn source_weight(source: &Source) -> u32 {
    let mut nodes = 0;
    let mut stack = vec![source.root()];
    while let Some(node) = stack.pop() {
        nodes += 1;
        stack.extend(node.children());
    }
    let bytes = source.text().len() * SOURCE_PER_TEXT_BYTE + nodes * SOURCE_PER_NODE;
    u32::try_from(bytes + SOURCE_OVERHEAD).unwrap_or(u32::MAX)
}

fn source_cache(max_bytes: u64) -> Cache<String, Source> {
    Cache::builder()
        .max_capacity(max_bytes)
        .weigher(|_: &String, source: &Source| source_weight(source))
        .build()
}

/// The template behind its prelude, parsed once per distinct body.
fn main_source(body: &str, limits: &Limits) -> Source {
    let cache = SOURCES.get_or_init(|| source_cache(limits.template_cache_bytes));
    cached_source(cache, body)
}

fn cached_source(cache: &Cache<String, Source>, body: &str) -> Source {
    if let Some(s) = cache.get(body) {
        return s;
    }
    let source = Source::new(*MAIN, format!("{PRELUDE}{body}"));
    cache.insert(body.to_owned(), source.clone());
    source
}

/// One render's world: the template, its data, the embedded fonts, nothing else.
struct TemplateWorld {
    source: Source,
    data: Bytes,
}

impl World for TemplateWorld {
    fn library(&self) -> &LazyHash<Library> {
        &LIBRARY
    }

    fn book(&self) -> &LazyHash<FontBook> {
        FONTS.book()
    }

    fn main(&self) -> FileId {
        self.source.id()
    }

    fn source(&self, id: FileId) -> FileResult<Source> {
        if id == self.source.id() {
            Ok(self.source.clone())
        } else {
            Err(refused())
        }
    }

    fn file(&self, id: FileId) -> FileResult<Bytes> {
        if id == *DATA {
            Ok(self.data.clone())
        } else if id == self.source.id() {
            Ok(Bytes::from_string(self.source.text().to_owned()))
        } else {
            Err(refused())
        }
    }

    fn font(&self, index: usize) -> Option<Font> {
        FONTS.font(index)
    }

    fn today(&self, _offset: Option<typst::foundations::Duration>) -> Option<Datetime> {
        // A document that depends on the day it is rendered cannot be reproduced: dates come
        // from the data.
        None
    }
}

fn refused() -> FileError {
    FileError::Other(Some(
        "templates cannot read files or import packages; pass what the document needs in `data`"
            .into(),
    ))
}

/// 1-based line and column of a diagnostic's position in the template, not counting the
/// `prelude_lines` before the template's first line.
fn position(source: &Source, span: DiagSpan, prelude_lines: usize) -> Option<(usize, usize)> {
    let range = match span.get() {
        DiagSpanKind::Detached => return None,
        DiagSpanKind::Number { id, num, sub_range } => {
            if id != source.id() {
                return None;
            }
            source.range(num, sub_range)?
        }
        DiagSpanKind::Range { id, range } => {
            if id != source.id() {
                return None;
            }
            range
        }
    };
    let (line, column) = source.lines().byte_to_line_column(range.start)?;
    // A position inside the prelude is not the template's.
    let line = line.checked_sub(prelude_lines)?;
    Some((line + 1, column + 1))
}

pub(crate) fn check_syntax(body: &str) -> Result<(), TemplateSyntaxError> {
    let source = Source::new(*MAIN, body.to_owned());
    let (errors, _warnings) = source.root().errors_and_warnings();
    match errors.into_iter().next() {
        None => Ok(()),
        Some(e) => {
            let at = position(&source, e.span, 0);
            Err(TemplateSyntaxError {
                line: at.map(|(l, _)| l),
                column: at.map(|(_, c)| c),
                message: e.message.to_string(),
            })
        }
    }
}

fn describe(source: &Source, diagnostic: &SourceDiagnostic) -> String {
    let mut msg = diagnostic.message.to_string();
    // Where the error surfaced, or else the innermost call in the template that led to it.
    let prelude = PRELUDE.lines().count();
    let at = position(source, diagnostic.span, prelude).or_else(|| {
        diagnostic
            .trace
            .iter()
            .rev()
            .find_map(|t| position(source, t.span.into(), prelude))
    });
    if let Some((line, column)) = at {
        msg.push_str(&format!(" (line {line}, column {column})"));
    }
    for hint in diagnostic.hints.iter().take(2) {
        msg.push_str(&format!("; hint: {}", hint.v));
    }
    msg
}

/// Renders `body` with `data` into a PDF within `limits`' page and byte limits.
pub(crate) fn render(
    body: &str,
    data: &serde_json::Value,
    limits: &Limits,
) -> Result<Vec<u8>, RenderError> {
    render_json(
        body,
        serde_json::to_vec(data).expect("JSON serializes"),
        limits,
    )
}

/// [`render`] with the data as JSON text, as the helper process receives it.
pub(crate) fn render_json(
    body: &str,
    data_json: Vec<u8>,
    limits: &Limits,
) -> Result<Vec<u8>, RenderError> {
    let out = compile(body, data_json, limits);
    typst::comemo::evict(MEMO_MAX_AGE);
    out
}

fn compile(body: &str, data_json: Vec<u8>, limits: &Limits) -> Result<Vec<u8>, RenderError> {
    let world = TemplateWorld {
        source: main_source(body, limits),
        data: Bytes::new(data_json),
    };
    let document = typst::compile::<PagedDocument>(&world)
        .output
        .map_err(|errors| match errors.first() {
            Some(first) => error(describe(&world.source, first)),
            None => error("the template did not compile"),
        })?;
    let pages = document.pages().len();
    if pages > limits.max_pages {
        return Err(error(format!(
            "the document has {pages} pages; the limit is {}",
            limits.max_pages
        )));
    }
    let pdf =
        typst_pdf::pdf(&document, &typst_pdf::PdfOptions::default()).map_err(
            |errors| match errors.first() {
                Some(first) => error(format!("PDF export: {}", describe(&world.source, first))),
                None => error("PDF export failed"),
            },
        )?;
    if pdf.len() > limits.max_output_bytes {
        return Err(error(format!(
            "the document exceeds the output limit of {} bytes",
            limits.max_output_bytes
        )));
    }
    Ok(pdf)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn pdf(body: &str, data: serde_json::Value) -> Result<Vec<u8>, RenderError> {
        render(body, &data, &Limits::default())
    }

    #[test]
    fn renders_data_into_a_pdf() {
        let out = pdf(
            "= Invoice for #data.customer\n#for item in data.items [- #item.name: #item.qty\n]",
            json!({"customer": "Ada", "items": [{"name": "Widget", "qty": 3}]}),
        )
        .unwrap();
        assert!(out.starts_with(b"%PDF-"));
    }

    #[test]
    fn same_input_same_bytes() {
        let body = "#set document(title: \"t\")\nHello #data.name";
        let a = pdf(body, json!({"name": "Ada"})).unwrap();
        let b = pdf(body, json!({"name": "Ada"})).unwrap();
        let c = pdf(body, json!({"name": "Bob"})).unwrap();
        assert_eq!(a, b);
        assert_ne!(a, c);
    }

    #[test]
    fn syntax_errors_have_a_position() {
        let err = check_syntax("first line\n#let x = (1, 2\nthird").unwrap_err();
        assert_eq!(err.line, Some(2), "{err:?}");
        assert!(err.column.is_some());
        assert!(!err.message.is_empty());
        assert!(check_syntax("= Title\n#data.x").is_ok());
    }

    #[test]
    fn render_errors_have_typsts_message_and_position() {
        let err = pdf("ok\n\n#data.missing", json!({"present": 1})).unwrap_err();
        assert!(err.message.contains("missing"), "{}", err.message);
        assert!(err.message.contains("line 3"), "{}", err.message);
        let err = pdf("#panic(\"no\")", json!({})).unwrap_err();
        assert!(err.message.contains("panicked"), "{}", err.message);
    }

    #[test]
    fn files_packages_and_today_are_refused() {
        for body in [
            "#read(\"/etc/passwd\")",
            "#image(\"/etc/passwd\")",
            "#import \"other.typ\": x",
            "#import \"@preview/example:0.1.0\": x",
            "#datetime.today()",
        ] {
            assert!(pdf(body, json!({})).is_err(), "{body} should fail");
        }
    }

    #[test]
    fn page_and_size_limits() {
        let many = "#for i in range(20) [#i #pagebreak()]";
        let err = render(
            many,
            &json!({}),
            &Limits {
                max_pages: 5,
                ..Limits::default()
            },
        )
        .unwrap_err();
        assert!(err.message.contains("pages"), "{}", err.message);
        let err = render(
            "Hello",
            &json!({}),
            &Limits {
                max_output_bytes: 100,
                ..Limits::default()
            },
        )
        .unwrap_err();
        assert!(err.message.contains("output limit"), "{}", err.message);
    }

    #[test]
    fn parsed_templates_stay_within_their_bytes_and_the_used_ones_stay() {
        let budget = 512 * 1024;
        let cache = source_cache(budget);
        let hot = "= Invoice for #data.customer\n#for item in data.items [- #item.name\n]";
        let filler = "Lorem ipsum dolor sit amet. ".repeat(40);
        // About 6 KiB each: 2 000 of them are some 20 times the budget.
        for i in 0..2000 {
            assert_eq!(cached_source(&cache, hot).text(), format!("{PRELUDE}{hot}"));
            let body = format!("= Letter {i}\n{filler}");
            assert_eq!(
                cached_source(&cache, &body).text(),
                format!("{PRELUDE}{body}")
            );
            if i % 100 == 0 {
                cache.run_pending_tasks();
            }
        }
        cache.run_pending_tasks();
        let size = cache.weighted_size();
        assert!(size <= budget, "{size} bytes held");
        assert!(size > budget / 2, "the cache is used: {size} bytes held");
        assert!(cache.contains_key(hot), "the template in use stays");
    }

    #[test]
    fn code_weighs_more_than_prose() {
        let prose = Source::detached("Lorem ipsum dolor sit amet. ".repeat(40));
        let code = Source::detached(include_str!("../../../examples/invoice/invoice.typ"));
        let per_byte = |s: &Source| source_weight(s) as f64 / s.text().len() as f64;
        assert!(per_byte(&prose) < 6.0, "{}", per_byte(&prose));
        assert!(per_byte(&code) > 20.0, "{}", per_byte(&code));
    }

    #[test]
    fn an_endless_loop_is_stopped() {
        let err = pdf("#let i = 0\n#while i >= 0 { i += 1 }", json!({})).unwrap_err();
        assert!(err.message.contains("loop"), "{}", err.message);
    }
}
