//! The harness of the dashboard's browser tests (`tests/dashboard*.rs`): a server, an admin
//! client and a headless Chromium on the server's dashboard, for one test. At the end a test
//! fails on any browser console error it did not provoke on purpose.
//!
//! One browser runs at a time (the tests of a binary take turns): the machine is small and a
//! browser per test thread would only make them slower and flakier.
//!
//! A browser test includes it next to `common` and the WebDriver client:
//!
//! ```ignore
//! mod common;
//! #[path = "common/webdriver.rs"]
//! mod webdriver;
//! #[path = "common/dashboard_env.rs"]
//! mod dashboard_env;
//! ```
#![allow(dead_code, clippy::unwrap_used)]

use std::net::SocketAddr;

use serde_json::json;

use crate::common::{BinaryServer, Client, TestServer};
use crate::webdriver::Browser;

pub const WIDE: (u32, u32) = (1280, 900);
pub const PHONE: (u32, u32) = (390, 844);
pub const ORG: &str = "acme";

/// A test's turn with the browser (an async lock: it is held across awaits).
pub type Turn = tokio::sync::MutexGuard<'static, ()>;

static ONE_BROWSER_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// Waits for this test's turn with the browser.
pub async fn take_turn() -> Turn {
    ONE_BROWSER_AT_A_TIME.lock().await
}

/// A server the dashboard runs on: the real binary or the server in the test process.
pub trait Served {
    fn addr(&self) -> SocketAddr;
    fn admin_token(&self) -> &str;
    async fn stop(self);
}

impl Served for BinaryServer {
    fn addr(&self) -> SocketAddr {
        self.addr
    }

    fn admin_token(&self) -> &str {
        &self.admin_token
    }

    async fn stop(mut self) {
        self.terminate();
    }
}

impl Served for TestServer {
    fn addr(&self) -> SocketAddr {
        self.addr
    }

    fn admin_token(&self) -> &str {
        &self.admin_token
    }

    async fn stop(self) {
        TestServer::stop(self).await;
    }
}

/// A server, an admin client and a browser, for one test.
pub struct Env<S: Served = BinaryServer> {
    pub server: S,
    /// The data dir of a server `Env::start` spawned.
    pub data: Option<tempfile::TempDir>,
    pub base: String,
    pub admin: Client,
    pub browser: Browser,
    /// API answers this test provokes on purpose (see `assert_no_console_errors`).
    pub expected_errors: Vec<(String, u16)>,
    _turn: Turn,
}

impl Env<BinaryServer> {
    /// The real binary with `server_env` on a fresh data dir, once it is this test's turn.
    pub async fn start(server_env: &[(&str, &str)]) -> Self {
        let turn = take_turn().await;
        let data = tempfile::tempdir().unwrap();
        let server = BinaryServer::spawn(data.path(), server_env);
        Self::with(server, Some(data), turn).await
    }
}

impl<S: Served> Env<S> {
    /// A browser on `server`'s dashboard, once it is this test's turn.
    pub async fn on(server: S) -> Self {
        let turn = take_turn().await;
        Self::with(server, None, turn).await
    }

    /// A browser on `server`'s dashboard; `data` (its data dir, if the test made it) lives as
    /// long as the `Env`.
    pub async fn with(server: S, data: Option<tempfile::TempDir>, turn: Turn) -> Self {
        let admin = Client::new(server.addr(), Some(server.admin_token()));
        let base = format!("http://{}", server.addr());
        let browser = Browser::start(WIDE.0, WIDE.1).await;
        // Until the update pipeline is on the server, the dashboard's pipeline calls are 404s.
        let mut expected_errors = Vec::new();
        if admin.get("/api/v1/rollouts").await.status == 404 {
            expected_errors.push(("/api/v1/rollouts".to_string(), 404));
        }
        Env {
            server,
            data,
            base,
            admin,
            browser,
            expected_errors,
            _turn: turn,
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    /// An API answer this test provokes on purpose: the console error it logs is no failure.
    pub fn expect_error(&mut self, path: impl Into<String>, status: u16) {
        self.expected_errors.push((path.into(), status));
    }

    /// Signs in through the form and picks `org` (admins choose one; org tokens have theirs).
    pub async fn sign_in(&self, token: &str, org: Option<&str>) {
        let b = &self.browser;
        b.goto(&self.url("/")).await;
        b.fill("#token", token).await;
        b.click("#sign-in").await;
        b.wait_ready("overview").await;
        if let Some(org) = org {
            b.fill("#org-input", org).await;
            b.click(".org-picker button[type=submit]").await;
            b.wait_ready("overview").await;
            b.wait_for_text(".page-head", org, 5).await;
        }
    }

    /// Signs in as the admin and picks `org`.
    pub async fn sign_in_admin(&self, org: &str) {
        self.sign_in(self.server.admin_token(), Some(org)).await;
    }

    /// Opens an app page the way a user does: through the app's router (no page reload).
    pub async fn open(&self, path: &str, view: &str) {
        self.browser
            .exec(
                "history.pushState(null, '', arguments[0]); dispatchEvent(new PopStateEvent('popstate'));",
                json!([path]),
            )
            .await;
        self.browser.wait_ready(view).await;
    }

    /// Fails on any console error but the expected ones; closes the browser, stops the server.
    pub async fn finish(mut self) {
        let expected: Vec<(&str, u16)> = self
            .expected_errors
            .iter()
            .map(|(p, s)| (p.as_str(), *s))
            .collect();
        self.browser.assert_no_console_errors(&expected).await;
        self.browser.quit().await;
        self.server.stop().await;
    }
}

// ---- page helpers ------------------------------------------------------------------------------

/// Sets the window's size and waits until the page has it.
pub async fn resize(b: &Browser, (width, height): (u32, u32)) {
    b.set_window(width, height).await;
    b.wait_until(
        "the window takes its size",
        "return window.innerWidth === arguments[0]",
        json!([width]),
        5,
    )
    .await;
}

/// Asserts the page does not scroll sideways.
pub async fn no_sideways_scrolling(b: &Browser, what: &str) {
    let overflow = b
        .exec(
            "return document.documentElement.scrollWidth - window.innerWidth",
            json!([]),
        )
        .await;
    assert!(
        overflow.as_i64().unwrap() <= 0,
        "{what} scrolls sideways by {overflow} px"
    );
}

/// The value of the form control matching `css`.
pub async fn value_of(b: &Browser, css: &str) -> String {
    b.exec(
        "const el = document.querySelector(arguments[0]); return el ? el.value : null;",
        json!([css]),
    )
    .await
    .as_str()
    .unwrap_or_else(|| panic!("no `{css}`"))
    .to_string()
}
