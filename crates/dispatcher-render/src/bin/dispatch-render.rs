//! `dispatch-render`: the PDF helper process that dispatch-worker and ingest-api start (one per
//! render slot) and kill when a render passes its time limit. Not meant to be run by hand.

fn main() {
    let args = match dispatcher_render::helper::HelperArgs::parse(std::env::args().skip(1)) {
        Ok(a) => a,
        Err(e) => {
            eprintln!("dispatch-render: {e}");
            std::process::exit(2);
        }
    };
    std::process::exit(dispatcher_render::helper::serve_stdio(args));
}
