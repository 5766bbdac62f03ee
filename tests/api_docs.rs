//! The repository stands alone: `docs/api.md` describes every route of the OpenAPI document
//! (`src/api/openapi.json`), and no tracked file sends its reader to documents that are not in
//! the repository (a sibling folder of specifications, numbered sections of an external
//! contract, or numbered items of an issue tracker).
//!
//! Convention: each route appears in a Markdown heading of `docs/api.md` as
//! `` `METHOD /path` ``, with the method in capitals and the path template spelled exactly as in
//! the OpenAPI document, e.g. ``### `GET /api/v1/sessions/{sessionId}` ``.

use std::fs;
use std::io::ErrorKind;
use std::path::Path;
use std::process::Command;

use serde_json::Value;

/// The keys of an OpenAPI path item that are operations.
const METHODS: &[&str] = &[
    "get", "put", "post", "delete", "options", "head", "patch", "trace",
];

fn repo() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

fn read(relative: &str) -> String {
    fs::read_to_string(repo().join(relative)).unwrap_or_else(|e| panic!("reading {relative}: {e}"))
}

/// The heading lines of a Markdown text, outside fenced code blocks.
fn headings(markdown: &str) -> Vec<&str> {
    let mut in_fence = false;
    let mut out = Vec::new();
    for line in markdown.lines() {
        let trimmed = line.trim_start();
        if trimmed.starts_with("```") {
            in_fence = !in_fence;
        } else if !in_fence && trimmed.starts_with('#') {
            out.push(trimmed);
        }
    }
    out
}

#[test]
fn every_openapi_route_has_a_heading_in_the_api_docs() {
    let doc: Value = serde_json::from_str(&read("src/api/openapi.json"))
        .expect("src/api/openapi.json is not valid JSON");
    let api_md = read("docs/api.md");
    let headings = headings(&api_md);
    let paths = doc["paths"]
        .as_object()
        .expect("src/api/openapi.json has no `paths` object");
    let mut routes = 0;
    let mut missing = Vec::new();
    for (path, item) in paths {
        let item = item
            .as_object()
            .unwrap_or_else(|| panic!("the path item of {path} is not an object"));
        for method in item.keys().filter(|m| METHODS.contains(&m.as_str())) {
            routes += 1;
            let wanted = format!("`{} {path}`", method.to_ascii_uppercase());
            if !headings.iter().any(|h| h.contains(&wanted)) {
                missing.push(wanted);
            }
        }
    }
    assert!(routes > 0, "src/api/openapi.json documents no operation");
    assert!(
        missing.is_empty(),
        "docs/api.md has no heading for these {} of the {routes} routes of src/api/openapi.json \
         (write each as a heading such as ### `GET /api/v1/...`):\n{}",
        missing.len(),
        missing.join("\n")
    );
}

fn is_word(c: char) -> bool {
    c.is_alphanumeric() || c == '_'
}

/// Whether `line` matches `\bissues? [0-9]+\b` (ASCII case-insensitively): a numbered item of
/// an issue tracker. The plain word, as in the envelope's `details.issues`, is fine.
fn names_tracker_item(line: &str) -> bool {
    let lower = line.to_ascii_lowercase();
    lower.match_indices("issue").any(|(at, word)| {
        if lower[..at].chars().next_back().is_some_and(is_word) {
            return false;
        }
        let rest = &lower[at + word.len()..];
        let Some(number) = rest.strip_prefix("s ").or_else(|| rest.strip_prefix(' ')) else {
            return false;
        };
        let digits = number.bytes().take_while(u8::is_ascii_digit).count();
        digits > 0 && !number[digits..].chars().next().is_some_and(is_word)
    })
}

/// What in `line` points outside the repository, if anything.
fn external_reference(line: &str) -> Option<&'static str> {
    // Built from parts so that this file does not match itself.
    let sibling_folder = ["..", "shared", ""].join("/");
    let contract_section = format!("contract {}", '\u{a7}');
    let lower = line.to_lowercase();
    if lower.contains(&sibling_folder) {
        Some("a path to a folder outside the repository")
    } else if lower.contains(&contract_section) {
        Some("a section of an external contract")
    } else if names_tracker_item(line) {
        Some("a numbered issue-tracker item")
    } else {
        None
    }
}

#[test]
fn the_tracker_pattern_matches_numbers_only() {
    assert!(names_tracker_item(&format!("see {} {}", "issue", 12)));
    assert!(names_tracker_item(&format!("({} {}, 5)", "Issues", 4)));
    assert!(!names_tracker_item(
        "`details.issues` lists every bad field"
    ));
    assert!(!names_tracker_item("validation issues: 3 of them"));
    assert!(!names_tracker_item(&format!("{} {}", "reissue", 2)));
    assert!(!names_tracker_item(&format!("{} {}", "issue", "12a")));
}

#[test]
fn no_tracked_file_refers_to_documents_outside_the_repository() {
    let listing = Command::new("git")
        .args(["ls-files", "-z"])
        .current_dir(repo())
        .output()
        .expect("running `git ls-files` (this check needs git and a checkout of the repository)");
    assert!(
        listing.status.success(),
        "`git ls-files` failed: {}",
        String::from_utf8_lossy(&listing.stderr)
    );
    let mut found = Vec::new();
    for name in listing.stdout.split(|b| *b == 0).filter(|n| !n.is_empty()) {
        let name = String::from_utf8_lossy(name);
        if name.starts_with("target/") {
            continue;
        }
        let bytes = match fs::read(repo().join(name.as_ref())) {
            Ok(bytes) => bytes,
            // Tracked but deleted in the working tree: nothing to read.
            Err(e) if e.kind() == ErrorKind::NotFound => continue,
            Err(e) => panic!("reading {name}: {e}"),
        };
        // Binary files (images) are not read.
        if bytes.contains(&0) {
            continue;
        }
        let Ok(text) = std::str::from_utf8(&bytes) else {
            continue;
        };
        for (i, line) in text.lines().enumerate() {
            if let Some(what) = external_reference(line) {
                found.push(format!("{name}:{}: {what}: {}", i + 1, line.trim()));
            }
        }
    }
    assert!(
        found.is_empty(),
        "{} line(s) point readers at documents that are not in the repository; point them at \
         docs/api.md, the OpenAPI document (GET /api/v1/openapi.json) or the code instead, or drop \
         the reference:\n{}",
        found.len(),
        found.join("\n")
    );
}
