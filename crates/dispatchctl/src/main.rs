#[tokio::main]
async fn main() -> std::process::ExitCode {
    dispatchctl::main_from_args(std::env::args().collect()).await
}
