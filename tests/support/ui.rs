//! Driving the dashboard (`/ui/` on the status port): over HTTP with a small cookie jar, and in
//! headless Chromium through chromedriver.

use crate::PATIENCE;
use reqwest::header::{HeaderMap, COOKIE, LOCATION, SET_COOKIE};
use reqwest::StatusCode;
use std::collections::BTreeMap;
use std::net::TcpListener as StdListener;
use std::path::PathBuf;
use std::time::Duration;

/// One answer of the dashboard.
pub struct Page {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: String,
}

impl Page {
    /// Where a redirect points.
    pub fn location(&self) -> &str {
        self.headers
            .get(LOCATION)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
    }

    pub fn header(&self, name: &str) -> &str {
        self.headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
    }

    /// The `Set-Cookie` line for cookie `name`, if the answer set it.
    pub fn set_cookie(&self, name: &str) -> Option<String> {
        self.headers
            .get_all(SET_COOKIE)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .find(|c| c.starts_with(&format!("{name}=")))
            .map(str::to_owned)
    }

    /// The value of the hidden form field `name` (the first one on the page).
    pub fn hidden(&self, name: &str) -> String {
        let marker = format!("name=\"{name}\" value=\"");
        let start = self
            .body
            .find(&marker)
            .unwrap_or_else(|| panic!("no field {name} in:\n{}", self.body))
            + marker.len();
        let len = self.body[start..].find('"').unwrap();
        self.body[start..start + len].to_owned()
    }
}

/// A browser-like HTTP client: keeps the cookies it is given, follows no redirects.
pub struct UiClient {
    http: reqwest::Client,
    base: String,
    pub cookies: BTreeMap<String, String>,
}

impl UiClient {
    pub fn new(status_url: &str) -> Self {
        Self {
            http: reqwest::Client::builder()
                .redirect(reqwest::redirect::Policy::none())
                .timeout(Duration::from_secs(30))
                .build()
                .unwrap(),
            base: status_url.trim_end_matches('/').to_owned(),
            cookies: BTreeMap::new(),
        }
    }

    fn cookie_header(&self) -> String {
        self.cookies
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect::<Vec<_>>()
            .join("; ")
    }

    async fn take(&mut self, resp: reqwest::Response) -> Page {
        let status = resp.status();
        let headers = resp.headers().clone();
        for c in headers.get_all(SET_COOKIE).iter() {
            let c = c.to_str().unwrap();
            let (pair, attrs) = c.split_once(';').unwrap_or((c, ""));
            let (k, v) = pair.split_once('=').unwrap();
            if attrs.contains("Max-Age=0") {
                self.cookies.remove(k);
            } else {
                self.cookies.insert(k.to_owned(), v.to_owned());
            }
        }
        Page {
            status,
            headers,
            body: resp.text().await.unwrap(),
        }
    }

    pub async fn get(&mut self, path: &str) -> Page {
        let resp = self
            .http
            .get(format!("{}{path}", self.base))
            .header(COOKIE, self.cookie_header())
            .send()
            .await
            .unwrap();
        self.take(resp).await
    }

    pub async fn post(&mut self, path: &str, form: &[(&str, &str)]) -> Page {
        let resp = self
            .http
            .post(format!("{}{path}", self.base))
            .header(COOKIE, self.cookie_header())
            .form(form)
            .send()
            .await
            .unwrap();
        self.take(resp).await
    }

    /// Fills in and sends the sign-in form.
    pub async fn sign_in(&mut self, email: &str, password: &str) -> Page {
        let form = self.get("/ui/login").await;
        assert_eq!(form.status, 200, "{}", form.body);
        let token = form.hidden("token");
        self.post(
            "/ui/login",
            &[("email", email), ("password", password), ("token", &token)],
        )
        .await
    }

    /// The CSRF token of the current session, read from a page.
    pub async fn csrf(&mut self) -> String {
        let page = self.get("/ui/dispatches").await;
        assert_eq!(page.status, 200, "{}", page.body);
        page.hidden("csrf")
    }
}

/// Where tests put what a person would look at afterwards: `<target dir>/ui-screenshots/`.
pub fn screenshot_dir() -> PathBuf {
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| crate::workspace_root().join("target"));
    let dir = target.join("ui-screenshots");
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// chromedriver on a free loopback port, stopped on drop.
pub struct ChromeDriver {
    child: tokio::process::Child,
    pub url: String,
}

impl ChromeDriver {
    /// `None` when chromedriver is not installed (`scripts/ensure-services.sh` installs it).
    pub fn binary() -> Option<PathBuf> {
        ["/usr/bin/chromedriver", "/usr/lib/chromium/chromedriver"]
            .iter()
            .map(PathBuf::from)
            .find(|p| p.exists())
    }

    pub async fn start() -> Self {
        let bin = Self::binary()
            .expect("chromedriver is missing: run scripts/ensure-services.sh (installs Debian's chromium-driver)");
        let port = StdListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let child = tokio::process::Command::new(bin)
            .arg(format!("--port={port}"))
            .arg("--allowed-ips=127.0.0.1")
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .expect("start chromedriver");
        let url = format!("http://127.0.0.1:{port}");
        let http = reqwest::Client::new();
        let deadline = tokio::time::Instant::now() + PATIENCE;
        loop {
            if let Ok(r) = http.get(format!("{url}/status")).send().await {
                if r.status().is_success() {
                    break;
                }
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "chromedriver did not come up on {url}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        Self { child, url }
    }

    /// A headless Chromium session of `width` x `height`.
    pub async fn browser(&self, width: u32, height: u32) -> fantoccini::Client {
        let mut caps = serde_json::Map::new();
        caps.insert(
            "goog:chromeOptions".into(),
            serde_json::json!({
                "binary": "/usr/bin/chromium",
                "args": [
                    "--headless=new",
                    "--no-sandbox",
                    "--disable-dev-shm-usage",
                    "--disable-gpu",
                    "--no-first-run",
                    "--disable-extensions",
                    "--disable-background-networking",
                    "--disable-component-update",
                    "--disable-sync",
                    "--disable-default-apps",
                    "--metrics-recording-only",
                    // Tests talk to loopback only: no name resolves to anything else.
                    "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1",
                    format!("--window-size={width},{height}"),
                ],
            }),
        );
        let client = tokio::time::timeout(
            PATIENCE,
            fantoccini::ClientBuilder::new(
                hyper_util::client::legacy::connect::HttpConnector::new(),
            )
            .capabilities(caps)
            .connect(&self.url),
        )
        .await
        .expect("chromium session within the patience")
        .expect("a chromium session");
        client
            .set_window_size(width, height)
            .await
            .expect("window size");
        client
    }
}

impl Drop for ChromeDriver {
    fn drop(&mut self) {
        let _ = self.child.start_kill();
    }
}
