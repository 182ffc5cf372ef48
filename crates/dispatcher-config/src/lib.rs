//! Typed settings for every Dispatcher binary.
//!
//! Sources, later ones winning: the defaults compiled into the binary (`config/default.toml`), the
//! same file on disk if present, `config/$APP_ENV.toml`, a `--config FILE`, then `DISPATCHER__`
//! environment variables (`DISPATCHER__DELIVERY__ALLOW_HTTP=true`). The result is validated once at
//! start-up so a bad value stops the process with a clear message instead of failing later.

use config::{Config, Environment, File, FileFormat};
use serde::{Deserialize, Deserializer};
use std::collections::HashMap;
use std::fmt;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

const DEFAULTS: &str = include_str!("../../../config/default.toml");

#[derive(Debug, thiserror::Error)]
pub enum SettingsError {
    #[error("configuration: {0}")]
    Load(#[from] config::ConfigError),
    #[error("configuration: {0}")]
    Invalid(String),
}

/// A value that must not appear in logs (database URLs carry passwords).
#[derive(Clone, Default, Deserialize, PartialEq, Eq)]
#[serde(transparent)]
pub struct Secret(String);

impl Secret {
    pub fn new(s: impl Into<String>) -> Self {
        Self(s.into())
    }
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("\"***\"")
    }
}

#[derive(Debug, Clone, Deserialize)]
pub struct Settings {
    /// From SIGTERM to exit, at most: half for the HTTP requests in flight, half for the
    /// background tasks. Keep it below the Kubernetes grace period.
    #[serde(deserialize_with = "de_duration")]
    pub shutdown_timeout: Duration,
    /// Longest any API request may run (a sync submission gets its `ingest.sync_timeout` plus
    /// a margin when that is longer).
    #[serde(deserialize_with = "de_duration")]
    pub request_timeout: Duration,
    pub database: DatabaseSettings,
    pub amqp: AmqpSettings,
    pub outbox: OutboxSettings,
    pub ingest: IngestSettings,
    pub status: StatusSettings,
    pub ui: UiSettings,
    pub worker: WorkerSettings,
    pub render: RenderSettings,
    pub deliverer: DelivererSettings,
    pub delivery: DeliverySettings,
    pub rate_limit: RateLimitSettings,
    pub retention: RetentionSettings,
    pub storage: StorageSettings,
    pub smtp: SmtpSettings,
    pub telemetry: TelemetrySettings,
    /// Inbound provider callbacks, by provider name.
    #[serde(default)]
    pub providers: HashMap<String, ProviderSettings>,
}

/// The email provider's SMTP relay. Without `url`, email dispatches are refused at submission.
#[derive(Debug, Clone, Deserialize)]
pub struct SmtpSettings {
    /// `smtp://host:port` (STARTTLS as `starttls` says) or `smtps://host:port` (implicit TLS);
    /// credentials may be given in the URL. Empty turns the email provider off.
    pub url: Secret,
    /// The `From` of every message, e.g. `Billing <billing@example.com>`.
    #[serde(deserialize_with = "de_string")]
    pub from: String,
    /// Used when the URL carries no credentials.
    #[serde(deserialize_with = "de_string")]
    pub username: String,
    pub password: Secret,
    /// For `smtp://`: STARTTLS when the server offers it, or a refusal to send without it.
    pub starttls: StartTls,
    /// Longest one SMTP command may wait for its answer.
    #[serde(deserialize_with = "de_duration")]
    pub timeout: Duration,
    /// Connections kept open to the relay, per worker.
    pub pool_size: u32,
    /// Waits before each new try after a transient failure (a 4xx reply or a connection error),
    /// through the broker's delay queues; once they are used up the dispatch fails.
    #[serde(deserialize_with = "de_schedule")]
    pub retry_schedule: Vec<Duration>,
}

impl SmtpSettings {
    pub fn enabled(&self) -> bool {
        !self.url.expose().is_empty()
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum StartTls {
    Opportunistic,
    Required,
}

#[derive(Debug, Clone, Deserialize)]
pub struct ProviderSettings {
    /// HMAC-SHA256 key the provider signs its callbacks with.
    pub secret: Secret,
}

/// How long finished dispatches (with their documents, deliveries and attempts) are kept.
#[derive(Debug, Clone, Deserialize)]
pub struct RetentionSettings {
    /// Days a finished dispatch is kept; 0 keeps everything.
    pub days: u32,
    /// How often each dispatch-worker looks for expired rows.
    #[serde(deserialize_with = "de_duration")]
    pub interval: Duration,
    /// Dispatches deleted per transaction.
    pub batch_size: i64,
    /// Pause between two batches, so deletes share the database with the traffic.
    #[serde(deserialize_with = "de_duration")]
    pub pause: Duration,
}

/// Where rendered documents are kept (`storage.url`).
#[derive(Debug, Clone, Deserialize)]
pub struct StorageSettings {
    /// `postgres` (in the dispatch's row), `file:///absolute/path` or `s3://bucket[/prefix]`;
    /// see [`StorageSettings::location`].
    #[serde(deserialize_with = "de_string")]
    pub url: String,
    /// S3 only: the endpoint of an S3-compatible server (`https://minio.internal:9000`). Each
    /// empty S3 value falls back to the usual AWS variables (`AWS_ENDPOINT_URL`, `AWS_REGION`,
    /// `AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`, ...), then to AWS's own defaults.
    #[serde(deserialize_with = "de_string")]
    pub endpoint: String,
    #[serde(deserialize_with = "de_string")]
    pub region: String,
    #[serde(deserialize_with = "de_string")]
    pub access_key_id: String,
    #[serde(deserialize_with = "de_secret")]
    pub secret_access_key: Secret,
    /// Allow an `http://` endpoint (a server without TLS on loopback or a private network).
    pub allow_http: bool,
}

/// Where `storage.url` says documents go.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StorageLocation {
    /// The `dispatches.result` column (the default).
    Postgres,
    /// Files under this directory.
    File(PathBuf),
    /// Objects in an S3 bucket, under `prefix` (empty, or segments joined by `/`).
    S3 { bucket: String, prefix: String },
}

impl StorageSettings {
    /// Parses `url`; the error says what is wrong and what is accepted.
    pub fn location(&self) -> Result<StorageLocation, String> {
        let url = self.url.trim();
        let bad = |why: &str| {
            Err(format!(
                "storage.url `{url}` {why} (expected `postgres`, `file:///absolute/path` or \
                 `s3://bucket`)"
            ))
        };
        if url == "postgres" {
            return Ok(StorageLocation::Postgres);
        }
        if let Some(path) = url.strip_prefix("file://") {
            if !path.starts_with('/') {
                return bad("must name an absolute local path after `file://`");
            }
            if path.contains('%') || path.contains('?') || path.contains('#') {
                return bad("must be a plain path, without escapes, `?` or `#`");
            }
            return Ok(StorageLocation::File(PathBuf::from(path)));
        }
        if let Some(rest) = url.strip_prefix("s3://") {
            let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
            // S3's bucket naming rules: 3 to 63 lowercase letters, digits, dots and hyphens,
            // beginning and ending with a letter or a digit.
            let edge_ok =
                |c: Option<char>| c.is_some_and(|c| c.is_ascii_lowercase() || c.is_ascii_digit());
            if !(3..=63).contains(&bucket.len())
                || !bucket
                    .chars()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '.' || c == '-')
                || !edge_ok(bucket.chars().next())
                || !edge_ok(bucket.chars().last())
            {
                return bad(
                    "does not name a valid bucket (3 to 63 lowercase letters, digits, `.` and `-`)",
                );
            }
            let prefix = prefix.trim_matches('/');
            if !prefix.is_empty()
                && prefix.split('/').any(|s| {
                    s.is_empty() || s == "." || s == ".." || s.contains(['%', '?', '#', '\\'])
                })
            {
                return bad("has an invalid prefix after the bucket");
            }
            return Ok(StorageLocation::S3 {
                bucket: bucket.to_owned(),
                prefix: prefix.to_owned(),
            });
        }
        bad("is not supported")
    }
}

#[derive(Debug, Clone, Deserialize)]
pub struct RateLimitSettings {
    pub requests_per_second: f64,
    pub burst: u32,
    /// Failed sign-ins allowed per account (email) per minute, with this many at once.
    pub failed_logins_per_account: u32,
    /// Failed sign-ins allowed per client address per minute, with this many at once.
    pub failed_logins_per_address: u32,
}

#[derive(Debug, Clone, Deserialize)]
pub struct DatabaseSettings {
    /// The primary. Several hosts may be listed
    /// (`postgresql://u@db1:5432,db2:5432/dispatcher?target_session_attrs=read-write`): each
    /// connection goes to the first that answers and, with `read-write`, accepts writes, so
    /// after a failover new connections find the promoted standby.
    pub url: Secret,
    /// An optional replica for reads that may lag a little (status-api's lists, and the status
    /// of dispatches the replica already shows finished). `None`: every read goes to `url`.
    #[serde(default, deserialize_with = "de_opt_secret")]
    pub read_url: Option<Secret>,
    pub pool_size: usize,
    pub migrate: bool,
    #[serde(deserialize_with = "de_duration")]
    pub connect_timeout: Duration,
    #[serde(deserialize_with = "de_duration")]
    pub acquire_timeout: Duration,
    /// Longest one statement on a pooled connection may run (Postgres `statement_timeout`).
    #[serde(deserialize_with = "de_duration")]
    pub statement_timeout: Duration,
    /// PEM bundle of the CAs the server's certificate must chain up to (`sslmode=verify-ca` or
    /// `verify-full` in `url`; with `prefer` or `require` it is checked too). `None`: the Mozilla
    /// roots compiled into the binary.
    #[serde(default, deserialize_with = "de_opt_path")]
    pub ca_file: Option<PathBuf>,
}

#[derive(Debug, Clone, Deserialize)]
pub struct AmqpSettings {
    /// One broker, or several nodes of one cluster separated by commas.
    pub url: Secret,
    /// Several nodes of one cluster (a list, or one string separated by commas). When set it
    /// takes the place of `url`; services connect to a live node and move to another when
    /// theirs goes away.
    #[serde(default, deserialize_with = "de_secret_list")]
    pub urls: Secret,
    /// Longest wait for a node to answer the AMQP handshake before trying the next one.
    #[serde(deserialize_with = "de_duration")]
    pub connect_timeout: Duration,
    #[serde(deserialize_with = "de_string")]
    pub prefix: String,
    pub prefetch: u16,
}

#[derive(Debug, Clone, Deserialize)]
pub struct OutboxSettings {
    pub batch_size: usize,
    #[serde(deserialize_with = "de_duration")]
    pub poll_interval: Duration,
    /// Longest wait for a batch's publisher confirms; past it the batch is published again later.
    #[serde(deserialize_with = "de_duration")]
    pub confirm_timeout: Duration,
    /// Refusals (nacks) of one row by the broker before the relay quarantines it.
    pub max_publish_failures: i32,
}

#[derive(Debug, Clone, Deserialize)]
pub struct IngestSettings {
    pub listen: SocketAddr,
    #[serde(deserialize_with = "de_duration")]
    pub sync_timeout: Duration,
    pub batch_max: usize,
    /// Batch inserts in flight at once, each on its own pooled connection.
    pub write_lanes: usize,
    /// Dispatches of one insert sent in one `dispatch.requested` message (see
    /// `proto-schemas/dispatch.requests.schema.json`); 1 sends each request as its own message,
    /// as a dispatch-worker from before batched requests expects (set it while such workers
    /// still run during an upgrade).
    pub requests_per_message: usize,
    /// Accepted messages waiting (work queues plus unpublished outbox rows) past which new
    /// submissions get `429 overloaded` with `Retry-After`; 0 turns the limit off.
    pub max_backlog: u64,
    /// The wait in line, at the current drain rate, past which a new submission is answered
    /// later (paced) rather than added to a growing queue; 0 turns pacing off.
    #[serde(deserialize_with = "de_duration")]
    pub pace_target: Duration,
    /// Longest a submission is held back by pacing before it is accepted all the same.
    #[serde(deserialize_with = "de_duration")]
    pub pace_max_wait: Duration,
    /// Dispatches a batch (`POST /v1/dispatches/batch`) may put in line beyond the pace target
    /// before batches are paced too: bulk work is accepted at full speed up to this bound.
    pub pace_batch_burst: u64,
    pub max_body_bytes: usize,
    /// Largest body of `POST /v1/dispatches/batch` (up to 1 000 dispatch bodies).
    pub max_batch_body_bytes: usize,
    #[serde(deserialize_with = "de_duration")]
    pub provider_event_window: Duration,
    /// Bytes of stored templates kept in memory (bodies plus a per-entry overhead).
    pub template_cache_bytes: u64,
}

#[derive(Debug, Clone, Deserialize)]
pub struct StatusSettings {
    pub listen: SocketAddr,
    pub public_url: String,
}

/// The dashboard at `/ui/` on the status API's port.
#[derive(Debug, Clone, Deserialize)]
pub struct UiSettings {
    /// A session unused this long ends (the browser signs in again).
    #[serde(deserialize_with = "de_duration")]
    pub session_idle: Duration,
    /// A session ends this long after sign-in, however active.
    #[serde(deserialize_with = "de_duration")]
    pub session_max: Duration,
}

#[derive(Debug, Clone, Deserialize)]
pub struct WorkerSettings {
    pub listen: SocketAddr,
    pub batch_max: usize,
    pub concurrency: usize,
    pub consumers: usize,
    /// Times a dispatch may be taken up for processing without finishing (its worker stopped or
    /// was killed each time) before its message is quarantined as a dead letter.
    pub max_processing_attempts: i32,
    /// Outcome events of one type and batch sent as one broker message (the body of
    /// `proto-schemas/dispatch.outcomes.schema.json`); 1 sends each event as its own message,
    /// which a webhook-deliverer older than batched outcomes needs during an upgrade.
    pub events_per_message: usize,
}

/// Limits on rendering one document, in the worker and in `POST /v1/dispatches/validate`.
#[derive(Debug, Clone, Deserialize)]
pub struct RenderSettings {
    /// Render threads per process; 0 means one per core.
    pub threads: usize,
    /// Longest one render may take once started.
    #[serde(deserialize_with = "de_duration")]
    pub timeout: Duration,
    /// Most pages a PDF may have.
    pub max_pages: usize,
    /// Largest rendered document, in bytes.
    pub max_output_bytes: usize,
    /// minijinja fuel per render (about one unit per template instruction).
    pub fuel: u64,
    /// Address space of each PDF helper process; 0 leaves it unlimited.
    pub max_memory_bytes: u64,
    /// Bytes of compiled templates kept by each process's text engine and by each PDF helper,
    /// estimated from their text (and a PDF template's syntax tree).
    pub template_cache_bytes: u64,
    /// Path of the PDF helper binary; empty looks for `dispatch-render` beside the service's own.
    #[serde(deserialize_with = "de_string")]
    pub helper: String,
}

#[derive(Debug, Clone, Deserialize)]
pub struct DelivererSettings {
    pub listen: SocketAddr,
    pub batch_max: usize,
    pub concurrency: usize,
    pub consumers: usize,
}

#[derive(Debug, Clone, Deserialize)]
pub struct DeliverySettings {
    #[serde(deserialize_with = "de_duration")]
    pub timeout: Duration,
    #[serde(deserialize_with = "de_schedule")]
    pub retry_schedule: Vec<Duration>,
    pub allow_http: bool,
    #[serde(deserialize_with = "de_list")]
    pub allow_hosts: Vec<String>,
    pub circuit_breaker_threshold: u32,
    #[serde(deserialize_with = "de_duration")]
    pub circuit_breaker_cooldown: Duration,
    /// Requests one endpoint (URL origin) gets at once at first; the limit adapts from there.
    pub endpoint_initial_in_flight: usize,
    /// Most requests one endpoint gets at once from one deliverer.
    pub endpoint_max_in_flight: usize,
    #[serde(deserialize_with = "de_duration")]
    pub secret_rotation_grace: Duration,
    /// A subscription whose endpoint has failed without a success for this long (with its
    /// breaker open) is disabled; zero never disables.
    #[serde(deserialize_with = "de_duration")]
    pub disable_failing_after: Duration,
}

impl DeliverySettings {
    /// Every delay a retry or a held-back delivery can wait: the schedule plus the cooldown.
    pub fn all_delays(&self) -> Vec<Duration> {
        let mut d = self.retry_schedule.clone();
        d.push(self.circuit_breaker_cooldown);
        d
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, Clone, Deserialize)]
pub struct TelemetrySettings {
    pub log_format: LogFormat,
    pub log_level: String,
    #[serde(deserialize_with = "de_string")]
    pub otlp_endpoint: String,
    pub otlp_protocol: String,
}

/// Where settings come from besides the compiled-in defaults.
#[derive(Debug, Default, Clone)]
pub struct Sources {
    /// An extra file layered before the environment (`--config FILE`).
    pub file: Option<PathBuf>,
    /// Environment to read `DISPATCHER__*` keys from; `None` reads the process environment.
    /// Tests pass their own map so parallel tests never share settings.
    pub env: Option<HashMap<String, String>>,
    /// Skip `config/*.toml` in the working directory (tests must not depend on it).
    pub skip_cwd_files: bool,
}

impl Settings {
    /// Settings for a binary: process environment, `--config FILE` from the command line.
    pub fn from_process() -> Result<Self, SettingsError> {
        Self::load(Sources {
            file: config_file_arg(std::env::args()),
            ..Sources::default()
        })
    }

    pub fn load(sources: Sources) -> Result<Self, SettingsError> {
        let mut builder = Config::builder().add_source(File::from_str(DEFAULTS, FileFormat::Toml));
        if !sources.skip_cwd_files {
            let app_env = sources
                .env
                .as_ref()
                .and_then(|e| e.get("APP_ENV").cloned())
                .or_else(|| std::env::var("APP_ENV").ok());
            builder = builder.add_source(File::with_name("config/default").required(false));
            if let Some(app_env) = app_env {
                builder = builder
                    .add_source(File::with_name(&format!("config/{app_env}")).required(false));
            }
        }
        if let Some(file) = &sources.file {
            builder = builder.add_source(File::from(file.as_path()).required(true));
        }
        let env = Environment::with_prefix("DISPATCHER")
            .prefix_separator("__")
            .separator("__")
            .try_parsing(true)
            .source(sources.env.clone());
        let settings: Settings = builder.add_source(env).build()?.try_deserialize()?;
        settings.validate()?;
        Ok(settings)
    }

    fn validate(&self) -> Result<(), SettingsError> {
        let bad = |m: String| Err(SettingsError::Invalid(m));
        if self.amqp.prefix.is_empty()
            || !self
                .amqp
                .prefix
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
        {
            return bad(format!(
                "amqp.prefix `{}` must be non-empty and use only letters, digits, '-', '_' and '.'",
                self.amqp.prefix
            ));
        }
        let brokers = self.amqp.addresses();
        if brokers.is_empty() {
            return bad("amqp.url (or amqp.urls) must name at least one broker".into());
        }
        if let Some(n) = brokers.iter().position(|a| {
            let a = a.expose();
            !(a.starts_with("amqp://") || a.starts_with("amqps://"))
        }) {
            return bad(format!(
                "broker address {} of amqp.urls must start with amqp:// or amqps://",
                n + 1
            ));
        }
        if self.amqp.connect_timeout.is_zero() {
            return bad("amqp.connect_timeout must be positive".into());
        }
        if self.amqp.prefetch == 0 {
            return bad("amqp.prefetch must be at least 1".into());
        }
        if self.database.pool_size == 0 {
            return bad("database.pool_size must be at least 1".into());
        }
        for (name, v) in [
            ("ingest.batch_max", self.ingest.batch_max),
            ("ingest.write_lanes", self.ingest.write_lanes),
            (
                "ingest.requests_per_message",
                self.ingest.requests_per_message,
            ),
            ("worker.batch_max", self.worker.batch_max),
            ("worker.concurrency", self.worker.concurrency),
            ("worker.events_per_message", self.worker.events_per_message),
            ("deliverer.batch_max", self.deliverer.batch_max),
            ("deliverer.concurrency", self.deliverer.concurrency),
            ("worker.consumers", self.worker.consumers),
            ("deliverer.consumers", self.deliverer.consumers),
            ("outbox.batch_size", self.outbox.batch_size),
            ("render.max_pages", self.render.max_pages),
            ("render.max_output_bytes", self.render.max_output_bytes),
        ] {
            if v == 0 {
                return bad(format!("{name} must be at least 1"));
            }
        }
        if self.render.timeout.is_zero() || self.render.fuel == 0 {
            return bad("render.timeout and render.fuel must be positive".into());
        }
        if self.delivery.timeout.is_zero() {
            return bad("delivery.timeout must be positive".into());
        }
        if self.retention.batch_size < 1 || self.retention.interval.is_zero() {
            return bad("retention.batch_size and retention.interval must be positive".into());
        }
        let location = self.storage.location().map_err(SettingsError::Invalid)?;
        if matches!(location, StorageLocation::S3 { .. }) {
            let endpoint = self.storage.endpoint.as_str();
            if !endpoint.is_empty()
                && !endpoint.starts_with("https://")
                && !endpoint.starts_with("http://")
            {
                return bad(format!(
                    "storage.endpoint `{endpoint}` must be an http(s) URL"
                ));
            }
            if endpoint.starts_with("http://") && !self.storage.allow_http {
                return bad(format!(
                    "storage.endpoint `{endpoint}` is plain http: set storage.allow_http = true \
                     to allow it"
                ));
            }
        }
        if self.smtp.enabled() {
            let url = url::Url::parse(self.smtp.url.expose())
                .map_err(|e| SettingsError::Invalid(format!("smtp.url is not a URL: {e}")))?;
            if !["smtp", "smtps"].contains(&url.scheme()) || url.host_str().is_none() {
                return bad("smtp.url must be smtp://host[:port] or smtps://host[:port]".into());
            }
            if !self.smtp.from.contains('@') {
                return bad("smtp.from must be set to an email address when smtp.url is".into());
            }
            if self.smtp.pool_size == 0 || self.smtp.timeout.is_zero() {
                return bad("smtp.pool_size and smtp.timeout must be positive".into());
            }
        }
        if self.ui.session_idle.is_zero() || self.ui.session_max < self.ui.session_idle {
            return bad(
                "ui.session_idle must be positive and ui.session_max at least as long".into(),
            );
        }
        if !["http/protobuf", "http/json"].contains(&self.telemetry.otlp_protocol.as_str()) {
            return bad("telemetry.otlp_protocol must be http/protobuf or http/json".into());
        }
        if !self.status.public_url.starts_with("http://")
            && !self.status.public_url.starts_with("https://")
        {
            return bad("status.public_url must be an http(s) URL".into());
        }
        Ok(())
    }

    /// `status.public_url` without a trailing slash.
    pub fn public_base(&self) -> &str {
        self.status.public_url.trim_end_matches('/')
    }
}

/// The value of `--config FILE` or `--config=FILE`, if given.
pub fn config_file_arg(args: impl IntoIterator<Item = String>) -> Option<PathBuf> {
    let mut args = args.into_iter();
    while let Some(a) = args.next() {
        if a == "--config" {
            return args.next().map(PathBuf::from);
        }
        if let Some(v) = a.strip_prefix("--config=") {
            return Some(PathBuf::from(v));
        }
    }
    None
}

/// Accepts strings, and numbers that the environment parser turned into numbers (`PREFIX=123`).
#[derive(Deserialize)]
#[serde(untagged)]
enum Scalar {
    S(String),
    I(i64),
    F(f64),
    B(bool),
}

impl Scalar {
    fn into_string(self) -> String {
        match self {
            Scalar::S(s) => s,
            Scalar::I(i) => i.to_string(),
            Scalar::F(f) => f.to_string(),
            Scalar::B(b) => b.to_string(),
        }
    }
}

fn de_string<'de, D: Deserializer<'de>>(d: D) -> Result<String, D::Error> {
    Ok(Scalar::deserialize(d)?.into_string())
}

fn de_secret<'de, D: Deserializer<'de>>(d: D) -> Result<Secret, D::Error> {
    Ok(Secret(Scalar::deserialize(d)?.into_string()))
}

/// An empty string is no path (so an environment variable can unset a file's value).
fn de_opt_path<'de, D: Deserializer<'de>>(d: D) -> Result<Option<PathBuf>, D::Error> {
    let s = Scalar::deserialize(d)?.into_string();
    Ok((!s.is_empty()).then(|| PathBuf::from(s)))
}

fn de_opt_secret<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Secret>, D::Error> {
    let s = Scalar::deserialize(d)?.into_string();
    Ok((!s.trim().is_empty()).then(|| Secret::new(s)))
}

/// Durations in humantime's syntax: `250ms`, `5s`, `2m`, `1h`, `1d`, also `1h 30m` or `1.5s`.
fn de_duration<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
    let s = Scalar::deserialize(d)?.into_string();
    humantime::parse_duration(&s)
        .map_err(|e| serde::de::Error::custom(format!("invalid duration `{s}`: {e}")))
}

#[derive(Deserialize)]
#[serde(untagged)]
enum StringOrList {
    List(Vec<Scalar>),
    One(Scalar),
}

fn split_list(v: StringOrList) -> Vec<String> {
    match v {
        StringOrList::List(items) => items.into_iter().map(Scalar::into_string).collect(),
        StringOrList::One(s) => s
            .into_string()
            .split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(str::to_owned)
            .collect(),
    }
}

fn de_list<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<String>, D::Error> {
    Ok(split_list(StringOrList::deserialize(d)?))
}

/// A list of secrets kept as one comma-separated secret, so no element reaches a log.
fn de_secret_list<'de, D: Deserializer<'de>>(d: D) -> Result<Secret, D::Error> {
    Ok(Secret(split_list(StringOrList::deserialize(d)?).join(",")))
}

impl AmqpSettings {
    /// Every broker address to try, in configured order: `urls` when set, else `url` (either
    /// may name several nodes separated by commas).
    pub fn addresses(&self) -> Vec<Secret> {
        let from = if self.urls.expose().trim().is_empty() {
            &self.url
        } else {
            &self.urls
        };
        from.expose()
            .split(',')
            .map(str::trim)
            .filter(|a| !a.is_empty())
            .map(Secret::new)
            .collect()
    }
}

fn de_schedule<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<Duration>, D::Error> {
    split_list(StringOrList::deserialize(d)?)
        .iter()
        .map(|e| {
            humantime::parse_duration(e).map_err(|r| {
                serde::de::Error::custom(format!("invalid retry_schedule entry `{e}`: {r}"))
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn load(pairs: &[(&str, &str)]) -> Result<Settings, SettingsError> {
        Settings::load(Sources {
            env: Some(
                pairs
                    .iter()
                    .map(|(k, v)| (k.to_string(), v.to_string()))
                    .collect(),
            ),
            skip_cwd_files: true,
            ..Sources::default()
        })
    }

    #[test]
    fn defaults_match_the_design() {
        let s = load(&[]).unwrap();
        assert_eq!(s.ingest.listen.port(), 8080);
        assert_eq!(s.status.listen.port(), 8081);
        assert_eq!(s.ui.session_idle, Duration::from_secs(30 * 60));
        assert_eq!(s.ui.session_max, Duration::from_secs(12 * 3600));
        assert_eq!(s.worker.listen.port(), 9091);
        assert_eq!(s.deliverer.listen.port(), 9092);
        assert_eq!(s.ingest.sync_timeout, Duration::from_secs(120));
        assert_eq!(s.delivery.timeout, Duration::from_secs(10));
        assert_eq!(s.delivery.retry_schedule.len(), 8);
        assert!(!s.delivery.allow_http);
        assert!(s.delivery.allow_hosts.is_empty());
        assert_eq!(s.shutdown_timeout, Duration::from_secs(25));
        assert_eq!(s.telemetry.log_format, LogFormat::Text);
        assert_eq!(s.ingest.template_cache_bytes, 64 * 1024 * 1024);
        assert_eq!(s.render.template_cache_bytes, 64 * 1024 * 1024);
        assert_eq!(s.database.ca_file, None);
        assert!(s.database.read_url.is_none());
    }

    #[test]
    fn several_brokers_come_from_urls_or_a_list_in_url() {
        let one = load(&[]).unwrap();
        assert_eq!(
            one.amqp.addresses(),
            vec![Secret::new("amqp://guest:guest@127.0.0.1:5672/%2f")]
        );
        assert_eq!(one.amqp.connect_timeout, Duration::from_secs(5));

        let listed = load(&[(
            "DISPATCHER__AMQP__URLS",
            "amqp://a:b@127.0.0.1:5701/%2f, amqp://a:b@127.0.0.1:5702/%2f,amqp://a:b@127.0.0.1:5703/%2f",
        )])
        .unwrap();
        let ports: Vec<String> = listed
            .amqp
            .addresses()
            .iter()
            .map(|a| {
                a.expose()
                    .trim_end_matches("/%2f")
                    .rsplit(':')
                    .next()
                    .unwrap()
                    .to_owned()
            })
            .collect();
        assert_eq!(ports, vec!["5701", "5702", "5703"]);
        // Credentials stay out of logs.
        assert!(!format!("{:?}", listed.amqp).contains("a:b"));

        let in_url = load(&[(
            "DISPATCHER__AMQP__URL",
            "amqp://127.0.0.1:5701/%2f,amqp://127.0.0.1:5702/%2f",
        )])
        .unwrap();
        assert_eq!(in_url.amqp.addresses().len(), 2);

        let err = load(&[(
            "DISPATCHER__AMQP__URLS",
            "amqp://127.0.0.1:5701/%2f,http://127.0.0.1:5702/",
        )])
        .unwrap_err();
        assert!(err.to_string().contains("address 2"), "{err}");
    }

    #[test]
    fn environment_overrides_every_documented_key() {
        let s = load(&[
            ("DISPATCHER__DATABASE__URL", "postgres://x@127.0.0.1/db"),
            ("DISPATCHER__AMQP__URL", "amqp://a:b@127.0.0.1:5673/%2f"),
            ("DISPATCHER__AMQP__PREFIX", "t123"),
            ("DISPATCHER__INGEST__LISTEN", "127.0.0.1:0"),
            ("DISPATCHER__STATUS__LISTEN", "127.0.0.1:0"),
            ("DISPATCHER__WORKER__LISTEN", "127.0.0.1:0"),
            ("DISPATCHER__DELIVERER__LISTEN", "127.0.0.1:0"),
            ("DISPATCHER__INGEST__SYNC_TIMEOUT", "3s"),
            ("DISPATCHER__DELIVERY__RETRY_SCHEDULE", "1s, 2s,500ms"),
            ("DISPATCHER__DELIVERY__TIMEOUT", "2s"),
            ("DISPATCHER__DELIVERY__ALLOW_HTTP", "true"),
            (
                "DISPATCHER__DELIVERY__ALLOW_HOSTS",
                "127.0.0.1,hooks.internal",
            ),
            ("DISPATCHER__TELEMETRY__LOG_FORMAT", "json"),
            ("DISPATCHER__INGEST__TEMPLATE_CACHE_BYTES", "1048576"),
            ("DISPATCHER__RENDER__TEMPLATE_CACHE_BYTES", "2097152"),
            ("DISPATCHER__DATABASE__CA_FILE", "/etc/dispatcher/db-ca.pem"),
            (
                "DISPATCHER__DATABASE__READ_URL",
                "postgres://x@127.0.0.1:5443/db",
            ),
        ])
        .unwrap();
        assert_eq!(s.database.url.expose(), "postgres://x@127.0.0.1/db");
        assert_eq!(
            s.database.read_url.as_ref().map(Secret::expose),
            Some("postgres://x@127.0.0.1:5443/db")
        );
        assert_eq!(
            s.database.ca_file.as_deref(),
            Some(std::path::Path::new("/etc/dispatcher/db-ca.pem"))
        );
        assert_eq!(s.amqp.url.expose(), "amqp://a:b@127.0.0.1:5673/%2f");
        assert_eq!(s.amqp.prefix, "t123");
        assert_eq!(s.ingest.listen.port(), 0);
        assert_eq!(s.ingest.sync_timeout, Duration::from_secs(3));
        assert_eq!(
            s.delivery.retry_schedule,
            vec![
                Duration::from_secs(1),
                Duration::from_secs(2),
                Duration::from_millis(500)
            ]
        );
        assert_eq!(s.delivery.timeout, Duration::from_secs(2));
        assert!(s.delivery.allow_http);
        assert_eq!(s.delivery.allow_hosts, vec!["127.0.0.1", "hooks.internal"]);
        assert_eq!(s.telemetry.log_format, LogFormat::Json);
        assert_eq!(s.ingest.template_cache_bytes, 1024 * 1024);
        assert_eq!(s.render.template_cache_bytes, 2 * 1024 * 1024);
    }

    #[test]
    fn provider_secrets_come_from_the_environment() {
        let s = load(&[("DISPATCHER__PROVIDERS__ACME__SECRET", "s3cret")]).unwrap();
        assert_eq!(s.providers["acme"].secret.expose(), "s3cret");
        assert!(!format!("{s:?}").contains("s3cret"));
        assert!(load(&[]).unwrap().providers.is_empty());
    }

    #[test]
    fn numeric_prefixes_stay_strings() {
        assert_eq!(
            load(&[("DISPATCHER__AMQP__PREFIX", "12345")])
                .unwrap()
                .amqp
                .prefix,
            "12345"
        );
    }

    #[test]
    fn bad_values_are_clear_errors() {
        let err = load(&[("DISPATCHER__INGEST__SYNC_TIMEOUT", "soon")]).unwrap_err();
        assert!(err.to_string().contains("soon"), "{err}");
        let err = load(&[("DISPATCHER__DELIVERY__RETRY_SCHEDULE", "5s,x")]).unwrap_err();
        assert!(err.to_string().contains("retry_schedule"), "{err}");
        let err = load(&[("DISPATCHER__AMQP__PREFIX", "a b")]).unwrap_err();
        assert!(err.to_string().contains("amqp.prefix"), "{err}");
        assert!(load(&[("DISPATCHER__INGEST__LISTEN", "nowhere")]).is_err());
    }

    #[test]
    fn durations_keep_their_forms_and_gain_humantime_s() {
        let ms = Duration::from_millis;
        let s = load(&[
            (
                "DISPATCHER__DELIVERY__RETRY_SCHEDULE",
                "250ms,5s,2m,1h,1d, 1h 30m ,1.5s",
            ),
            ("DISPATCHER__INGEST__SYNC_TIMEOUT", " 90s "),
        ])
        .unwrap();
        assert_eq!(
            s.delivery.retry_schedule,
            vec![
                ms(250),
                ms(5_000),
                ms(120_000),
                ms(3_600_000),
                ms(86_400_000),
                ms(5_400_000),
                ms(1_500)
            ]
        );
        assert_eq!(s.ingest.sync_timeout, Duration::from_secs(90));
    }

    #[test]
    fn bad_durations_say_which_key_and_why() {
        for (value, why) in [
            ("soon", "expected number"),
            ("5", "time unit needed"),
            ("5 fortnights", "unknown time unit"),
            ("99999999999999999999d", "too large"),
        ] {
            let err = load(&[("DISPATCHER__INGEST__SYNC_TIMEOUT", value)])
                .unwrap_err()
                .to_string();
            assert!(err.contains("sync_timeout"), "{err}");
            assert!(
                err.contains(&format!("invalid duration `{value}`")),
                "{err}"
            );
            assert!(err.contains(why), "{err}");
        }
        let err = load(&[("DISPATCHER__DELIVERY__RETRY_SCHEDULE", "5s,5")])
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("invalid retry_schedule entry `5`: time unit needed"),
            "{err}"
        );
    }

    #[test]
    fn storage_defaults_to_postgres() {
        let s = load(&[]).unwrap();
        assert_eq!(s.storage.url, "postgres");
        assert_eq!(s.storage.location(), Ok(StorageLocation::Postgres));
        assert!(!s.storage.allow_http);
        assert!(s.storage.secret_access_key.expose().is_empty());
    }

    #[test]
    fn storage_urls_parse_into_locations() {
        let at = |url: &str| {
            load(&[("DISPATCHER__STORAGE__URL", url)])
                .unwrap()
                .storage
                .location()
                .unwrap()
        };
        assert_eq!(
            at("file:///var/lib/dispatcher/results"),
            StorageLocation::File(PathBuf::from("/var/lib/dispatcher/results"))
        );
        assert_eq!(
            at("s3://dispatcher-results"),
            StorageLocation::S3 {
                bucket: "dispatcher-results".into(),
                prefix: String::new()
            }
        );
        assert_eq!(
            at("s3://my.bucket-1/prod/eu/"),
            StorageLocation::S3 {
                bucket: "my.bucket-1".into(),
                prefix: "prod/eu".into()
            }
        );
    }

    #[test]
    fn s3_settings_come_from_the_environment_and_the_secret_does_not_print() {
        let s = load(&[
            ("DISPATCHER__STORAGE__URL", "s3://results"),
            ("DISPATCHER__STORAGE__ENDPOINT", "http://127.0.0.1:9000"),
            ("DISPATCHER__STORAGE__REGION", "eu-west-1"),
            ("DISPATCHER__STORAGE__ACCESS_KEY_ID", "AKIDEXAMPLE"),
            (
                "DISPATCHER__STORAGE__SECRET_ACCESS_KEY",
                "wJalrXUtnFEMI-very-secret",
            ),
            ("DISPATCHER__STORAGE__ALLOW_HTTP", "true"),
        ])
        .unwrap();
        assert_eq!(s.storage.endpoint, "http://127.0.0.1:9000");
        assert_eq!(s.storage.region, "eu-west-1");
        assert_eq!(s.storage.access_key_id, "AKIDEXAMPLE");
        assert_eq!(
            s.storage.secret_access_key.expose(),
            "wJalrXUtnFEMI-very-secret"
        );
        assert!(s.storage.allow_http);
        assert!(!format!("{s:?}").contains("very-secret"));
        // A secret of digits stays a string.
        let s = load(&[("DISPATCHER__STORAGE__SECRET_ACCESS_KEY", "12345")]).unwrap();
        assert_eq!(s.storage.secret_access_key.expose(), "12345");
    }

    #[test]
    fn bad_storage_settings_stop_start_up_with_a_clear_error() {
        for (url, why) in [
            ("postgresql", "is not supported"),
            ("s3:/bucket", "is not supported"),
            ("gs://bucket", "is not supported"),
            ("file://relative/dir", "absolute local path"),
            ("file:///a%20b", "plain path"),
            ("s3://", "valid bucket"),
            ("s3://ab", "valid bucket"),
            ("s3://Upper", "valid bucket"),
            ("s3://under_score", "valid bucket"),
            ("s3://-dash", "valid bucket"),
            ("s3://bucket/a//b", "invalid prefix"),
            ("s3://bucket/../etc", "invalid prefix"),
        ] {
            let err = load(&[("DISPATCHER__STORAGE__URL", url)])
                .unwrap_err()
                .to_string();
            assert!(err.contains(&format!("storage.url `{url}`")), "{err}");
            assert!(err.contains(why), "{url}: {err}");
            assert!(err.contains("expected `postgres`"), "{err}");
        }
        let err = load(&[
            ("DISPATCHER__STORAGE__URL", "s3://bucket"),
            ("DISPATCHER__STORAGE__ENDPOINT", "http://127.0.0.1:9000"),
        ])
        .unwrap_err()
        .to_string();
        assert!(err.contains("storage.allow_http"), "{err}");
        let err = load(&[
            ("DISPATCHER__STORAGE__URL", "s3://bucket"),
            ("DISPATCHER__STORAGE__ENDPOINT", "127.0.0.1:9000"),
        ])
        .unwrap_err()
        .to_string();
        assert!(err.contains("storage.endpoint"), "{err}");
        // The S3 settings are not checked while the store is Postgres.
        assert!(load(&[("DISPATCHER__STORAGE__ENDPOINT", "http://127.0.0.1:9000")]).is_ok());
    }

    #[test]
    fn secrets_do_not_print() {
        let s = load(&[("DISPATCHER__DATABASE__URL", "postgres://u:hunter2@h/db")]).unwrap();
        assert!(!format!("{s:?}").contains("hunter2"));
    }

    #[test]
    fn config_flag_is_found() {
        let args = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        assert_eq!(
            config_file_arg(args(&["bin", "--config", "x.toml"])),
            Some(PathBuf::from("x.toml"))
        );
        assert_eq!(
            config_file_arg(args(&["bin", "--config=y.toml"])),
            Some(PathBuf::from("y.toml"))
        );
        assert_eq!(config_file_arg(args(&["bin"])), None);
    }

    #[test]
    fn extra_file_is_layered_before_the_environment() {
        let dir = std::env::temp_dir().join(format!("dispatcher-cfg-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("extra.toml");
        std::fs::write(&file, "[amqp]\nprefix = \"fromfile\"\nprefetch = 7\n").unwrap();
        let s = Settings::load(Sources {
            file: Some(file.clone()),
            env: Some(HashMap::from([(
                "DISPATCHER__AMQP__PREFIX".to_owned(),
                "fromenv".to_owned(),
            )])),
            skip_cwd_files: true,
        })
        .unwrap();
        assert_eq!(s.amqp.prefix, "fromenv");
        assert_eq!(s.amqp.prefetch, 7);
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn smtp_is_off_by_default_and_checked_when_set() {
        let s = load(&[]).unwrap();
        assert!(!s.smtp.enabled());
        assert_eq!(s.smtp.starttls, StartTls::Opportunistic);
        assert_eq!(s.smtp.retry_schedule.len(), 5);

        let s = load(&[
            (
                "DISPATCHER__SMTP__URL",
                "smtps://user:pw@mail.example.com:465",
            ),
            ("DISPATCHER__SMTP__FROM", "Billing <billing@example.com>"),
            ("DISPATCHER__SMTP__STARTTLS", "required"),
        ])
        .unwrap();
        assert!(s.smtp.enabled());
        assert_eq!(s.smtp.starttls, StartTls::Required);
        assert!(
            !format!("{:?}", s.smtp).contains("pw@"),
            "the URL is a secret"
        );

        let e = load(&[("DISPATCHER__SMTP__URL", "http://mail.example.com")]).unwrap_err();
        assert!(e.to_string().contains("smtp.url"), "{e}");
        let e = load(&[("DISPATCHER__SMTP__URL", "smtp://127.0.0.1:2525")]).unwrap_err();
        assert!(e.to_string().contains("smtp.from"), "{e}");
    }
}
