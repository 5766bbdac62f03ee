//! Reading request bodies and query strings into typed values, collecting every bad field at
//! once (`VALIDATION_ERROR` lists them all).

use std::collections::{BTreeMap, HashMap};

use serde_json::{Map, Value};

use super::error::ApiError;
use crate::error::{DomainError, Issue};
use crate::paging::PageRequest;

/// A parsed request body; `None` when the request had no body.
#[derive(Debug, Clone)]
pub struct Body(pub Option<Value>);

/// A JSON object being read, and where it sits in the body.
#[derive(Clone)]
pub struct Obj<'v> {
    map: Option<&'v Map<String, Value>>,
    prefix: String,
}

fn join(prefix: &str, key: &str) -> String {
    if prefix.is_empty() {
        key.to_owned()
    } else {
        format!("{prefix}.{key}")
    }
}

static EMPTY: std::sync::LazyLock<Map<String, Value>> = std::sync::LazyLock::new(Map::new);

/// Collects issues while fields are read.
#[derive(Default)]
pub struct Reader {
    issues: Vec<Issue>,
    invalid_provider: Option<String>,
}

impl Reader {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn issue(&mut self, path: impl Into<String>, message: impl Into<String>) {
        self.issues.push(Issue::new(path, message));
    }

    /// Runs one of the domain's checks, which adds what it finds to this request's issues.
    pub fn check(&mut self, check: impl FnOnce(&mut Vec<Issue>)) {
        check(&mut self.issues);
    }

    /// The body as an object; a missing body reads as `{}`.
    pub fn root<'v>(&mut self, body: &'v Body) -> Obj<'v> {
        match &body.0 {
            None => Obj {
                map: Some(&EMPTY),
                prefix: String::new(),
            },
            Some(Value::Object(m)) => Obj {
                map: Some(m),
                prefix: String::new(),
            },
            Some(_) => {
                self.issue("", "body must be a JSON object");
                Obj {
                    map: None,
                    prefix: String::new(),
                }
            }
        }
    }

    fn field<'v>(&mut self, o: &Obj<'v>, key: &str) -> Option<&'v Value> {
        o.map?.get(key).filter(|v| !v.is_null())
    }

    fn path(&mut self, o: &Obj<'_>, key: &str) -> String {
        join(&o.prefix, key)
    }

    pub fn string<'v>(&mut self, o: &Obj<'v>, key: &str, required: bool) -> Option<&'v str> {
        match self.field(o, key) {
            Some(Value::String(s)) => Some(s.as_str()),
            Some(_) => {
                let p = self.path(o, key);
                self.issue(p, "must be a string");
                None
            }
            None => {
                if required && o.map.is_some() {
                    let p = self.path(o, key);
                    self.issue(p, "is required");
                }
                None
            }
        }
    }

    pub fn number(&mut self, o: &Obj<'_>, key: &str) -> Option<f64> {
        match self.field(o, key) {
            Some(Value::Number(n)) => n.as_f64(),
            Some(_) => {
                let p = self.path(o, key);
                self.issue(p, "must be a number");
                None
            }
            None => None,
        }
    }

    /// A finite number in `min..=max`.
    pub fn number_in(&mut self, o: &Obj<'_>, key: &str, min: f64, max: f64) -> Option<f64> {
        let n = self.number(o, key)?;
        if !(min..=max).contains(&n) {
            let p = self.path(o, key);
            self.issue(p, format!("must be between {min} and {max}"));
            return None;
        }
        Some(n)
    }

    /// A whole number ≥ 0.
    pub fn count(&mut self, o: &Obj<'_>, key: &str) -> Option<u64> {
        let n = self.number(o, key)?;
        if n < 0.0 || n.fract() != 0.0 || n > 9.0e15 {
            let p = self.path(o, key);
            self.issue(p, "must be a whole number ≥ 0");
            return None;
        }
        Some(n as u64)
    }

    pub fn boolean(&mut self, o: &Obj<'_>, key: &str) -> Option<bool> {
        match self.field(o, key) {
            Some(Value::Bool(b)) => Some(*b),
            Some(_) => {
                let p = self.path(o, key);
                self.issue(p, "must be true or false");
                None
            }
            None => None,
        }
    }

    pub fn object<'v>(&mut self, o: &Obj<'v>, key: &str, required: bool) -> Option<Obj<'v>> {
        match self.field(o, key) {
            Some(Value::Object(m)) => Some(Obj {
                map: Some(m),
                prefix: self.path(o, key),
            }),
            Some(_) => {
                let p = self.path(o, key);
                self.issue(p, "must be an object");
                None
            }
            None => {
                if required && o.map.is_some() {
                    let p = self.path(o, key);
                    self.issue(p, "is required");
                }
                None
            }
        }
    }

    /// An array of objects, each readable at its path (`rules[2]`).
    pub fn objects<'v>(&mut self, o: &Obj<'v>, key: &str) -> Option<Vec<Obj<'v>>> {
        match self.field(o, key) {
            Some(Value::Array(items)) => {
                let base = self.path(o, key);
                let mut out = Vec::with_capacity(items.len());
                for (i, item) in items.iter().enumerate() {
                    match item {
                        Value::Object(m) => out.push(Obj {
                            map: Some(m),
                            prefix: format!("{base}[{i}]"),
                        }),
                        _ => self.issue(format!("{base}[{i}]"), "must be an object"),
                    }
                }
                Some(out)
            }
            Some(_) => {
                let p = self.path(o, key);
                self.issue(p, "must be an array of objects");
                None
            }
            None => None,
        }
    }

    /// The path of `key` in `o`, for an issue about it.
    pub fn path_of(&self, o: &Obj<'_>, key: &str) -> String {
        join(&o.prefix, key)
    }

    /// A UUID in a string.
    pub fn uuid(&mut self, o: &Obj<'_>, key: &str, required: bool) -> Option<uuid::Uuid> {
        let raw = self.string(o, key, required)?;
        match uuid::Uuid::parse_str(raw) {
            Ok(id) => Some(id),
            Err(_) => {
                let p = self.path(o, key);
                self.issue(p, "must be a UUID");
                None
            }
        }
    }

    /// Any JSON value, kept as it is.
    pub fn any<'v>(&mut self, o: &Obj<'v>, key: &str) -> Option<&'v Value> {
        self.field(o, key)
    }

    pub fn string_list(&mut self, o: &Obj<'_>, key: &str) -> Option<Vec<String>> {
        match self.field(o, key) {
            Some(Value::Array(items)) => {
                let mut out = Vec::with_capacity(items.len());
                for (i, item) in items.iter().enumerate() {
                    match item {
                        Value::String(s) => out.push(s.clone()),
                        _ => {
                            let p = format!("{}[{i}]", self.path(o, key));
                            self.issue(p, "must be a string");
                        }
                    }
                }
                Some(out)
            }
            Some(_) => {
                let p = self.path(o, key);
                self.issue(p, "must be an array of strings");
                None
            }
            None => None,
        }
    }

    pub fn string_map(&mut self, o: &Obj<'_>, key: &str) -> Option<BTreeMap<String, String>> {
        match self.field(o, key) {
            Some(Value::Object(m)) => {
                let mut out = BTreeMap::new();
                for (k, v) in m {
                    match v {
                        Value::String(s) => {
                            out.insert(k.clone(), s.clone());
                        }
                        _ => {
                            let p = format!("{}.{k}", self.path(o, key));
                            self.issue(p, "must be a string");
                        }
                    }
                }
                Some(out)
            }
            Some(_) => {
                let p = self.path(o, key);
                self.issue(p, "must be an object of strings");
                None
            }
            None => None,
        }
    }

    /// Records an unknown provider; alone, it is answered as `INVALID_PROVIDER`.
    pub fn invalid_provider(&mut self, path: &str, value: &str) {
        self.invalid_provider = Some(value.to_owned());
        self.issue(
            path,
            format!(
                "unknown provider `{value}`; expected codex, claude_code, gemini_cli or omnara"
            ),
        );
    }

    pub fn finish(self) -> Result<(), DomainError> {
        if self.issues.is_empty() {
            return Ok(());
        }
        if self.issues.len() == 1
            && let Some(p) = self.invalid_provider
        {
            return Err(DomainError::InvalidProvider(p));
        }
        Err(DomainError::Validation(self.issues))
    }
}

/// Query parameters, with typed reads that record issues.
pub struct Query<'q> {
    pub params: &'q HashMap<String, String>,
}

impl Query<'_> {
    pub fn get(&self, key: &str) -> Option<&str> {
        self.params.get(key).map(String::as_str)
    }

    pub fn whole(&self, r: &mut Reader, key: &str, min: u64, max: u64, default: u64) -> u64 {
        match self.get(key) {
            None => default,
            Some(s) => match s.parse::<u64>() {
                Ok(n) if (min..=max).contains(&n) => n,
                _ => {
                    r.issue(key, format!("must be a whole number from {min} to {max}"));
                    default
                }
            },
        }
    }

    /// An optional value that `parse` must accept; one it refuses is an issue saying `message`.
    pub fn parsed<T>(
        &self,
        r: &mut Reader,
        key: &str,
        parse: impl Fn(&str) -> Option<T>,
        message: &str,
    ) -> Option<T> {
        let raw = self.get(key)?;
        let value = parse(raw);
        if value.is_none() {
            r.issue(key, message);
        }
        value
    }

    /// An optional provider id (`INVALID_PROVIDER` when it is the only problem).
    pub fn provider(&self, r: &mut Reader, key: &str) -> Option<crate::sessions::model::Provider> {
        let raw = self.get(key)?;
        let value = crate::sessions::model::Provider::parse(raw);
        if value.is_none() {
            r.invalid_provider(key, raw);
        }
        value
    }

    pub fn page(&self, r: &mut Reader) -> PageRequest {
        PageRequest {
            page: self.whole(r, "page", 1, u32::MAX as u64, 1),
            page_size: self.whole(r, "pageSize", 1, PageRequest::MAX_PAGE_SIZE, 20),
        }
    }
}

/// Parses a path id; a malformed one names nothing that exists.
pub fn path_id(raw: &str, not_found: DomainError) -> Result<uuid::Uuid, ApiError> {
    uuid::Uuid::parse_str(raw).map_err(|_| ApiError::from(not_found))
}

/// A path segment with its `%XX` escapes decoded (warp hands segments over as sent), or `None`
/// when the escapes are malformed or not UTF-8.
/// An org id from a path (`/orgs/{orgId}/…`).
pub fn org_path(raw: &str) -> Result<String, DomainError> {
    if crate::auth::is_org_slug(raw) {
        Ok(raw.to_owned())
    } else {
        Err(DomainError::invalid("orgId", "must be an org slug"))
    }
}

pub fn path_text(raw: &str) -> Option<String> {
    let bytes = raw.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = raw.get(i + 1..i + 3)?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

#[cfg(test)]
mod tests {
    use super::path_text;

    #[test]
    fn path_segments_are_percent_decoded() {
        assert_eq!(path_text("1.0%2Bx~1").as_deref(), Some("1.0+x~1"));
        assert_eq!(path_text("plain").as_deref(), Some("plain"));
        assert_eq!(path_text("bad%2"), None);
        assert_eq!(path_text("bad%zz"), None);
        assert_eq!(path_text("%ff"), None);
    }
}
