//! The dashboard, embedded in the binary. `/` and every non-API GET serve it; unknown paths fall
//! back to `index.html` so the browser app can route.
//!
//! There is no bundler (see `ui/README.md`), so content hashing happens here, once, the first
//! time the dashboard is asked for: every file except `index.html` gets a URL carrying a hash of
//! what is served under it (`/assets/app.js` → `/assets/app.3f2a9c1b5d7e.js`), served with a
//! one-year `immutable` cache. References to other files are rewritten to those URLs first —
//! `src`/`href` in `index.html` and relative `import … from './x.js'` specifiers in JavaScript —
//! so a file's hash covers the hashes of everything it imports, and a change anywhere gives new
//! URLs all the way up to `index.html`, which is never cached. The plain names still answer
//! (`no-cache`, revalidated by ETag) for humans and tools.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::sync::OnceLock;

use bytes::Bytes;
use rust_embed::Embed;
use sha2::{Digest, Sha256};
use warp::Filter;
use warp::filters::BoxedFilter;
use warp::http::{HeaderMap, HeaderValue, StatusCode, header};
use warp::reply::Response;

#[derive(Embed)]
#[folder = "ui/"]
#[exclude = "README.md"]
struct Files;

/// Stands in `index.html` for the per-response CSP nonce.
const NONCE_PLACEHOLDER: &str = "__CSP_NONCE__";

/// Cache policy of hashed URLs: their content can never change.
const IMMUTABLE: &str = "public, max-age=31536000, immutable";
/// Cache policy of everything else: always revalidate.
const NO_CACHE: &str = "no-cache";

/// The policy of the dashboard document. Scripts come only from our own files (no inline
/// script, no eval). Styles too, except `<style>` elements carrying this response's nonce:
/// xterm.js's DOM renderer writes its theme and cell metrics into `<style>` elements it creates
/// at run time, and `ui/assets/csp.js` gives the elements our own scripts create that nonce.
/// Injected markup cannot know it, so `'unsafe-inline'` is not needed. `connect-src 'self'`
/// covers the same-origin WebSocket.
fn document_csp(nonce: &str) -> String {
    format!(
        "default-src 'none'; script-src 'self'; style-src 'self' 'nonce-{nonce}'; \
         img-src 'self'; font-src 'self'; connect-src 'self'; manifest-src 'self'; \
         frame-ancestors 'none'; base-uri 'none'; form-action 'self'; object-src 'none'"
    )
}

/// The policy sent with every other file (nothing in them is a document).
const ASSET_CSP: &str = "default-src 'none'; frame-ancestors 'none'";

/// One file as it is served.
struct Asset {
    body: Bytes,
    content_type: HeaderValue,
    /// Strong validator: a hash of `body`.
    etag: HeaderValue,
}

/// Every served file, computed once.
struct Manifest {
    /// Hashed path (`assets/app.3f2a9c1b5d7e.js`) → file, cached for a year.
    hashed: HashMap<String, Asset>,
    /// Plain path (`assets/app.js`) → the same file, revalidated on every use.
    plain: HashMap<String, Asset>,
    /// Plain path → hashed path.
    names: HashMap<String, String>,
    /// `index.html` with hashed references, still holding the nonce placeholder.
    index: String,
}

static MANIFEST: OnceLock<Manifest> = OnceLock::new();

fn manifest() -> &'static Manifest {
    MANIFEST.get_or_init(Manifest::build)
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().fold(String::new(), |mut s, b| {
        let _ = write!(s, "{b:02x}");
        s
    })
}

/// The first 12 hex digits of the SHA-256 of `data`.
fn short_hash(data: &[u8]) -> String {
    hex(&Sha256::digest(data)[..6])
}

/// `dir/name.ext` → `dir/name.<hash>.ext`.
fn hashed_name(path: &str, hash: &str) -> String {
    let slash = path.rfind('/').map_or(0, |i| i + 1);
    match path[slash..].rfind('.') {
        Some(dot) if dot > 0 => {
            let dot = slash + dot;
            format!("{}.{hash}{}", &path[..dot], &path[dot..])
        }
        _ => format!("{path}.{hash}"),
    }
}

/// Resolves `spec` (`./x.js`, `../vendor/y.mjs`, `/assets/z.js`) against the directory of
/// `from` into an embedded path, if it names one.
fn resolve(from: &str, spec: &str) -> Option<String> {
    let mut parts: Vec<&str> = if let Some(abs) = spec.strip_prefix('/') {
        return Some(abs.to_owned());
    } else if spec.starts_with("./") || spec.starts_with("../") {
        from.split('/').collect()
    } else {
        return None;
    };
    parts.pop(); // the file name of `from`
    for seg in spec.split('/') {
        match seg {
            "." => {}
            ".." => {
                parts.pop()?;
            }
            s => parts.push(s),
        }
    }
    Some(parts.join("/"))
}

/// A reference to another file inside a text file: its byte range (without quotes) and target.
struct Reference {
    start: usize,
    end: usize,
    target: String,
}

/// Relative module specifiers of `import … from '…'`, `import '…'`, `export … from '…'` and
/// `import('…')` that name embedded files.
fn js_references(path: &str, text: &str, exists: &dyn Fn(&str) -> bool) -> Vec<Reference> {
    let mut out = Vec::new();
    for keyword in ["from", "import"] {
        let mut at = 0;
        while let Some(found) = text[at..].find(keyword) {
            let after = at + found + keyword.len();
            at = after;
            let rest = text[after..].trim_start_matches([' ', '\t', '\n', '\r', '(']);
            let Some(quote) = rest.chars().next().filter(|c| *c == '\'' || *c == '"') else {
                continue;
            };
            let start = text.len() - rest.len() + 1;
            let Some(len) = text[start..].find(quote) else {
                continue;
            };
            let spec = &text[start..start + len];
            if let Some(target) = resolve(path, spec).filter(|t| exists(t)) {
                out.push(Reference {
                    start,
                    end: start + len,
                    target,
                });
            }
        }
    }
    out.sort_by_key(|r| r.start);
    out.dedup_by_key(|r| r.start);
    out
}

/// `src="/…"` and `href="/…"` values of `index.html` that name embedded files.
fn html_references(text: &str, exists: &dyn Fn(&str) -> bool) -> Vec<Reference> {
    let mut out = Vec::new();
    for attr in ["src=\"", "href=\""] {
        let mut at = 0;
        while let Some(found) = text[at..].find(attr) {
            let start = at + found + attr.len();
            at = start;
            let Some(len) = text[start..].find('"') else {
                continue;
            };
            if let Some(target) =
                resolve("index.html", &text[start..start + len]).filter(|t| exists(t))
            {
                out.push(Reference {
                    start,
                    end: start + len,
                    target,
                });
            }
        }
    }
    out.sort_by_key(|r| r.start);
    out
}

/// `text` with every reference replaced by the absolute hashed URL of its target.
fn rewrite(text: &str, refs: &[Reference], names: &HashMap<String, String>) -> String {
    let mut out = String::with_capacity(text.len());
    let mut last = 0;
    for r in refs {
        out.push_str(&text[last..r.start]);
        match names.get(&r.target) {
            Some(hashed) => {
                out.push('/');
                out.push_str(hashed);
            }
            None => out.push_str(&text[r.start..r.end]),
        }
        last = r.end;
    }
    out.push_str(&text[last..]);
    out
}

/// The media type by extension: the dashboard holds few kinds of file, all known here.
fn content_type(path: &str) -> HeaderValue {
    let name = path.rsplit('/').next().unwrap_or(path);
    let ext = name.rsplit_once('.').map_or("", |(_, e)| e);
    HeaderValue::from_static(match ext {
        "html" => "text/html; charset=utf-8",
        // Modules must be served as JavaScript whatever their extension.
        "js" | "mjs" => "text/javascript; charset=utf-8",
        "css" => "text/css; charset=utf-8",
        "svg" => "image/svg+xml; charset=utf-8",
        "json" | "map" => "application/json",
        "png" => "image/png",
        "ico" => "image/x-icon",
        "woff2" => "font/woff2",
        "txt" | "md" | "" => "text/plain; charset=utf-8",
        _ => "application/octet-stream",
    })
}

fn asset(path: &str, body: Vec<u8>) -> Asset {
    let etag = HeaderValue::from_str(&format!("\"{}\"", short_hash(&body)))
        .unwrap_or(HeaderValue::from_static("\"0\""));
    Asset {
        body: Bytes::from(body),
        content_type: content_type(path),
        etag,
    }
}

impl Manifest {
    fn build() -> Self {
        let files: HashMap<String, Vec<u8>> = Files::iter()
            .filter_map(|p| Files::get(&p).map(|f| (p.to_string(), f.data.into_owned())))
            .collect();
        Self::from_files(&files)
    }

    fn from_files(files: &HashMap<String, Vec<u8>>) -> Self {
        let exists = |p: &str| files.contains_key(p) && p != "index.html";
        // JavaScript is rewritten before it is hashed; a module's hash depends on those of its
        // imports, so hash depth first. A cycle keeps its plain specifier (served no-cache).
        let mut names: HashMap<String, String> = HashMap::new();
        let mut bodies: HashMap<String, Vec<u8>> = HashMap::new();
        let mut paths: Vec<&String> = files.keys().filter(|p| exists(p)).collect();
        paths.sort();
        for path in paths {
            let mut visiting = Vec::new();
            Self::hash_file(path, files, &exists, &mut visiting, &mut names, &mut bodies);
        }
        let mut hashed = HashMap::new();
        let mut plain = HashMap::new();
        for (path, body) in bodies {
            if let Some(name) = names.get(&path) {
                hashed.insert(name.clone(), asset(&path, body.clone()));
            }
            plain.insert(path.clone(), asset(&path, body));
        }
        let index = files
            .get("index.html")
            .map(|b| {
                let text = String::from_utf8_lossy(b);
                rewrite(&text, &html_references(&text, &exists), &names)
            })
            .unwrap_or_default();
        Self {
            hashed,
            plain,
            names,
            index,
        }
    }

    fn hash_file(
        path: &str,
        files: &HashMap<String, Vec<u8>>,
        exists: &dyn Fn(&str) -> bool,
        visiting: &mut Vec<String>,
        names: &mut HashMap<String, String>,
        bodies: &mut HashMap<String, Vec<u8>>,
    ) {
        if bodies.contains_key(path) || visiting.iter().any(|v| v == path) {
            return;
        }
        let Some(raw) = files.get(path) else { return };
        let is_js = path.ends_with(".js") || path.ends_with(".mjs");
        let body = match std::str::from_utf8(raw) {
            Ok(text) if is_js => {
                let refs = js_references(path, text, exists);
                visiting.push(path.to_owned());
                for r in &refs {
                    Self::hash_file(&r.target, files, exists, visiting, names, bodies);
                }
                visiting.pop();
                rewrite(text, &refs, names).into_bytes()
            }
            _ => raw.clone(),
        };
        names.insert(path.to_owned(), hashed_name(path, &short_hash(&body)));
        bodies.insert(path.to_owned(), body);
    }
}

/// A fresh nonce for one response (128 random bits, hex).
fn new_nonce() -> String {
    hex(&rand::random::<[u8; 16]>())
}

fn security_headers(h: &mut HeaderMap, csp: &str) {
    if let Ok(v) = HeaderValue::from_str(csp) {
        h.insert("content-security-policy", v);
    }
    h.insert(
        "x-content-type-options",
        HeaderValue::from_static("nosniff"),
    );
    h.insert("referrer-policy", HeaderValue::from_static("no-referrer"));
}

fn index_response() -> Response {
    let nonce = new_nonce();
    let body = manifest().index.replace(NONCE_PLACEHOLDER, &nonce);
    let mut r = Response::new(body.into());
    let h = r.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/html; charset=utf-8"),
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static(NO_CACHE));
    security_headers(h, &document_csp(&nonce));
    r
}

fn file_response(file: &Asset, cache: &'static str, if_none_match: Option<&str>) -> Response {
    let fresh = if_none_match.is_some_and(|tags| {
        tags.split(',')
            .any(|t| t.trim().trim_start_matches("W/").as_bytes() == file.etag.as_bytes())
    });
    let mut r = if fresh {
        let mut r = Response::new(Default::default());
        *r.status_mut() = StatusCode::NOT_MODIFIED;
        r
    } else {
        Response::new(file.body.clone().into())
    };
    let h = r.headers_mut();
    h.insert(header::CONTENT_TYPE, file.content_type.clone());
    h.insert(header::ETAG, file.etag.clone());
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static(cache));
    security_headers(h, ASSET_CSP);
    r
}

fn not_found() -> Response {
    let mut r = Response::new("not found\n".into());
    *r.status_mut() = StatusCode::NOT_FOUND;
    let h = r.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static(NO_CACHE));
    security_headers(h, ASSET_CSP);
    r
}

/// Answers `GET /<path>`.
fn serve(path: &str, if_none_match: Option<&str>) -> Response {
    let m = manifest();
    if let Some(file) = m.hashed.get(path) {
        return file_response(file, IMMUTABLE, if_none_match);
    }
    if let Some(file) = m.plain.get(path) {
        return file_response(file, NO_CACHE, if_none_match);
    }
    // A missing file where files live (an old hash after an upgrade, a typo) is a 404: handing
    // a script tag an HTML page only hides the mistake. Every other path is a page of the app.
    if path.starts_with("assets/") || path.starts_with("vendor/") {
        return not_found();
    }
    index_response()
}

/// The hashed URL of an embedded file (`assets/app.js` → `/assets/app.<hash>.js`).
pub fn hashed_url(path: &str) -> Option<String> {
    manifest().names.get(path).map(|n| format!("/{n}"))
}

pub fn routes() -> BoxedFilter<(Response,)> {
    warp::get()
        .and(warp::path::tail())
        .and(warp::header::optional::<String>("if-none-match"))
        .map(|tail: warp::path::Tail, inm: Option<String>| serve(tail.as_str(), inm.as_deref()))
        .boxed()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn files(list: &[(&str, &str)]) -> HashMap<String, Vec<u8>> {
        list.iter()
            .map(|(p, b)| (p.to_string(), b.as_bytes().to_vec()))
            .collect()
    }

    #[test]
    fn hashed_names_keep_the_extension() {
        assert_eq!(hashed_name("assets/app.js", "abc"), "assets/app.abc.js");
        assert_eq!(
            hashed_name("vendor/xterm/xterm.mjs", "abc"),
            "vendor/xterm/xterm.abc.mjs"
        );
        assert_eq!(hashed_name("a.b/LICENSE", "abc"), "a.b/LICENSE.abc");
    }

    #[test]
    fn specifiers_resolve_against_the_importing_file() {
        assert_eq!(
            resolve("assets/views/a.js", "../api.js").as_deref(),
            Some("assets/api.js")
        );
        assert_eq!(
            resolve("assets/app.js", "./views/a.js").as_deref(),
            Some("assets/views/a.js")
        );
        assert_eq!(
            resolve("assets/app.js", "../../x.js"),
            None,
            "above the root"
        );
        assert_eq!(resolve("assets/app.js", "lodash"), None, "bare specifier");
    }

    #[test]
    fn a_change_in_an_import_changes_every_url_up_to_index() {
        let base = [
            (
                "index.html",
                r#"<script type="module" src="/assets/app.js"></script><link href="/assets/app.css" rel="stylesheet"><a href="/sessions">x</a>"#,
            ),
            (
                "assets/app.js",
                "import { a } from './lib.js';\nimport './side.js';\nconst s = 'from here';\n",
            ),
            ("assets/lib.js", "export const a = 1;"),
            ("assets/side.js", "import(\"./lib.js\");"),
            ("assets/app.css", "body{}"),
        ];
        let one = Manifest::from_files(&files(&base));
        let app = &one.names["assets/app.js"];
        let lib = &one.names["assets/lib.js"];
        let served = std::str::from_utf8(&one.hashed[app].body).unwrap();
        assert!(
            served.contains(&format!("from '/{lib}'")),
            "import rewritten: {served}"
        );
        let side = std::str::from_utf8(&one.hashed[&one.names["assets/side.js"]].body)
            .unwrap()
            .to_owned();
        assert!(side.contains(&format!("import(\"/{lib}\")")), "{side}");
        assert!(
            one.index.contains(&format!("src=\"/{app}\"")),
            "{}",
            one.index
        );
        assert!(
            one.index
                .contains(&format!("href=\"/{}\"", one.names["assets/app.css"]))
        );
        assert!(one.index.contains("href=\"/sessions\""), "routes untouched");

        let mut changed = base;
        changed[2].1 = "export const a = 2;";
        let two = Manifest::from_files(&files(&changed));
        assert_ne!(two.names["assets/lib.js"], *lib);
        assert_ne!(two.names["assets/app.js"], *app, "importer rehashed");
        assert_eq!(
            two.names["assets/app.css"], one.names["assets/app.css"],
            "unrelated file keeps its URL"
        );
    }

    #[test]
    fn an_import_cycle_keeps_plain_specifiers_and_still_serves() {
        let m = Manifest::from_files(&files(&[
            ("index.html", r#"<script src="/a.js"></script>"#),
            ("a.js", "import './b.js';"),
            ("b.js", "import './a.js';"),
        ]));
        assert!(m.plain.contains_key("a.js") && m.plain.contains_key("b.js"));
        assert_eq!(m.hashed.len(), 2);
    }

    #[test]
    fn the_embedded_dashboard_references_only_hashed_files() {
        let m = manifest();
        for entry in ["assets/app.js", "assets/app.css", "vendor/xterm/xterm.css"] {
            let url = hashed_url(entry).unwrap_or_else(|| panic!("{entry} is embedded"));
            assert!(m.index.contains(&url), "index.html links {url}");
        }
        assert!(m.index.contains(NONCE_PLACEHOLDER));
        // Every relative import in every module was rewritten to a hashed URL.
        for (path, file) in &m.plain {
            if !path.ends_with(".js") {
                continue;
            }
            let text = std::str::from_utf8(&file.body).unwrap();
            for spec in [" from './", " from '../", "import './", "import '../"] {
                assert!(!text.contains(spec), "{path} still imports a plain path");
            }
        }
        assert!(!m.index.contains("\"/assets/app.js\""));
    }

    #[test]
    fn vendored_files_are_the_published_ones() {
        // ui/README.md names the package versions; these are the SHA-256 of the files copied
        // unmodified out of their npm tarballs.
        for (path, sha) in [
            (
                "vendor/xterm/xterm.mjs",
                "b336ec65a086c056d4804b3d4c2347da5663d3f23c3f25be866467bd8857ad59",
            ),
            (
                "vendor/xterm/xterm.css",
                "854a7c0fb70e8b1a083c16797ab827299fb18744f5ad34f227b48337e33293c6",
            ),
            (
                "vendor/addon-fit/addon-fit.mjs",
                "2d87e1bddc73be9111de8beee5370c3bb7aac9c94e18e6f245f02ca741ef1769",
            ),
        ] {
            let file = Files::get(path).unwrap_or_else(|| panic!("{path} is embedded"));
            assert_eq!(hex(&Sha256::digest(&file.data)), sha, "{path}");
        }
    }

    #[test]
    fn content_types() {
        assert_eq!(content_type("a/x.mjs"), "text/javascript; charset=utf-8");
        assert_eq!(content_type("a/x.js"), "text/javascript; charset=utf-8");
        assert_eq!(content_type("a/x.css"), "text/css; charset=utf-8");
        assert_eq!(content_type("a/x.svg"), "image/svg+xml; charset=utf-8");
        assert_eq!(content_type("a/x.png"), "image/png");
        assert_eq!(
            content_type("vendor/x/LICENSE"),
            "text/plain; charset=utf-8"
        );
    }
}
