//! Test harness: the real services (the same `serve` functions the binaries call) on port 0,
//! against the local Postgres (a fresh database per test) and RabbitMQ (a unique prefix per test),
//! plus a local webhook receiver that records what it gets. Everything is removed on drop.

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::routing::post;
use axum::Router;
use dispatcher_config::{Settings, Sources};
use dispatcher_db::accounts::CreatedAccount;
use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

pub mod ui;

pub const PG_ADMIN: &str = "postgres://postgres@127.0.0.1:5432/postgres";
pub const AMQP_URL: &str = "amqp://guest:guest@127.0.0.1:5672/%2f";

/// Upper bound for anything a test waits for: a liveness bound, not a performance assertion.
pub const PATIENCE: Duration = Duration::from_secs(60);

/// One request the receiver got.
#[derive(Debug, Clone)]
pub struct Received {
    pub headers: HashMap<String, String>,
    pub body: Bytes,
    /// When it arrived.
    pub at: std::time::Instant,
}

impl Received {
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).expect("webhook body is JSON")
    }
    pub fn header(&self, name: &str) -> &str {
        self.headers.get(name).map(String::as_str).unwrap_or("")
    }
}

/// A local webhook endpoint. It answers `fail_status` to the first `fail_first` requests, then 200.
#[derive(Clone)]
pub struct Receiver {
    pub addr: SocketAddr,
    pub received: Arc<Mutex<Vec<Received>>>,
    fail_first: Arc<AtomicUsize>,
    hits: Arc<AtomicUsize>,
    fail_status: Arc<std::sync::atomic::AtomicU16>,
    _stop: Arc<CancelOnDrop>,
}

struct CancelOnDrop(CancellationToken);
impl Drop for CancelOnDrop {
    fn drop(&mut self) {
        self.0.cancel();
    }
}

#[derive(Clone)]
struct ReceiverState {
    received: Arc<Mutex<Vec<Received>>>,
    fail_first: Arc<AtomicUsize>,
    hits: Arc<AtomicUsize>,
    fail_status: Arc<std::sync::atomic::AtomicU16>,
}

async fn receive(State(s): State<ReceiverState>, headers: HeaderMap, body: Bytes) -> StatusCode {
    let n = s.hits.fetch_add(1, Ordering::SeqCst);
    let headers = headers
        .iter()
        .map(|(k, v)| (k.as_str().to_owned(), v.to_str().unwrap_or("").to_owned()))
        .collect();
    s.received.lock().unwrap().push(Received {
        headers,
        body,
        at: std::time::Instant::now(),
    });
    if n < s.fail_first.load(Ordering::SeqCst) {
        StatusCode::from_u16(s.fail_status.load(Ordering::SeqCst)).unwrap()
    } else {
        StatusCode::OK
    }
}

impl Receiver {
    pub async fn start() -> Self {
        Self::failing_first(0).await
    }

    pub async fn failing_first(k: usize) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let received = Arc::new(Mutex::new(Vec::new()));
        let fail_first = Arc::new(AtomicUsize::new(k));
        let hits = Arc::new(AtomicUsize::new(0));
        let fail_status = Arc::new(std::sync::atomic::AtomicU16::new(500));
        let state = ReceiverState {
            received: received.clone(),
            fail_first: fail_first.clone(),
            hits: hits.clone(),
            fail_status: fail_status.clone(),
        };
        let app = Router::new()
            .route("/hook", post(receive))
            .route("/provider", post(receive))
            .with_state(state);
        let stop = CancellationToken::new();
        let s = stop.clone();
        tokio::spawn(async move {
            axum::serve(listener, app)
                .with_graceful_shutdown(async move { s.cancelled().await })
                .await
                .unwrap();
        });
        Self {
            addr,
            received,
            fail_first,
            hits,
            fail_status,
            _stop: Arc::new(CancelOnDrop(stop)),
        }
    }

    /// Makes the next `k` requests fail (a receiver that goes down and recovers).
    pub fn fail_next(&self, k: usize) {
        self.fail_first
            .store(self.hits.load(Ordering::SeqCst) + k, Ordering::SeqCst);
    }

    /// The status failing requests get (500 unless set).
    pub fn set_fail_status(&self, code: u16) {
        self.fail_status.store(code, Ordering::SeqCst);
    }

    pub fn url(&self) -> String {
        format!("http://{}/hook", self.addr)
    }

    pub fn requests(&self) -> Vec<Received> {
        self.received.lock().unwrap().clone()
    }

    /// Waits until at least `n` requests arrived.
    pub async fn wait_for(&self, n: usize) -> Vec<Received> {
        wait_until(PATIENCE, Duration::from_millis(20), || async move {
            let got = self.requests();
            match got.len() >= n {
                true => Ok(got),
                false => Err(format!("receiver got {} of {n} requests", got.len())),
            }
        })
        .await
    }

    /// The distinct dispatch ids this receiver's webhooks were about, and how many requests
    /// repeated a `webhook-id` already received.
    pub fn tally(&self) -> (HashSet<String>, usize) {
        let mut per_id: HashMap<String, usize> = HashMap::new();
        let mut dispatches = HashSet::new();
        for r in &self.requests() {
            *per_id.entry(r.header("webhook-id").to_owned()).or_default() += 1;
            dispatches.insert(r.json()["data"]["dispatchId"].as_str().unwrap().to_owned());
        }
        (dispatches, per_id.values().map(|n| n - 1).sum())
    }

    /// Waits (up to three times [`PATIENCE`]) until a webhook about each of `ids` arrived;
    /// returns the repeats so far (see [`Self::tally`]).
    pub async fn wait_all_delivered(&self, ids: &[String]) -> usize {
        let want: HashSet<String> = ids.iter().cloned().collect();
        let want = &want;
        wait_until(PATIENCE * 3, Duration::from_millis(100), || async move {
            let (seen, dups) = self.tally();
            match want.is_subset(&seen) {
                true => Ok(dups),
                false => Err(format!(
                    "receiver saw {} of {} dispatches",
                    want.intersection(&seen).count(),
                    want.len()
                )),
            }
        })
        .await
    }
}

/// The Postgres a test's database is created on: `admin` to create and drop it, `url` (with
/// `{db}` for the database's name) for the services and the test's own direct queries.
#[derive(Clone, Debug)]
pub struct PgServer {
    pub admin: String,
    pub url: String,
}

impl PgServer {
    /// The local server on 5432.
    pub fn local() -> Self {
        Self {
            admin: PG_ADMIN.into(),
            url: "postgres://postgres@127.0.0.1:5432/{db}".into(),
        }
    }

    pub fn url_of(&self, db: &str) -> String {
        self.url.replace("{db}", db)
    }
}

/// Which services a test runs.
#[derive(Clone, Copy)]
pub struct Services {
    pub ingest: bool,
    pub worker: bool,
    pub deliverer: bool,
    pub status: bool,
}

impl Services {
    pub const ALL: Services = Services {
        ingest: true,
        worker: true,
        deliverer: true,
        status: true,
    };
}

/// One isolated Dispatcher: its own database and AMQP prefix.
pub struct TestApp {
    pub db_name: String,
    /// Where `db_name` lives.
    pub pg: PgServer,
    pub prefix: String,
    pub env: HashMap<String, String>,
    pub settings: Settings,
    pub ingest_url: String,
    pub status_url: String,
    pub http: reqwest::Client,
    pub pool: dispatcher_db::Pool,
    cancel: CancellationToken,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

pub fn settings_from(env: &HashMap<String, String>) -> Settings {
    Settings::load(Sources {
        env: Some(env.clone()),
        skip_cwd_files: true,
        ..Sources::default()
    })
    .expect("test settings are valid")
}

impl TestApp {
    pub async fn spawn() -> Self {
        Self::spawn_with(Services::ALL, &[]).await
    }

    /// Starts the chosen services; `overrides` are extra `DISPATCHER__*` variables.
    pub async fn spawn_with(services: Services, overrides: &[(&str, &str)]) -> Self {
        Self::spawn_on(PgServer::local(), services, overrides).await
    }

    /// As [`Self::spawn_with`], with the test's database on `pg`.
    pub async fn spawn_on(pg: PgServer, services: Services, overrides: &[(&str, &str)]) -> Self {
        let id = Uuid::new_v4().simple().to_string();
        let db_name = format!("dispatcher_test_{id}");
        let prefix = format!("t{}", &id[..16]);
        let (admin, conn) = tokio_postgres::connect(&pg.admin, tokio_postgres::NoTls)
            .await
            .unwrap_or_else(|e| panic!("Postgres at {}: {e}", pg.admin));
        tokio::spawn(conn);
        admin
            .batch_execute(&format!("CREATE DATABASE {db_name}"))
            .await
            .unwrap();

        let status_listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let status_addr = status_listener.local_addr().unwrap();
        let mut env: HashMap<String, String> = [
            ("DISPATCHER__DATABASE__URL", pg.url_of(&db_name)),
            ("DISPATCHER__DATABASE__POOL_SIZE", "8".into()),
            ("DISPATCHER__AMQP__URL", AMQP_URL.into()),
            ("DISPATCHER__AMQP__PREFIX", prefix.clone()),
            (
                "DISPATCHER__STATUS__PUBLIC_URL",
                format!("http://{status_addr}"),
            ),
            ("DISPATCHER__INGEST__SYNC_TIMEOUT", "20s".into()),
            ("DISPATCHER__DELIVERY__RETRY_SCHEDULE", "200ms,400ms".into()),
            ("DISPATCHER__DELIVERY__TIMEOUT", "5s".into()),
            ("DISPATCHER__DELIVERY__ALLOW_HTTP", "true".into()),
            ("DISPATCHER__DELIVERY__ALLOW_HOSTS", "127.0.0.1".into()),
            ("DISPATCHER__OUTBOX__POLL_INTERVAL", "200ms".into()),
            ("DISPATCHER__SHUTDOWN_TIMEOUT", "5s".into()),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v))
        .collect();
        // `{db}` in an override stands for this test's database name.
        for (k, v) in overrides {
            env.insert((*k).to_owned(), v.replace("{db}", &db_name));
        }
        let settings = settings_from(&env);
        let pool = dispatcher_db::connect_pool(&settings.database).unwrap();
        dispatcher_db::migrate::run(&pool).await.unwrap();

        let cancel = CancellationToken::new();
        let mut app = TestApp {
            db_name,
            pg,
            prefix,
            env,
            settings: settings.clone(),
            ingest_url: String::new(),
            status_url: format!("http://{status_addr}"),
            http: reqwest::Client::new(),
            pool,
            cancel,
            tasks: Vec::new(),
        };
        if services.status {
            let c = app.cancel.child_token();
            let s = settings.clone();
            app.tasks.push(tokio::spawn(async move {
                status_api::serve(s, status_listener, c).await.unwrap();
            }));
        }
        if services.ingest {
            app.ingest_url = app.start_ingest(&[]).await.0;
        }
        if services.worker {
            app.start_worker(app.cancel.child_token());
        }
        if services.deliverer {
            app.start_deliverer(app.cancel.child_token());
        }
        app
    }

    /// Starts an(other) ingest with extra overrides; returns its URL and its stop token.
    pub async fn start_ingest(
        &mut self,
        overrides: &[(&str, &str)],
    ) -> (String, CancellationToken) {
        let mut env = self.env.clone();
        for (k, v) in overrides {
            env.insert((*k).to_owned(), (*v).to_owned());
        }
        let s = settings_from(&env);
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let c = self.cancel.child_token();
        let stop = c.clone();
        self.tasks.push(tokio::spawn(async move {
            ingest_api::serve(s, listener, c).await.unwrap();
        }));
        (url, stop)
    }

    /// A token that stops with the app (and can be cancelled alone to stop one service).
    pub fn child_token(&self) -> CancellationToken {
        self.cancel.child_token()
    }

    pub fn start_worker(&mut self, cancel: CancellationToken) {
        let s = self.settings.clone();
        self.tasks.push(tokio::spawn(async move {
            let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
            dispatch_worker::serve(s, l, cancel).await.unwrap();
        }));
    }

    pub fn start_deliverer(&mut self, cancel: CancellationToken) {
        let s = self.settings.clone();
        self.tasks.push(tokio::spawn(async move {
            let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
            webhook_deliverer::serve(s, l, cancel).await.unwrap();
        }));
    }

    pub async fn create_account(&self, email: &str) -> CreatedAccount {
        dispatcher_db::accounts::create(&self.pool, email, None)
            .await
            .unwrap()
    }

    pub async fn post(
        &self,
        base: &str,
        path: &str,
        who: &CreatedAccount,
        body: &serde_json::Value,
    ) -> reqwest::Response {
        self.http
            .post(format!("{base}{path}"))
            .basic_auth(&who.email, Some(&who.password))
            .json(body)
            .send()
            .await
            .unwrap()
    }

    pub async fn get(&self, base: &str, path: &str, who: &CreatedAccount) -> reqwest::Response {
        self.http
            .get(format!("{base}{path}"))
            .basic_auth(&who.email, Some(&who.password))
            .send()
            .await
            .unwrap()
    }

    /// Polls `GET /v1/dispatches/{id}` until the status is final.
    pub async fn wait_finished(&self, who: &CreatedAccount, id: &str) -> serde_json::Value {
        self.wait_dispatch(who, id, "a final status", |b| {
            matches!(b["status"].as_str(), Some("completed" | "failed"))
        })
        .await
    }

    /// Polls `GET /v1/dispatches/{id}` until `providerStatus` is `status`.
    pub async fn wait_provider_status(
        &self,
        who: &CreatedAccount,
        id: &str,
        status: &str,
    ) -> serde_json::Value {
        self.wait_dispatch(who, id, &format!("provider status {status}"), |b| {
            b["providerStatus"] == status
        })
        .await
    }

    /// Polls `GET /v1/dispatches/{id}` until its body satisfies `done` (`what` names the wait).
    pub async fn wait_dispatch(
        &self,
        who: &CreatedAccount,
        id: &str,
        what: &str,
        done: impl Fn(&serde_json::Value) -> bool,
    ) -> serde_json::Value {
        let deadline = tokio::time::Instant::now() + PATIENCE;
        loop {
            let body: serde_json::Value = self
                .get(&self.status_url, &format!("/v1/dispatches/{id}"), who)
                .await
                .json()
                .await
                .unwrap();
            if done(&body) {
                return body;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "dispatch {id} never reached {what}: {body}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Stops every service and waits for them to drain.
    pub async fn shutdown(&mut self) {
        self.cancel.cancel();
        for t in self.tasks.drain(..) {
            let _ = tokio::time::timeout(Duration::from_secs(15), t).await;
        }
    }
}

impl Drop for TestApp {
    fn drop(&mut self) {
        self.cancel.cancel();
        let db = self.db_name.clone();
        let pg_admin = self.pg.admin.clone();
        let topology = dispatcher_mq::Topology::from_settings(&self.settings);
        let amqp = self.settings.amqp.clone();
        let prefix = self.prefix.clone();
        // Drop runs inside the test's runtime; clean up from a thread with its own.
        let _ = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async move {
                let removed = async {
                    // A test may reach the broker through a proxy of its own (faults.rs), whose
                    // task ran on the test's runtime, which this drop now blocks: such an
                    // address no longer answers, and the queues are on the local broker.
                    let conn = match dispatcher_mq::connect_any(&amqp, "test-cleanup").await {
                        Ok(conn) => conn,
                        Err(_) => dispatcher_mq::connect(AMQP_URL, "test-cleanup").await?,
                    };
                    // The services may have declarations in flight (a short test can end
                    // while they still connect). Deleting a quorum queue whose dead-letter
                    // worker is still starting breaks dead-lettering in RabbitMQ 3.10 for
                    // every later queue, so let every queue exist and settle first.
                    let _ = topology.declare(&conn.create_channel().await?).await;
                    tokio::time::sleep(Duration::from_millis(500)).await;
                    // A fresh channel: a refused declare closes the channel it was sent on.
                    let deleted = topology.delete(&conn.create_channel().await?).await;
                    let _ = conn.close(200, "bye".into()).await;
                    deleted
                };
                // Left-over queues hold the broker's descriptors: say so rather than pass
                // silently (CI's set-up removes idle ones a run left behind).
                match tokio::time::timeout(Duration::from_secs(30), removed).await {
                    Ok(Ok(())) => {}
                    Ok(Err(e)) => eprintln!("test cleanup: queues of {prefix} not removed: {e}"),
                    Err(_) => eprintln!("test cleanup: queues of {prefix} not removed in 30 s"),
                }
                if let Ok((admin, conn)) =
                    tokio_postgres::connect(&pg_admin, tokio_postgres::NoTls).await
                {
                    tokio::spawn(conn);
                    let _ = admin
                        .batch_execute(&format!("DROP DATABASE IF EXISTS {db} WITH (FORCE)"))
                        .await;
                }
            });
        })
        .join();
    }
}

/// Standard Webhooks verification as a receiver would do it: returns the parsed body if valid.
pub fn verify_webhook(secret: &str, r: &Received) -> bool {
    let Ok(key) = dispatcher_core::signing::WebhookSecret::parse(secret) else {
        return false;
    };
    let Ok(ts) = r.header("webhook-timestamp").parse::<i64>() else {
        return false;
    };
    key.verify(
        r.header("webhook-id"),
        ts,
        &r.body,
        r.header("webhook-signature"),
    )
}

/// Test-only copy of credentials (the production type deliberately has no Clone).
pub trait CloneForTest {
    fn clone_for_test(&self) -> CreatedAccount;
}

impl CloneForTest for CreatedAccount {
    fn clone_for_test(&self) -> CreatedAccount {
        CreatedAccount {
            account_id: self.account_id,
            email: self.email.clone(),
            password: self.password.clone(),
            webhook_secret: self.webhook_secret.clone(),
        }
    }
}

/// A TCP proxy the test controls: `cut()` drops every connection and refuses new ones (the
/// upstream looks dead to the services), `restore()` lets traffic through again. Used to take
/// RabbitMQ or Postgres away from the services without touching the shared servers.
pub struct Proxy {
    pub addr: SocketAddr,
    state: Arc<tokio::sync::watch::Sender<(bool, u64)>>,
    _stop: CancelOnDrop,
}

impl Proxy {
    pub async fn start(upstream: SocketAddr) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        // (up, generation): a cut bumps the generation, which closes the connections of the old one.
        let (tx, _) = tokio::sync::watch::channel((true, 0u64));
        let state = Arc::new(tx);
        let stop = CancellationToken::new();
        let (st, s) = (state.clone(), stop.clone());
        tokio::spawn(async move {
            loop {
                let accepted = tokio::select! {
                    _ = s.cancelled() => return,
                    a = listener.accept() => a,
                };
                let Ok((mut inbound, _)) = accepted else {
                    continue;
                };
                let (up, generation) = *st.borrow();
                if !up {
                    drop(inbound);
                    continue;
                }
                let mut rx = st.subscribe();
                let s = s.clone();
                tokio::spawn(async move {
                    let Ok(mut outbound) = tokio::net::TcpStream::connect(upstream).await else {
                        return;
                    };
                    tokio::select! {
                        _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound) => {}
                        _ = rx.wait_for(|(_, g)| *g != generation) => {}
                        _ = s.cancelled() => {}
                    }
                });
            }
        });
        Self {
            addr,
            state,
            _stop: CancelOnDrop(stop),
        }
    }

    pub fn cut(&self) {
        self.state.send_modify(|(up, g)| {
            *up = false;
            *g += 1;
        });
    }

    pub fn restore(&self) {
        self.state.send_modify(|(up, _)| *up = true);
    }
}

/// Ready messages and consumers of a queue on the local broker (a passive declare: the queue
/// must exist).
pub async fn queue_state(queue: &str) -> (u32, u32) {
    let conn = dispatcher_mq::connect(AMQP_URL, "test-queue-probe")
        .await
        .unwrap();
    let ch = conn.create_channel().await.unwrap();
    let state = dispatcher_mq::Topology::depth_and_consumers(&ch, queue)
        .await
        .unwrap();
    let _ = conn.close(200, "done".into()).await;
    state
}

/// Waits, within [`PATIENCE`], until a queue holds `want` (ready messages, consumers). A quorum
/// queue's counts are read from its leader's applied state, which can trail a publisher confirm
/// by a moment, so a count read once right after publishing may still be one short.
pub async fn wait_queue_state(queue: &str, want: (u32, u32)) {
    wait_until(PATIENCE, Duration::from_millis(20), || async move {
        let got = queue_state(queue).await;
        ok_if(got == want, || {
            format!("queue {queue}: {got:?}, waited for {want:?}")
        })
    })
    .await
}

/// Runs `check` every `every` until it gives `Ok`, and fails with its last `Err` once
/// `patience` has passed: every wait in the tests has a limit.
pub async fn wait_until<T, Fut>(
    patience: Duration,
    every: Duration,
    mut check: impl FnMut() -> Fut,
) -> T
where
    Fut: std::future::Future<Output = Result<T, String>>,
{
    let deadline = tokio::time::Instant::now() + patience;
    loop {
        match check().await {
            Ok(done) => return done,
            Err(why) => assert!(
                tokio::time::Instant::now() < deadline,
                "gave up after {patience:?}: {why}"
            ),
        }
        tokio::time::sleep(every).await;
    }
}

/// `Ok(())` when `done`, else `Err` with what `why` says.
pub fn ok_if(done: bool, why: impl FnOnce() -> String) -> Result<(), String> {
    if done {
        Ok(())
    } else {
        Err(why())
    }
}

/// Path of a workspace binary next to the test executable (`make test` builds them first).
pub fn bin_path(name: &str) -> std::path::PathBuf {
    let exe = std::env::current_exe().unwrap();
    // target/<profile>/deps/e2e-<hash> -> target/<profile>/<name>
    let dir = exe.parent().and_then(|d| d.parent()).expect("target dir");
    let p = dir.join(name);
    assert!(
        p.exists(),
        "{} is missing: run `cargo build --workspace --bins` (make test does)",
        p.display()
    );
    p
}

/// A service running as its own process, killed (SIGKILL) on drop.
pub struct ServiceProcess {
    pub child: tokio::process::Child,
}

impl ServiceProcess {
    pub fn spawn(bin: &str, env: &HashMap<String, String>, log: &str) -> Self {
        let log = std::fs::File::create(std::env::temp_dir().join(log)).unwrap();
        let child = tokio::process::Command::new(bin_path(bin))
            .env_clear()
            .envs(env)
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .env("RUST_LOG", "warn")
            .stdout(std::process::Stdio::null())
            .stderr(log)
            .kill_on_drop(true)
            .spawn()
            .unwrap();
        Self { child }
    }

    /// `kill -9`: no shutdown, no drain, in-flight work is simply gone.
    pub async fn kill9(mut self) {
        self.child.kill().await.unwrap();
    }
}

impl TestApp {
    /// Environment for a child process of this app (same database and prefix, health on port 0).
    pub fn process_env(&self) -> HashMap<String, String> {
        let mut env = self.env.clone();
        env.insert("DISPATCHER__WORKER__LISTEN".into(), "127.0.0.1:0".into());
        env.insert("DISPATCHER__DELIVERER__LISTEN".into(), "127.0.0.1:0".into());
        env
    }

    /// Runs `dispatchctl` with this app's settings and returns its stdout.
    pub async fn dispatchctl(&self, args: &[&str]) -> String {
        let out = tokio::process::Command::new(bin_path("dispatchctl"))
            .args(args)
            .env_clear()
            .envs(&self.env)
            .output()
            .await
            .unwrap();
        assert!(
            out.status.success(),
            "dispatchctl {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    }

    /// Submits `n` async dispatches (at most `parallel` in flight) and returns their ids.
    pub async fn submit_many(
        &self,
        who: &CreatedAccount,
        n: usize,
        parallel: usize,
        callback: &str,
    ) -> Vec<String> {
        use futures::StreamExt;
        futures::stream::iter(0..n)
            .map(|i| async move {
                let resp = self
                    .post(
                        &self.ingest_url,
                        "/v1/dispatches?async=true",
                        who,
                        &serde_json::json!({
                            "template": {"format": "text", "body": "n={{ i }}"},
                            "data": {"i": i},
                            "callbackUrl": callback,
                        }),
                    )
                    .await;
                assert_eq!(resp.status(), 202);
                let v: serde_json::Value = resp.json().await.unwrap();
                v["dispatchId"].as_str().unwrap().to_owned()
            })
            .buffer_unordered(parallel)
            .collect()
            .await
    }

    /// `GET /v1/webhooks/{id}` (the subscription with its endpoint health), as `who`.
    pub async fn webhook(&self, who: &CreatedAccount, id: &str) -> serde_json::Value {
        let resp = self
            .get(&self.ingest_url, &format!("/v1/webhooks/{id}"), who)
            .await;
        assert_eq!(resp.status(), 200);
        resp.json().await.unwrap()
    }

    /// A counter or gauge from the ingest's `/metrics` (0 until it is first recorded).
    pub async fn ingest_metric(&self, name: &str) -> f64 {
        let text = self
            .http
            .get(format!("{}/metrics", self.ingest_url))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        text.lines()
            .find_map(|l| l.strip_prefix(name)?.strip_prefix(' '))
            .map_or(0.0, |v| v.trim().parse::<f64>().unwrap())
    }

    /// A direct query on the test database (not through any proxy).
    pub async fn count(&self, sql: &str) -> i64 {
        self.query_one(sql).await.get(0)
    }

    /// One row of a direct query on the test database.
    async fn query_one(&self, sql: &str) -> tokio_postgres::Row {
        let (client, conn) =
            tokio_postgres::connect(&self.pg.url_of(&self.db_name), tokio_postgres::NoTls)
                .await
                .unwrap();
        tokio::spawn(conn);
        client.query_one(sql, &[]).await.unwrap()
    }

    /// A direct query on the test database returning one text value.
    pub async fn text(&self, sql: &str) -> String {
        self.query_one(sql).await.get(0)
    }

    /// Waits until `sql` (a count) is exactly `n` (for counts that may also fall, or where a
    /// count past `n` would be a bug the caller asserts afterwards).
    pub async fn wait_equal(&self, sql: &str, n: i64) {
        wait_until(PATIENCE * 3, Duration::from_millis(100), || async move {
            let got = self.count(sql).await;
            ok_if(got == n, || format!("{sql}: {got}, want {n}"))
        })
        .await
    }

    /// Waits until `sql` (a count) reaches `n`.
    pub async fn wait_count(&self, sql: &str, n: i64) {
        wait_until(PATIENCE * 3, Duration::from_millis(100), || async move {
            let got = self.count(sql).await;
            ok_if(got >= n, || format!("{sql}: {got} of {n}"))
        })
        .await
    }
}

/// A RabbitMQ node of the test's own (own port, data directory and node name), so a test can
/// restart a broker without disturbing the shared one. Stopped and removed on drop.
pub struct OwnBroker {
    pub port: u16,
    node: String,
    dir: std::path::PathBuf,
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

impl OwnBroker {
    pub async fn start() -> Self {
        let id = &Uuid::new_v4().simple().to_string()[..12];
        let dir = std::env::temp_dir().join(format!("dispatcher-rmq-{id}"));
        let (port, dist) = (free_port(), free_port());
        std::fs::create_dir_all(dir.join("mnesia")).unwrap();
        std::fs::create_dir_all(dir.join("log")).unwrap();
        std::fs::write(dir.join("enabled_plugins"), "[].").unwrap();
        std::fs::write(dir.join("rabbitmq-env.conf"), "").unwrap();
        std::fs::write(
            dir.join("rabbitmq.conf"),
            format!("listeners.tcp.default = 127.0.0.1:{port}\nloopback_users = none\n"),
        )
        .unwrap();
        // The server drops to the `rabbitmq` user when started as root: it must own the dir.
        let _ = std::process::Command::new("chown")
            .args(["-R", "rabbitmq:rabbitmq"])
            .arg(&dir)
            .status();
        let broker = Self {
            port,
            node: format!("dtest{id}@localhost"),
            dir,
        };
        broker.boot(dist).await;
        broker
    }

    fn env(&self, cmd: &str) -> std::process::Command {
        let d = &self.dir;
        let mut c = std::process::Command::new(cmd);
        c.env("RABBITMQ_CONF_ENV_FILE", d.join("rabbitmq-env.conf"))
            .env("RABBITMQ_NODENAME", &self.node)
            .env("RABBITMQ_MNESIA_BASE", d.join("mnesia"))
            .env("RABBITMQ_LOG_BASE", d.join("log"))
            .env("RABBITMQ_ENABLED_PLUGINS_FILE", d.join("enabled_plugins"))
            .env("RABBITMQ_CONFIG_FILE", d.join("rabbitmq.conf"))
            .env("RABBITMQ_FEATURE_FLAGS_FILE", d.join("feature_flags"))
            .env("RABBITMQ_PID_FILE", d.join("pid"))
            .env("ERL_EPMD_ADDRESS", "127.0.0.1")
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null());
        c
    }

    async fn boot(&self, dist: u16) {
        let mut c = self.env("rabbitmq-server");
        c.env("RABBITMQ_NODE_PORT", self.port.to_string())
            .env("RABBITMQ_DIST_PORT", dist.to_string())
            .arg("-detached");
        assert!(c.status().expect("rabbitmq-server is installed").success());
        let deadline = tokio::time::Instant::now() + PATIENCE;
        while dispatcher_mq::connect(&self.url(), "probe").await.is_err() {
            assert!(
                tokio::time::Instant::now() < deadline,
                "own RabbitMQ node did not start"
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    pub fn url(&self) -> String {
        format!("amqp://guest:guest@127.0.0.1:{}/%2f", self.port)
    }

    fn stop(&self) {
        let _ = self
            .env("rabbitmqctl")
            .args(["-n", &self.node, "stop"])
            .status();
    }

    /// Stops the node (every connection drops) and boots it again on the same data.
    pub async fn restart(&self) {
        self.stop();
        self.boot(free_port()).await;
    }
}

impl Drop for OwnBroker {
    fn drop(&mut self) {
        self.stop();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// The repository root (the tests' package is `tests/`).
pub fn workspace_root() -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ has a parent")
        .to_path_buf()
}

/// The Python of the tests' virtualenv (`DISPATCHER_TEST_PYTHON`, which `make test` sets after
/// `make venv` built `build/venv`). Panics when it is unset or missing: tests that need it fail
/// rather than skip.
pub fn test_python() -> std::path::PathBuf {
    let Some(p) = std::env::var_os("DISPATCHER_TEST_PYTHON").filter(|p| !p.is_empty()) else {
        panic!("DISPATCHER_TEST_PYTHON is not set: run make test (it creates the test virtualenv)");
    };
    let p = std::path::PathBuf::from(p);
    assert!(
        p.exists(),
        "DISPATCHER_TEST_PYTHON={} does not exist: run make test (it creates the test virtualenv)",
        p.display()
    );
    p
}

/// Runs the test virtualenv's Python with `args` (a script under `tests/python/` is
/// `&python_script("name.py")`), `stdin` on its standard input. The exit status is not checked.
pub async fn run_python(args: &[&str], stdin: &[u8]) -> std::process::Output {
    use tokio::io::AsyncWriteExt;
    let mut child = tokio::process::Command::new(test_python())
        .args(args)
        .current_dir(workspace_root())
        .env("PYTHONDONTWRITEBYTECODE", "1")
        .env("PYTHONUTF8", "1")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("the test virtualenv's python runs");
    let mut input = child.stdin.take().expect("piped stdin");
    let stdin = stdin.to_vec();
    // Written from a task so a script that prints before reading everything cannot deadlock.
    let writer = tokio::spawn(async move {
        let _ = input.write_all(&stdin).await;
    });
    let out = tokio::time::timeout(PATIENCE * 2, child.wait_with_output())
        .await
        .unwrap_or_else(|_| panic!("python {args:?} did not finish"))
        .expect("python's output");
    let _ = writer.await;
    out
}

/// A server script of `tests/python/` that prints its port on its first line and then one line
/// per event: the running process, its port, and a task that collects the lines after the first.
pub struct PythonServer {
    pub port: u16,
    pub lines: Arc<Mutex<Vec<String>>>,
    _child: tokio::process::Child,
}

impl PythonServer {
    pub async fn start(script: &str, args: &[&str]) -> Self {
        use tokio::io::{AsyncBufReadExt, BufReader};
        let mut child = tokio::process::Command::new(test_python())
            .arg(python_script(script))
            .args(args)
            .env("PYTHONUNBUFFERED", "1")
            .stdout(std::process::Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .expect("the test virtualenv's python runs");
        let mut out = BufReader::new(child.stdout.take().expect("piped stdout")).lines();
        let port = tokio::time::timeout(Duration::from_secs(20), out.next_line())
            .await
            .unwrap_or_else(|_| panic!("{script} did not print its port"))
            .unwrap()
            .unwrap_or_else(|| panic!("{script} exited before it printed its port"));
        let lines = Arc::new(Mutex::new(Vec::new()));
        let sink = lines.clone();
        tokio::spawn(async move {
            while let Ok(Some(line)) = out.next_line().await {
                sink.lock().unwrap().push(line);
            }
        });
        Self {
            port: port.trim().parse().expect("a port number"),
            lines,
            _child: child,
        }
    }

    pub fn lines(&self) -> Vec<String> {
        self.lines.lock().unwrap().clone()
    }
}

/// Path of a helper script in `tests/python/`.
pub fn python_script(name: &str) -> String {
    workspace_root()
        .join("tests/python")
        .join(name)
        .to_string_lossy()
        .into_owned()
}

impl TestApp {
    /// Waits until the service at `base` answers `/readyz` with 200.
    pub async fn wait_ready(&self, base: &str) {
        let deadline = tokio::time::Instant::now() + PATIENCE;
        loop {
            let ready = self
                .http
                .get(format!("{base}/readyz"))
                .send()
                .await
                .is_ok_and(|r| r.status() == 200);
            if ready {
                return;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "{base} never became ready"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

/// Validates JSON documents against the schemas in `proto-schemas/` with the test venv's
/// `validate_messages.py`. Each item is `{"schema": <file name>, "label": ..., "body": <JSON
/// text>}`. Fails with the violations; returns the report (`validated`: documents per schema).
pub async fn validate_against_schemas(items: Vec<serde_json::Value>) -> serde_json::Value {
    let input = serde_json::json!({
        "schemaDir": workspace_root().join("proto-schemas").to_string_lossy(),
        "items": items,
    });
    let out = run_python(
        &[&python_script("validate_messages.py")],
        input.to_string().as_bytes(),
    )
    .await;
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "schema violations ({}):\n{stdout}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_str(stdout.trim()).expect("validate_messages.py report")
}

/// Validates webhook bodies against `proto-schemas/webhook.schema.json`; fails with the
/// violations.
pub async fn assert_webhooks_match_schema(hooks: &[Received]) {
    let items: Vec<serde_json::Value> = hooks
        .iter()
        .enumerate()
        .map(|(i, h)| {
            serde_json::json!({
                "schema": "webhook.schema.json",
                "label": format!("webhook {i}"),
                "body": String::from_utf8(h.body.to_vec()).unwrap(),
            })
        })
        .collect();
    validate_against_schemas(items).await;
}

/// An S3-compatible server on loopback (moto's server mode, from the test virtualenv) with one
/// empty bucket (or none yet: [`S3Server::without_bucket`]). Killed on drop. Objects are read back with boto3 (`tests/python/s3_object.py`),
/// not with Dispatcher's own client.
pub struct S3Server {
    pub port: u16,
    pub bucket: String,
    _child: tokio::process::Child,
}

impl S3Server {
    pub async fn start() -> Self {
        let server = Self::without_bucket().await;
        server.create_bucket().await;
        server
    }

    /// The server, and the name of a bucket that does not exist until [`Self::create_bucket`].
    pub async fn without_bucket() -> Self {
        let port = free_port();
        let log = std::fs::File::create(Self::log_path(port)).unwrap();
        let mut child = tokio::process::Command::new(test_python())
            .args([
                "-m",
                "moto.server",
                "-H",
                "127.0.0.1",
                "-p",
                &port.to_string(),
            ])
            .current_dir(workspace_root())
            .env("PYTHONDONTWRITEBYTECODE", "1")
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(log)
            .kill_on_drop(true)
            .spawn()
            .expect("the test virtualenv's python runs moto's server");
        let http = reqwest::Client::new();
        let base = format!("http://127.0.0.1:{port}");
        let deadline = tokio::time::Instant::now() + PATIENCE;
        // Up once it answers S3's ListBuckets.
        loop {
            if let Ok(r) = http.get(format!("{base}/")).send().await {
                if r.status() == 200 {
                    break;
                }
            }
            if let Ok(Some(status)) = child.try_wait() {
                panic!("moto's server exited ({status}); see moto-{port}.log in the temp dir");
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "moto's server did not answer on {base}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        Self {
            port,
            bucket: format!("results-{}", &Uuid::new_v4().simple().to_string()[..12]),
            _child: child,
        }
    }

    pub async fn create_bucket(&self) {
        let out = self.s3(&["create"]).await;
        assert!(
            out.status.success(),
            "create bucket: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    fn log_path(port: u16) -> std::path::PathBuf {
        std::env::temp_dir().join(format!("moto-{port}.log"))
    }

    /// Requests the server has logged so far whose request line contains `needle`
    /// (`"PUT /bucket/key"`).
    pub fn requests(&self, needle: &str) -> usize {
        std::fs::read_to_string(Self::log_path(self.port))
            .unwrap_or_default()
            .lines()
            .filter(|l| l.contains(needle))
            .count()
    }

    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    async fn s3(&self, args: &[&str]) -> std::process::Output {
        let script = python_script("s3_object.py");
        let endpoint = self.endpoint();
        let mut all = vec![script.as_str(), endpoint.as_str(), self.bucket.as_str()];
        all.extend(args);
        run_python(&all, b"").await
    }

    /// The `storage.*` settings of a Dispatcher that keeps its documents in this bucket.
    pub fn settings(&self) -> Vec<(&'static str, String)> {
        vec![
            ("DISPATCHER__STORAGE__URL", format!("s3://{}", self.bucket)),
            ("DISPATCHER__STORAGE__ENDPOINT", self.endpoint()),
            ("DISPATCHER__STORAGE__REGION", "us-east-1".into()),
            ("DISPATCHER__STORAGE__ACCESS_KEY_ID", "testing".into()),
            ("DISPATCHER__STORAGE__SECRET_ACCESS_KEY", "testing".into()),
            ("DISPATCHER__STORAGE__ALLOW_HTTP", "true".into()),
        ]
    }

    /// The object at `key`, read from the server with boto3; `None` when there is none.
    pub async fn object(&self, key: &str) -> Option<Vec<u8>> {
        let out = self.s3(&["get", key]).await;
        match out.status.code() {
            Some(0) => Some(out.stdout),
            Some(3) => None,
            _ => panic!(
                "reading {key} from moto: {}",
                String::from_utf8_lossy(&out.stderr)
            ),
        }
    }

    /// Waits until the object at `key` exists, and returns it.
    pub async fn wait_for_object(&self, key: &str) -> Vec<u8> {
        let deadline = tokio::time::Instant::now() + PATIENCE;
        loop {
            if let Some(got) = self.object(key).await {
                return got;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "no object {key} in bucket {}",
                self.bucket
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

/// `spawn_with`'s overrides from owned pairs.
pub fn overrides<'a>(pairs: &'a [(&'static str, String)]) -> Vec<(&'static str, &'a str)> {
    pairs.iter().map(|(k, v)| (*k, v.as_str())).collect()
}
