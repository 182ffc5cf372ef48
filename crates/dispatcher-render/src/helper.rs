//! The PDF helper process (`dispatch-render`): renders one request at a time from stdin to
//! stdout until stdin closes.
//!
//! A Typst compilation cannot be interrupted, so it runs here, in a process of its own, which the
//! renderer kills when a render passes its time limit. The process also caps its own address
//! space, so a template that builds an enormous document fails here instead of swelling the
//! worker.

use crate::{pdf, wire, Limits};
use std::io::{BufReader, BufWriter};

/// Limits given on the command line by the renderer that starts the helper.
pub struct HelperArgs {
    pub max_pages: usize,
    pub max_output_bytes: usize,
    pub max_memory_bytes: u64,
    pub template_cache_bytes: u64,
}

impl HelperArgs {
    pub(crate) fn to_args(&self) -> Vec<String> {
        vec![
            "--max-pages".into(),
            self.max_pages.to_string(),
            "--max-output-bytes".into(),
            self.max_output_bytes.to_string(),
            "--max-memory-bytes".into(),
            self.max_memory_bytes.to_string(),
            "--template-cache-bytes".into(),
            self.template_cache_bytes.to_string(),
        ]
    }

    pub fn parse(args: impl IntoIterator<Item = String>) -> Result<Self, String> {
        let mut out = HelperArgs {
            max_pages: Limits::default().max_pages,
            max_output_bytes: Limits::default().max_output_bytes,
            max_memory_bytes: Limits::default().max_memory_bytes,
            template_cache_bytes: Limits::default().template_cache_bytes,
        };
        let mut args = args.into_iter();
        while let Some(flag) = args.next() {
            let value = args.next().ok_or_else(|| format!("{flag} needs a value"))?;
            let bad = |_| format!("{flag}: `{value}` is not a number");
            match flag.as_str() {
                "--max-pages" => out.max_pages = value.parse().map_err(bad)?,
                "--max-output-bytes" => out.max_output_bytes = value.parse().map_err(bad)?,
                "--max-memory-bytes" => out.max_memory_bytes = value.parse().map_err(bad)?,
                "--template-cache-bytes" => {
                    out.template_cache_bytes = value.parse().map_err(bad)?
                }
                other => return Err(format!("unknown argument {other}")),
            }
        }
        Ok(out)
    }
}

/// Serves requests on stdin and stdout until stdin closes. Returns the process's exit code.
pub fn serve_stdio(args: HelperArgs) -> i32 {
    if args.max_memory_bytes > 0 {
        if let Err(e) = rlimit::setrlimit(
            rlimit::Resource::AS,
            args.max_memory_bytes,
            args.max_memory_bytes,
        ) {
            eprintln!("dispatch-render: cannot limit memory: {e}");
            return 1;
        }
    }
    let limits = Limits {
        max_pages: args.max_pages,
        max_output_bytes: args.max_output_bytes,
        template_cache_bytes: args.template_cache_bytes,
        ..Limits::default()
    };
    // Typst recurses deeply on nested content: render on a thread with a large stack.
    let worker = std::thread::Builder::new()
        .name("render".into())
        .stack_size(64 * 1024 * 1024)
        .spawn(move || {
            let mut input = BufReader::new(std::io::stdin().lock());
            let mut output = BufWriter::new(std::io::stdout().lock());
            loop {
                let body = match wire::read_chunk(&mut input) {
                    Ok(b) => b,
                    // The renderer closed the pipe: done.
                    Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return 0,
                    Err(e) => {
                        eprintln!("dispatch-render: reading a request: {e}");
                        return 1;
                    }
                };
                let data = match wire::read_chunk(&mut input) {
                    Ok(d) => d,
                    Err(e) => {
                        eprintln!("dispatch-render: reading a request: {e}");
                        return 1;
                    }
                };
                let answer = render(&body, data, &limits);
                let written = match &answer {
                    Ok(pdf) => wire::write_answer(&mut output, wire::OK, pdf),
                    Err(message) => {
                        wire::write_answer(&mut output, wire::FAILED, message.as_bytes())
                    }
                };
                if let Err(e) = written {
                    eprintln!("dispatch-render: writing an answer: {e}");
                    return 1;
                }
            }
        });
    match worker.map(|t| t.join()) {
        Ok(Ok(code)) => code,
        _ => 1,
    }
}

fn render(body: &[u8], data_json: Vec<u8>, limits: &Limits) -> Result<Vec<u8>, String> {
    let body = std::str::from_utf8(body).map_err(|_| "the template is not UTF-8".to_owned())?;
    // Typst reads the JSON itself (it is bound as `data`).
    pdf::render_json(body, data_json, limits).map_err(|e| e.message)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn arguments_round_trip() {
        let args = HelperArgs {
            max_pages: 7,
            max_output_bytes: 1000,
            max_memory_bytes: 0,
            template_cache_bytes: 4096,
        };
        let parsed = HelperArgs::parse(args.to_args()).unwrap();
        assert_eq!(parsed.max_pages, 7);
        assert_eq!(parsed.max_output_bytes, 1000);
        assert_eq!(parsed.max_memory_bytes, 0);
        assert_eq!(parsed.template_cache_bytes, 4096);
        assert!(HelperArgs::parse(["--template-cache-bytes".into(), "lots".into()]).is_err());
    }
}
