//! How the embedded dashboard is served: content-hashed assets cached for a year, the page
//! itself never cached, a strict Content-Security-Policy with a fresh style nonce per page,
//! SPA fallback for app paths and a plain 404 for missing files.
#![allow(clippy::unwrap_used)]

mod common;

use common::{Resp, TestServer};

fn header<'a>(r: &'a Resp, name: &str) -> &'a str {
    r.headers
        .get(name)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_else(|| panic!("no {name} header"))
}

/// The `src`/`href` URLs of `index.html` that point at our files.
fn asset_urls(html: &str) -> Vec<String> {
    html.split(['"', '\''])
        .filter(|s| s.starts_with("/assets/") || s.starts_with("/vendor/"))
        .map(str::to_owned)
        .collect()
}

fn nonce_of(csp: &str) -> String {
    csp.split("'nonce-")
        .nth(1)
        .and_then(|s| s.split('\'').next())
        .unwrap()
        .to_string()
}

#[tokio::test]
async fn the_page_is_never_cached_and_carries_a_strict_policy_with_a_fresh_nonce() {
    let s = TestServer::start("").await;
    let anon = s.anonymous();
    let first = anon.get("/").await;
    assert_eq!(first.status, 200);
    assert_eq!(header(&first, "content-type"), "text/html; charset=utf-8");
    assert_eq!(header(&first, "cache-control"), "no-cache");
    assert_eq!(header(&first, "x-content-type-options"), "nosniff");
    let csp = header(&first, "content-security-policy");
    for directive in [
        "default-src 'none'",
        "script-src 'self';",
        "connect-src 'self'",
        "frame-ancestors 'none'",
        "base-uri 'none'",
        "object-src 'none'",
    ] {
        assert!(csp.contains(directive), "{directive} in {csp}");
    }
    assert!(
        !csp.contains("unsafe-inline") && !csp.contains("unsafe-eval"),
        "{csp}"
    );
    let nonce = nonce_of(csp);
    assert!(nonce.len() >= 32, "128-bit nonce: {nonce}");
    assert!(
        first
            .text
            .contains(&format!("<meta name=\"csp-nonce\" content=\"{nonce}\">")),
        "the page tells its scripts the nonce"
    );
    assert!(
        !first.text.contains("<script>") && !first.text.contains("style="),
        "nothing inline"
    );
    let second = anon.get("/").await;
    assert_ne!(
        nonce_of(header(&second, "content-security-policy")),
        nonce,
        "a nonce per response"
    );
    s.stop().await;
}

#[tokio::test]
async fn hashed_assets_are_immutable_and_plain_names_revalidate() {
    let s = TestServer::start("").await;
    let anon = s.anonymous();
    let page = anon.get("/").await;
    let urls = asset_urls(&page.text);
    let app_js = urls
        .iter()
        .find(|u| u.starts_with("/assets/app.") && u.ends_with(".js"))
        .unwrap_or_else(|| panic!("app.js linked with a hash: {urls:?}"));
    assert!(
        urls.iter()
            .any(|u| u.starts_with("/vendor/xterm/xterm.") && u.ends_with(".css"))
    );
    for url in &urls {
        let r = anon.get(url).await;
        assert_eq!(r.status, 200, "{url}");
        assert_eq!(
            header(&r, "cache-control"),
            "public, max-age=31536000, immutable",
            "{url}"
        );
        assert!(r.headers.contains_key("etag"), "{url}");
    }
    let js = anon.get(app_js).await;
    assert_eq!(
        header(&js, "content-type"),
        "text/javascript; charset=utf-8"
    );
    // Its imports point at hashed files too, which are served immutable as well.
    let import = js
        .text
        .split('\'')
        .find(|s| s.starts_with("/assets/") && s.ends_with(".js"))
        .unwrap_or_else(|| panic!("app.js imports hashed modules: {}", &js.text[..400]));
    let imported = anon.get(import).await;
    assert_eq!(imported.status, 200, "{import}");
    assert_eq!(
        header(&imported, "cache-control"),
        "public, max-age=31536000, immutable"
    );

    // The plain name answers too, must be revalidated, and honours If-None-Match.
    let plain = anon.get("/assets/app.js").await;
    assert_eq!(plain.status, 200);
    assert_eq!(header(&plain, "cache-control"), "no-cache");
    assert_eq!(plain.text, js.text, "same content under both names");
    let etag = header(&plain, "etag").to_string();
    let again = anon
        .raw(
            "GET",
            "/assets/app.js",
            &[("if-none-match", &etag)],
            Vec::new(),
        )
        .await;
    assert_eq!(again.status, 304);
    assert!(again.text.is_empty());
    s.stop().await;
}

#[tokio::test]
async fn app_paths_fall_back_to_the_page_and_missing_files_are_404() {
    let s = TestServer::start("").await;
    let anon = s.anonymous();
    for path in [
        "/sessions",
        "/sessions/6f1c1a7e-1d7e-4a5e-9a51-3f3b0c3c7c11",
        "/admin/audit",
    ] {
        let r = anon.get(path).await;
        assert_eq!(r.status, 200, "{path}");
        assert_eq!(
            header(&r, "content-type"),
            "text/html; charset=utf-8",
            "{path}"
        );
        assert_eq!(header(&r, "cache-control"), "no-cache", "{path}");
    }
    for path in ["/assets/app.0123456789ab.js", "/vendor/nope.css"] {
        let r = anon.get(path).await;
        assert_eq!(r.status, 404, "{path}");
        assert!(
            header(&r, "content-type").starts_with("text/plain"),
            "{path}"
        );
    }
    // API paths never fall back to the page.
    let r = anon.get("/api/v1/nope").await;
    assert_eq!(r.status, 401, "{}", r.text);
    assert_eq!(r.json["success"], false);
    s.stop().await;
}
