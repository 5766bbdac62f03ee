//! The JSON shapes of the REST responses, one file per area: `#[derive(Serialize)]` structs
//! built from the domain records, handed to the envelope builder as they are.
//!
//! Field order is wire order. These responses were once built as `serde_json::Map`s, which
//! write their keys sorted (byte order: `stageStartedAt` before `stages`), so every struct here
//! declares its fields sorted by their JSON names; the tests below check it for each type.
//! A key that is left out when empty carries `skip_serializing_if`; an `Option` without it is
//! written as `null`. Free-form JSON a client stored (metadata, approval context) stays a
//! `serde_json::Value`, whose object keys are sorted the same way.
//!
//! A `serde_json::Map` writes its keys sorted only while serde_json's `preserve_order` feature
//! is off, and features are shared by the whole build: a dependency that turns it on makes maps
//! keep insertion order. So sorting is not left to the map: stored JSON is sorted when it is
//! read back (`stored_json`), and frames built as `Value`s are written with `text`.

pub mod asciicast;
pub mod audit;
pub mod frames;
pub mod paging;
pub mod pipeline;
pub mod policies;
pub mod runners;
pub mod sessions;
pub mod spend;
pub mod tokens;
pub mod webhooks;

use serde::Serialize;
use serde_json::Value;

pub use paging::{Items, Page, SeqPage};

/// JSON a client once sent and the store keeps as text, back as a value (`None` when absent
/// or not JSON).
pub fn stored_json(text: Option<&str>) -> Option<Value> {
    text.and_then(|t| serde_json::from_str(t).ok())
        .map(|mut v: Value| {
            v.sort_all_objects();
            v
        })
}

/// A frame built as a `Value` (keys added in any order) as JSON text, every object's keys
/// sorted.
pub fn text(mut frame: Value) -> String {
    frame.sort_all_objects();
    frame.to_string()
}

/// A wire shape as a `Value`, for the runner channel, which adds keys to its frames.
pub fn to_value(data: &impl Serialize) -> Value {
    // Cannot fail: every wire shape is a struct or a map with string keys.
    serde_json::to_value(data).unwrap_or_default()
}

#[cfg(test)]
pub(crate) mod check {
    use serde::Serialize;

    /// The bytes serde writes for `data` are those of the sorted `Map` the shape replaced:
    /// every object's keys, at every depth, in sorted order.
    #[track_caller]
    pub fn sorted_keys(data: &impl Serialize) {
        let direct = serde_json::to_string(data).unwrap();
        let through_map = super::text(serde_json::to_value(data).unwrap());
        assert_eq!(direct, through_map, "keys out of order");
    }
}
