//! `/api/v1/runners/...` and `/api/v1/fleet`.

use std::collections::{BTreeMap, HashMap};

use serde_json::Value;
use warp::filters::BoxedFilter;
use warp::http::StatusCode;
use warp::{Filter, path};

use super::RawJson;
use super::envelope::{ApiResult, Success};
use super::input::{Body, Query, Reader, path_id};
use super::wire::runners::{Deregistered, Fleet, HeartbeatAck, Registered, Runner};
use super::wire::{self, Page};
use super::{AppState, json_body, principal, query, with_state};
use crate::auth::{Caller, Principal};
use crate::clock::parse_rfc3339;
use crate::error::{DomainError, Entity};
use crate::metrics::HeartbeatVia;
use crate::runners::model::{Capabilities, Load, RunnerStatus};
use crate::runners::{Heartbeat, Registration, RunnerFilter, RunnerService};
use crate::sessions::model::Provider;

pub fn routes(s: &AppState) -> BoxedFilter<(ApiResult,)> {
    let p = || principal(s).and(with_state(s));
    let register = path!("runners" / "register")
        .and(warp::post())
        .and(p())
        .and(json_body())
        .then(register);
    // The edge answers a beat before the route tree (`super::EdgeRoutes`); this route
    // answers the forms of the path it leaves to the tree (a trailing slash, an escaped id)
    // the same way, and other methods 405 as every route does.
    let heartbeat = path!("runners" / String / "heartbeat")
        .and(warp::post())
        .and(p())
        .and(super::raw_json_body())
        .map(|id: String, p: Caller, st: AppState, body: RawJson| heartbeat(&id, &p, &st, &body));
    let channel = path!("runners" / String / "channel")
        .and(warp::get())
        .and(p())
        .and(warp::header::headers_cloned())
        .and(warp::ext::optional::<hyper::upgrade::OnUpgrade>())
        .and_then(super::runner_channel::open);
    let list = path!("runners")
        .and(warp::get())
        .and(p())
        .and(query())
        .then(list);
    let one = path!("runners" / String)
        .and(warp::get())
        .and(p())
        .then(get);
    let deregister = path!("runners" / String)
        .and(warp::delete())
        .and(p())
        .and(query())
        .then(deregister);
    let drain = path!("runners" / String / "drain")
        .and(warp::post())
        .and(p())
        .and(json_body())
        .then(|id, p, st, _body: Body| set_draining(id, p, st, true));
    let undrain = path!("runners" / String / "undrain")
        .and(warp::post())
        .and(p())
        .and(json_body())
        .then(|id, p, st, _body: Body| set_draining(id, p, st, false));
    let fleet = path!("fleet").and(warp::get()).and(p()).then(fleet);
    register
        .or(heartbeat)
        .unify()
        .or(channel)
        .unify()
        .or(list)
        .unify()
        .or(one)
        .unify()
        .or(deregister)
        .unify()
        .or(drain)
        .unify()
        .or(undrain)
        .unify()
        .or(fleet)
        .unify()
        .boxed()
}

pub fn runner_id(raw: &str) -> Result<uuid::Uuid, super::error::ApiError> {
    path_id(raw, DomainError::NotFound(Entity::Runner))
}

/// Provider ids from a JSON list, each one known.
fn providers(r: &mut Reader, list: Option<Vec<String>>, path: &str) -> Vec<Provider> {
    let mut out = Vec::new();
    for (i, name) in list.unwrap_or_default().iter().enumerate() {
        match Provider::parse(name) {
            Some(p) => out.push(p),
            None => r.invalid_provider(&format!("{path}[{i}]"), name),
        }
    }
    out
}

fn parse_registration(body: &Body) -> Result<Registration, DomainError> {
    let mut r = Reader::new();
    let root = r.root(body);
    let hostname = r.string(&root, "hostname", true).map(str::to_owned);
    if let Some(h) = &hostname {
        r.check(|issues| RunnerService::check_registration(h, issues));
    }
    let caps = r.object(&root, "capabilities", true);
    let (mut provider_list, mut max, mut features) = (Vec::new(), None, Vec::new());
    if let Some(caps) = &caps {
        let names = r.string_list(caps, "providers");
        if names.as_ref().is_none_or(Vec::is_empty) && r.any(caps, "providers").is_none() {
            r.issue("capabilities.providers", "is required");
        } else if names.as_ref().is_some_and(Vec::is_empty) {
            r.issue("capabilities.providers", "must name at least one provider");
        }
        provider_list = providers(&mut r, names, "capabilities.providers");
        max = r
            .number_in(caps, "maxConcurrentSessions", 1.0, 1000.0)
            .map(|n| n as u64);
        if r.any(caps, "maxConcurrentSessions")
            .and_then(Value::as_f64)
            .is_some_and(|n| n.fract() != 0.0)
        {
            r.issue(
                "capabilities.maxConcurrentSessions",
                "must be a whole number",
            );
        }
        features = r.string_list(caps, "features").unwrap_or_default();
    }
    let metadata = match r.any(&root, "metadata") {
        Some(Value::Object(m)) => Some(Value::Object(m.clone())),
        Some(_) => {
            r.issue("metadata", "must be an object");
            None
        }
        None => None,
    };
    r.finish()?;
    let hostname = hostname.ok_or_else(|| DomainError::invalid("hostname", "is required"))?;
    Ok(Registration {
        hostname,
        capabilities: Capabilities {
            providers: provider_list,
            max_concurrent_sessions: max.unwrap_or(0),
            features,
        },
        max_concurrent_sessions: max,
        metadata,
    })
}

async fn register(p: Caller, st: AppState, body: Body) -> ApiResult {
    let reg = parse_registration(&body)?;
    let (view, token, created) = st.runners.register(&p, reg).await?;
    let status = if created {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    Success::typed(
        status,
        &Registered::new(&view, &token, st.runners.heartbeat_interval_ms()),
    )
}

/// The RunnerHeartbeat body (REST) or `heartbeat` frame (channel).
pub fn parse_heartbeat(body: &Body) -> Result<Heartbeat, DomainError> {
    let mut r = Reader::new();
    let root = r.root(body);
    let runner = r.uuid(&root, "runnerId", true);
    let ts = r.string(&root, "timestamp", true).and_then(|t| {
        parse_rfc3339(t).or_else(|| {
            r.issue("timestamp", "must be an RFC 3339 timestamp");
            None
        })
    });
    let mut active = Vec::new();
    match r.any(&root, "activeSessions") {
        None => {}
        Some(Value::Array(items)) => {
            for (i, item) in items.iter().enumerate() {
                match item.as_str().and_then(|s| uuid::Uuid::parse_str(s).ok()) {
                    Some(id) => active.push(id),
                    None => r.issue(format!("activeSessions[{i}]"), "must be a session id"),
                }
            }
        }
        Some(_) => r.issue("activeSessions", "must be an array of session ids"),
    }
    let mut load = Load::default();
    if let Some(l) = r.object(&root, "load", true) {
        for (key, slot) in [
            ("cpuPercent", &mut load.cpu_percent),
            ("memoryPercent", &mut load.memory_percent),
            ("diskPercent", &mut load.disk_percent),
        ] {
            if let Some(v) = r.number_in(&l, key, 0.0, 100.0) {
                *slot = v;
            }
        }
    }
    let versions: BTreeMap<String, String> =
        r.string_map(&root, "runtimeVersions").unwrap_or_default();
    for name in versions.keys() {
        if Provider::parse(name).is_none() {
            r.invalid_provider(&format!("runtimeVersions.{name}"), name);
        }
    }
    let build_id = r.string(&root, "buildId", false).map(str::to_owned);
    r.finish()?;
    match (runner, ts) {
        (Some(runner_id), Some(timestamp)) => Ok(Heartbeat {
            runner_id,
            timestamp,
            active_sessions: active,
            load,
            runtime_versions: versions,
            build_id,
        }),
        _ => Err(DomainError::invalid("", "request is incomplete")),
    }
}

/// A heartbeat (REST or channel frame) and its reply, with the build the runner should run,
/// handed to `render` (the reply borrows the pipeline snapshot the answer came from).
fn heartbeat_ack<R>(
    st: &AppState,
    p: &Principal,
    id: uuid::Uuid,
    hb: Heartbeat,
    via: HeartbeatVia,
    render: impl FnOnce(&HeartbeatAck<'_>) -> R,
) -> Result<R, DomainError> {
    let state = st.pipeline.current();
    let (reply, desired) = st.pipeline.heartbeat(p, id, hb, &state)?;
    st.metrics.heartbeat(via);
    Ok(render(&HeartbeatAck::new(&reply, desired.map(Into::into))))
}

/// The heartbeat reply as the runner channel sends it (it adds the frame's type and id).
pub fn beat(
    st: &AppState,
    p: &Principal,
    id: uuid::Uuid,
    hb: Heartbeat,
) -> Result<Value, DomainError> {
    heartbeat_ack(st, p, id, hb, HeartbeatVia::Channel, |ack| {
        wire::to_value(ack)
    })
}

/// `POST /runners/{id}/heartbeat` (memory only: answered without waiting for anything).
pub(super) fn heartbeat(id: &str, p: &Caller, st: &AppState, body: &RawJson) -> ApiResult {
    let id = runner_id(id)?;
    let hb = match body.bytes().and_then(read_usual_heartbeat) {
        Some(hb) => hb,
        None => parse_heartbeat(&body.parse()?)?,
    };
    heartbeat_ack(st, p, id, hb, HeartbeatVia::Rest, |ack| Success::json(ack))?
}

/// A RunnerHeartbeat as runners send it, read straight from the body's bytes (no `Value`
/// tree: a busy fleet sends thousands a second). `None` for anything else — a missing or null
/// field, a wrong type, a value out of range, a duplicate key, a body that is not an object —
/// which [`parse_heartbeat`] then reads from the parsed JSON and names each issue of; whatever
/// this accepts, that reads the same (a test holds them to it).
fn read_usual_heartbeat(bytes: &[u8]) -> Option<Heartbeat> {
    use std::borrow::Cow;

    #[derive(serde::Deserialize)]
    #[serde(rename_all = "camelCase")]
    struct Beat<'a> {
        #[serde(borrow)]
        runner_id: Cow<'a, str>,
        #[serde(borrow)]
        timestamp: Cow<'a, str>,
        #[serde(default, borrow)]
        active_sessions: Vec<Cow<'a, str>>,
        #[serde(deserialize_with = "load_object")]
        load: [Option<f64>; 3],
        #[serde(default)]
        runtime_versions: BTreeMap<String, String>,
        #[serde(default)]
        build_id: Option<String>,
    }

    /// `load` only as an object (a struct would also take an array).
    fn load_object<'de, D: serde::Deserializer<'de>>(d: D) -> Result<[Option<f64>; 3], D::Error> {
        struct Visit;
        impl<'de> serde::de::Visitor<'de> for Visit {
            type Value = [Option<f64>; 3];
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("an object")
            }
            fn visit_map<M: serde::de::MapAccess<'de>>(
                self,
                mut m: M,
            ) -> Result<Self::Value, M::Error> {
                let mut load = [None; 3];
                while let Some(key) = m.next_key::<Cow<'de, str>>()? {
                    let slot = match key.as_ref() {
                        "cpuPercent" => 0,
                        "memoryPercent" => 1,
                        "diskPercent" => 2,
                        _ => {
                            m.next_value::<serde::de::IgnoredAny>()?;
                            continue;
                        }
                    };
                    if load[slot].is_some() {
                        return Err(serde::de::Error::custom("duplicate key"));
                    }
                    load[slot] = Some(m.next_value::<Option<f64>>()?.unwrap_or(f64::NAN));
                }
                Ok(load)
            }
        }
        d.deserialize_map(Visit)
    }

    // A struct would also be read from an array.
    if bytes.iter().find(|b| !b.is_ascii_whitespace()) != Some(&b'{') {
        return None;
    }
    let beat: Beat<'_> = serde_json::from_slice(bytes).ok()?;
    let mut load = Load::default();
    for (value, slot) in beat.load.into_iter().zip([
        &mut load.cpu_percent,
        &mut load.memory_percent,
        &mut load.disk_percent,
    ]) {
        match value {
            None => {}
            Some(v) if (0.0..=100.0).contains(&v) => *slot = v,
            // Out of range, or null (the other reading says which).
            Some(_) => return None,
        }
    }
    if beat
        .runtime_versions
        .keys()
        .any(|name| Provider::parse(name).is_none())
    {
        return None;
    }
    let active_sessions = beat
        .active_sessions
        .iter()
        .map(|s| uuid::Uuid::parse_str(s).ok())
        .collect::<Option<Vec<_>>>()?;
    Some(Heartbeat {
        runner_id: uuid::Uuid::parse_str(&beat.runner_id).ok()?,
        timestamp: parse_rfc3339(&beat.timestamp)?,
        active_sessions,
        load,
        runtime_versions: beat.runtime_versions,
        build_id: beat.build_id,
    })
}

async fn list(p: Caller, st: AppState, q: HashMap<String, String>) -> ApiResult {
    let q = Query { params: &q };
    let mut r = Reader::new();
    let page = q.page(&mut r);
    let status = q.parsed(
        &mut r,
        "status",
        RunnerStatus::parse,
        "must be online, offline or draining",
    );
    let provider = q.provider(&mut r, "providerId");
    r.finish()?;
    let page = st
        .runners
        .list(&p, RunnerFilter { status, provider }, page)
        .await?;
    Success::json(&Page::of(&page, Runner::from))
}

async fn get(id: String, p: Caller, st: AppState) -> ApiResult {
    let view = st.runners.get(&p, runner_id(&id)?).await?;
    Success::json(&Runner::from(&view))
}

async fn set_draining(id: String, p: Caller, st: AppState, draining: bool) -> ApiResult {
    let view = st
        .runners
        .set_draining(&p, runner_id(&id)?, draining)
        .await?;
    Success::json(&Runner::from(&view))
}

async fn deregister(id: String, p: Caller, st: AppState, q: HashMap<String, String>) -> ApiResult {
    let force = match q.get("force").map(String::as_str) {
        None | Some("false") => false,
        Some("true") => true,
        Some(_) => return Err(DomainError::invalid("force", "must be true or false").into()),
    };
    let record = st.runners.deregister(&p, runner_id(&id)?, force).await?;
    Success::json(&Deregistered::from(&record))
}

async fn fleet(p: Caller, st: AppState) -> ApiResult {
    let s = st.runners.summary(&p).await?;
    Success::json(&Fleet::from(&s))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const RUNNER: &str = "0196a0b2-0000-7000-8000-000000000001";

    /// Each field of a heartbeat body as runners send it, or broken in one of the ways a
    /// client can break it (absent, null, wrong type, out of range, duplicated).
    fn field(name: &str, variant: usize) -> Option<String> {
        let value = match (name, variant) {
            ("runnerId", 0) => format!("\"{RUNNER}\""),
            ("runnerId", 1) => "\"not-a-uuid\"".into(),
            ("runnerId", 2) => "5".into(),
            ("timestamp", 0) => "\"2026-11-25T10:00:00.000Z\"".into(),
            ("timestamp", 1) => "\"yesterday\"".into(),
            ("timestamp", 2) => "\"2026-11-25T10:00:00\\u002e000Z\"".into(),
            ("activeSessions", 0) => "[]".into(),
            ("activeSessions", 1) => format!("[\"{RUNNER}\"]"),
            ("activeSessions", 2) => "[\"x\"]".into(),
            ("activeSessions", 3) => "\"x\"".into(),
            ("load", 0) => r#"{"cpuPercent":12.5,"memoryPercent":40,"diskPercent":70}"#.into(),
            ("load", 1) => "{}".into(),
            ("load", 2) => r#"{"cpuPercent":150}"#.into(),
            ("load", 3) => r#"{"cpuPercent":null,"diskPercent":1}"#.into(),
            ("load", 4) => "[1,2,3]".into(),
            ("load", 5) => r#"{"cpuPercent":"x"}"#.into(),
            ("load", 6) => r#"{"cpuPercent":1,"cpuPercent":2,"other":[1]}"#.into(),
            ("runtimeVersions", 0) => r#"{"codex":"0.9.1","claude_code":"2.1.0"}"#.into(),
            ("runtimeVersions", 1) => "{}".into(),
            ("runtimeVersions", 2) => r#"{"nope":"1"}"#.into(),
            ("runtimeVersions", 3) => r#"{"codex":5}"#.into(),
            ("runtimeVersions", 4) => r#"{"codex":"1","codex":"2"}"#.into(),
            ("buildId", 0) => "\"build-1\"".into(),
            ("buildId", 1) => "7".into(),
            ("buildId", 2) => "\"b\\\"q\"".into(),
            (_, 9) => "null".into(),
            _ => return None,
        };
        Some(format!("\"{name}\":{value}"))
    }

    fn body(variants: &[usize; 6], extra: bool, duplicate_id: bool, array: bool) -> String {
        let names = [
            "runnerId",
            "timestamp",
            "activeSessions",
            "load",
            "runtimeVersions",
            "buildId",
        ];
        let mut fields: Vec<String> = names
            .iter()
            .zip(variants)
            .filter_map(|(name, v)| field(name, *v))
            .collect();
        if extra {
            fields.push(r#""extra":[1,{"a":null}]"#.into());
        }
        if duplicate_id {
            fields.push(r#""runnerId":"0196a0b2-0000-7000-8000-000000000002""#.into());
        }
        let object = format!("{{{}}}", fields.join(","));
        if array { format!("[{object}]") } else { object }
    }

    #[test]
    fn the_usual_body_is_read_without_a_value_tree() {
        let bytes = body(&[0; 6], false, false, false);
        let fast = read_usual_heartbeat(bytes.as_bytes()).expect("read directly");
        let parsed = parse_heartbeat(&Body(Some(serde_json::from_str(&bytes).unwrap())));
        assert_eq!(Ok(fast), parsed.map_err(|e| e.to_string()));
    }

    proptest! {
        /// Whatever the direct reading accepts, the reading of the parsed JSON (which names
        /// every issue) reads the same; what it refuses goes there.
        #[test]
        fn the_direct_reading_agrees_with_the_parsed_one(
            variants in prop::array::uniform6(prop_oneof![0usize..7, Just(9usize), Just(20usize)]),
            extra in any::<bool>(),
            duplicate_id in any::<bool>(),
            array in any::<bool>(),
            padding in prop::sample::select(vec!["", " ", "\n\t "]),
        ) {
            let bytes = format!("{padding}{}", body(&variants, extra, duplicate_id, array));
            let parsed: Value = serde_json::from_str(&bytes).unwrap();
            let slow = parse_heartbeat(&Body(Some(parsed))).map_err(|e| e.to_string());
            if let Some(fast) = read_usual_heartbeat(bytes.as_bytes()) {
                prop_assert_eq!(Ok(fast), slow, "{}", bytes);
            }
        }
    }
}
