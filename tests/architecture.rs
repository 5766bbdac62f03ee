//! The direction of dependencies, checked on the source (see ARCHITECTURE.md):
//!
//! - `store/` imports nothing of the crate but records (`*/model.rs` or `*/model/`), the clock
//!   and itself;
//! - only `api/`, `ui.rs` and `app.rs` know warp; domain modules build no JSON — the one place
//!   an event becomes JSON is `events/render.rs`, the rest of the wire is `api/`;
//! - no cycle between modules, counting an area and its records as two modules (`sessions` and
//!   `sessions::model`), since records sit at the bottom and the area's services above them.
//!
//! A plain reading of `crate::` and `super::` paths: good enough for a codebase that imports
//! by path, and fails loudly rather than quietly when it meets something it cannot place.
#![allow(clippy::unwrap_used)]

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// A module as the rules see it: a top-level module, or an area's records (`sessions::model`).
fn node_of(path: &[String]) -> String {
    match path {
        [] => "crate".into(),
        [first, second, ..] if second == "model" => format!("{first}::model"),
        [first, ..] => first.clone(),
    }
}

struct SourceFile {
    /// Module path of the file (`["store", "engine"]`).
    module: Vec<String>,
    rel: String,
    /// The code with comments removed.
    code: String,
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// Drops `//` comments (doc comments included) and `/* */` blocks; string contents stay, which
/// is fine: paths in strings are rare and would only make the check stricter.
fn strip_comments(src: &str) -> String {
    let mut out = String::with_capacity(src.len());
    let bytes = src.as_bytes();
    let (mut i, mut in_str) = (0, false);
    while i < bytes.len() {
        let c = bytes[i];
        if in_str {
            out.push(c as char);
            if c == b'\\' && i + 1 < bytes.len() {
                out.push(bytes[i + 1] as char);
                i += 2;
                continue;
            }
            if c == b'"' {
                in_str = false;
            }
            i += 1;
        } else if c == b'"' {
            in_str = true;
            out.push('"');
            i += 1;
        } else if c == b'/' && bytes.get(i + 1) == Some(&b'/') {
            while i < bytes.len() && bytes[i] != b'\n' {
                i += 1;
            }
        } else if c == b'/' && bytes.get(i + 1) == Some(&b'*') {
            i += 2;
            while i + 1 < bytes.len() && !(bytes[i] == b'*' && bytes[i + 1] == b'/') {
                i += 1;
            }
            i += 2;
        } else if c == b'\'' {
            // A char literal such as '"' must not open a string; lifetimes pass through.
            if bytes.get(i + 2) == Some(&b'\'') {
                out.push_str("' '");
                i += 3;
            } else if bytes.get(i + 1) == Some(&b'\\') && bytes.get(i + 3) == Some(&b'\'') {
                out.push_str("' '");
                i += 4;
            } else {
                out.push('\'');
                i += 1;
            }
        } else {
            out.push(c as char);
            i += 1;
        }
    }
    out
}

fn load() -> Vec<SourceFile> {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut paths = Vec::new();
    rust_files(&src, &mut paths);
    paths.sort();
    paths
        .into_iter()
        .map(|p| {
            let rel = p
                .strip_prefix(&src)
                .unwrap()
                .to_string_lossy()
                .replace('\\', "/");
            let mut module: Vec<String> = rel
                .trim_end_matches(".rs")
                .split('/')
                .map(str::to_owned)
                .collect();
            if matches!(
                module.last().map(String::as_str),
                Some("mod" | "lib" | "main")
            ) {
                module.pop();
            }
            let code = strip_comments(&std::fs::read_to_string(&p).unwrap());
            // Unit tests sit in a `mod tests` at the end of a file, where `super::` means the
            // file itself: they are not part of the file's dependencies.
            let code = match code.find("#[cfg(test)]") {
                Some(at) => code[..at].to_owned(),
                None => code,
            };
            SourceFile { module, rel, code }
        })
        .collect()
}

fn ident_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || c == '_'
}

/// Every module path a file names through `crate::…` or `super::…`, resolved to full paths.
/// `use crate::a::{b, c::d}` names `a::b` and `a::c::d`.
fn imports(file: &SourceFile) -> Vec<Vec<String>> {
    let mut out = Vec::new();
    let code = &file.code;
    for (start, _) in code
        .match_indices("crate::")
        .chain(code.match_indices("super::"))
    {
        if start > 0 && code[..start].ends_with(|c: char| ident_char(c) || c == ':') {
            continue;
        }
        let mut base: Vec<String> = if code[start..].starts_with("crate::") {
            Vec::new()
        } else {
            // `super` of a file's module; `mod.rs` files are their module.
            let mut m = file.module.clone();
            m.pop();
            m
        };
        let mut rest = &code[start + code[start..].find("::").unwrap() + 2..];
        // Further `super::` steps.
        while let Some(r) = rest.strip_prefix("super::") {
            base.pop();
            rest = r;
        }
        collect_tree(&base, rest, &mut out);
    }
    out
}

/// Reads `a::b::{c, d::e}` at the start of `rest` into full paths.
fn collect_tree(base: &[String], rest: &str, out: &mut Vec<Vec<String>>) {
    let mut path = base.to_vec();
    let mut s = rest;
    loop {
        let len = s.find(|c: char| !ident_char(c)).unwrap_or(s.len());
        if len == 0 {
            if let Some(inner) = s.strip_prefix('{') {
                let mut depth = 1;
                let mut end = 0;
                for (i, c) in inner.char_indices() {
                    match c {
                        '{' => depth += 1,
                        '}' => depth -= 1,
                        _ => {}
                    }
                    if depth == 0 {
                        end = i;
                        break;
                    }
                }
                let mut depth = 0;
                let mut item_start = 0;
                let body = &inner[..end];
                for (i, c) in body.char_indices().chain([(body.len(), ',')]) {
                    match c {
                        '{' => depth += 1,
                        '}' => depth -= 1,
                        ',' if depth == 0 => {
                            let item = body[item_start..i].trim();
                            if !item.is_empty() && item != "self" {
                                collect_tree(&path, item, out);
                            }
                            item_start = i + 1;
                        }
                        _ => {}
                    }
                }
            }
            out.push(path);
            return;
        }
        path.push(s[..len].to_owned());
        s = &s[len..];
        match s.strip_prefix("::") {
            Some(r) => s = r,
            None => {
                out.push(path);
                return;
            }
        }
    }
}

fn node_graph(files: &[SourceFile]) -> BTreeMap<String, BTreeSet<String>> {
    let mut graph: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for f in files {
        let from = node_of(&f.module);
        let edges = graph.entry(from.clone()).or_default();
        for target in imports(f) {
            let to = node_of(&target);
            if to != from && to != "crate" {
                edges.insert(to);
            }
        }
    }
    graph
}

fn find_cycle(graph: &BTreeMap<String, BTreeSet<String>>) -> Option<Vec<String>> {
    fn visit(
        n: &str,
        graph: &BTreeMap<String, BTreeSet<String>>,
        state: &mut BTreeMap<String, u8>,
        stack: &mut Vec<String>,
    ) -> Option<Vec<String>> {
        state.insert(n.to_owned(), 1);
        stack.push(n.to_owned());
        for m in graph.get(n).into_iter().flatten() {
            match state.get(m.as_str()).copied().unwrap_or(0) {
                1 => {
                    let at = stack.iter().position(|s| s == m).unwrap();
                    let mut cycle = stack[at..].to_vec();
                    cycle.push(m.clone());
                    return Some(cycle);
                }
                0 => {
                    if let Some(c) = visit(m, graph, state, stack) {
                        return Some(c);
                    }
                }
                _ => {}
            }
        }
        stack.pop();
        state.insert(n.to_owned(), 2);
        None
    }
    let mut state = BTreeMap::new();
    for n in graph.keys() {
        if state.get(n.as_str()).copied().unwrap_or(0) == 0 {
            let mut stack = Vec::new();
            if let Some(c) = visit(n, graph, &mut state, &mut stack) {
                return Some(c);
            }
        }
    }
    None
}

#[test]
fn store_imports_only_records_the_clock_and_itself() {
    let files = load();
    let mut bad = Vec::new();
    for f in files
        .iter()
        .filter(|f| f.module.first().is_some_and(|m| m == "store"))
    {
        for target in imports(f) {
            let ok = match target.first().map(String::as_str) {
                None => true,
                Some("store" | "clock") => true,
                Some(_) => target.get(1).is_some_and(|m| m == "model"),
            };
            if !ok {
                bad.push(format!("{} imports crate::{}", f.rel, target.join("::")));
            }
        }
    }
    assert!(
        bad.is_empty(),
        "store/ must depend only on records:\n{}",
        bad.join("\n")
    );
}

/// Where warp and JSON building are allowed.
fn is_edge(f: &SourceFile) -> bool {
    matches!(
        f.module.first().map(String::as_str),
        Some("api" | "ui" | "app" | "config" | "demo" | "admin")
    ) || f.module.is_empty()
}

#[test]
fn only_the_api_knows_warp_and_only_the_renderer_builds_event_json() {
    let files = load();
    let mut bad = Vec::new();
    for f in files.iter().filter(|f| !is_edge(f)) {
        if f.code.contains("warp::") || f.code.contains("use warp") {
            bad.push(format!("{} uses warp", f.rel));
        }
        // The runner is a client of the public API and the demo agent an agent: both speak wire
        // shapes (and the agents' protocols) and have no domain of the server's to keep JSON
        // out of.
        let wire_client = f
            .module
            .first()
            .is_some_and(|m| m == "runner" || m == "demo_agent");
        let renderer = f.rel == "events/render.rs";
        for needle in ["json!", "serde_json::Map", "Value::Object"] {
            if !renderer && !wire_client && f.code.contains(needle) {
                bad.push(format!("{} builds JSON ({needle})", f.rel));
            }
        }
    }
    assert!(
        bad.is_empty(),
        "wire shapes belong in api/ (and events in events/render.rs):\n{}",
        bad.join("\n")
    );
}

#[test]
fn the_runner_is_a_client_that_imports_nothing_of_the_server() {
    let files = load();
    let mut bad = Vec::new();
    // `client` is the small REST client the runner shares with the demo and the admin commands;
    // it imports nothing of the crate itself.
    for f in files.iter().filter(|f| {
        f.module
            .first()
            .is_some_and(|m| m == "runner" || m == "client")
    }) {
        let own = f.module.first().cloned().unwrap_or_default();
        for target in imports(f) {
            if target
                .first()
                .is_some_and(|m| *m != own && !(own == "runner" && m == "client"))
            {
                bad.push(format!("{} imports crate::{}", f.rel, target.join("::")));
            }
        }
    }
    assert!(
        bad.is_empty(),
        "runner/ talks to the server over its public API only:\n{}",
        bad.join("\n")
    );
}

#[test]
fn modules_form_no_cycle() {
    let graph = node_graph(&load());
    assert!(
        graph.contains_key("store"),
        "the reader found no store module: {graph:?}"
    );
    assert!(
        graph["api"].contains("sessions"),
        "the reader misses imports: {graph:?}"
    );
    if let Some(cycle) = find_cycle(&graph) {
        panic!("import cycle: {}", cycle.join(" → "));
    }
}

#[test]
fn the_checks_catch_what_they_are_for() {
    // A cycle, an upward import from the store and a nested use tree.
    let mut graph = BTreeMap::new();
    graph.insert("a".to_string(), BTreeSet::from(["b".to_string()]));
    graph.insert("b".to_string(), BTreeSet::from(["a".to_string()]));
    assert!(find_cycle(&graph).is_some());
    graph.insert("b".to_string(), BTreeSet::new());
    assert!(find_cycle(&graph).is_none());
    let f = SourceFile {
        module: vec!["store".into(), "engine".into()],
        rel: "store/engine.rs".into(),
        code: strip_comments(
            "use crate::sessions::{model::Session, SessionService};\n// crate::api\nuse super::codec;",
        ),
    };
    let found = imports(&f);
    assert!(found.contains(&vec!["sessions".into(), "model".into(), "Session".into()]));
    assert!(found.contains(&vec!["sessions".into(), "SessionService".into()]));
    assert!(found.contains(&vec!["store".into(), "codec".into()]));
    assert!(!found.iter().any(|p| p.first().is_some_and(|m| m == "api")));
    assert_eq!(
        node_of(&["sessions".into(), "model".into(), "X".into()]),
        "sessions::model"
    );
}
