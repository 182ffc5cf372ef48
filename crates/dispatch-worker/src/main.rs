use dispatcher_config::Settings;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let settings = Settings::from_process()?;
    let _telemetry = dispatcher_telemetry::init(&settings.telemetry, "dispatch-worker");
    dispatch_worker::run(settings, dispatcher_http::shutdown_signal()).await
}
