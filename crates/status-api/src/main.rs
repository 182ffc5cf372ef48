use dispatcher_config::Settings;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let settings = Settings::from_process()?;
    let _telemetry = dispatcher_telemetry::init(&settings.telemetry, "status-api");
    status_api::run(settings, dispatcher_http::shutdown_signal()).await
}
