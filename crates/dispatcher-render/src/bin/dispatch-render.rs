//! `dispatch-render`: the PDF helper process that dispatch-worker and ingest-api start (one per
//! render slot) and kill when a render passes its time limit. Not meant to be run by hand.

/// Typst's compiler makes many short-lived allocations per document; mimalloc serves them with
/// less CPU than the system allocator (see the workspace's Cargo.toml).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

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
