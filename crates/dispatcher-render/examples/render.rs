//! Renders a template file with a JSON data file, as the worker would, and prints how long it
//! took: `cargo run --release -p dispatcher-render --example render -- FORMAT TEMPLATE DATA OUT`.

use dispatcher_core::TemplateFormat;
use dispatcher_render::Limits;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [format, template, data, out] = args.as_slice() else {
        return Err("usage: render FORMAT TEMPLATE DATA OUT".into());
    };
    let format = TemplateFormat::parse(format).ok_or("unknown format")?;
    let body = std::fs::read_to_string(template)?;
    let data: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(data)?)?;
    dispatcher_render::check_syntax(format, &body)?;
    let limits = Limits {
        max_pages: usize::MAX,
        max_output_bytes: usize::MAX,
        ..Limits::default()
    };
    let mut doc = None;
    for i in 0..5 {
        let started = std::time::Instant::now();
        doc = Some(dispatcher_render::render_in_process(
            format, &body, &data, &limits,
        )?);
        eprintln!("render {i}: {:?}", started.elapsed());
    }
    let doc = doc.expect("rendered");
    std::fs::write(out, &doc.bytes)?;
    eprintln!("{} bytes of {}", doc.bytes.len(), doc.content_type);
    Ok(())
}
