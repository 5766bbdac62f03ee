//! The one place values are turned into bytes and back. Each record is written as one version
//! byte followed by bincode (2.0.1, standard config) of the record's current shape. A byte that
//! names an unknown version, or bytes that do not decode, are an error — never a panic.
//! Changing a record's shape means bumping its version and adding a migration.

use serde::Serialize;
use serde::de::DeserializeOwned;

use super::engine::StoreError;
use crate::audit::model::AuditEntry;
use crate::auth::model::TokenRecord;
use crate::pipeline::model::{
    BuildRecord, ChannelRecord, OrgRuntimeConfig, Rollout, VersionRecord,
};
use crate::runners::model::{Liveness, OutboxEntry, RunnerRecord};
use crate::sessions::model::{Approval, OutputChunk, Session, SessionEvent};
use crate::webhooks::model::{Delivery, Webhook};

/// A type stored as a value, with the version of its current encoding.
pub trait Record: Serialize + DeserializeOwned {
    const NAME: &'static str;
    const VERSION: u8;
}

/// Version 2: `usage.cost_usd` (schema version 6).
impl Record for Session {
    const NAME: &'static str = "session";
    const VERSION: u8 = 2;
}
impl Record for SessionEvent {
    const NAME: &'static str = "session event";
    const VERSION: u8 = 1;
}
impl Record for OutputChunk {
    const NAME: &'static str = "output chunk";
    const VERSION: u8 = 1;
}
/// Version 2: the resolution's `scope` (schema version 6).
impl Record for Approval {
    const NAME: &'static str = "approval";
    const VERSION: u8 = 2;
}
impl Record for TokenRecord {
    const NAME: &'static str = "token";
    const VERSION: u8 = 1;
}

impl Record for RunnerRecord {
    const NAME: &'static str = "runner";
    const VERSION: u8 = 1;
}
impl Record for Liveness {
    const NAME: &'static str = "runner liveness";
    const VERSION: u8 = 1;
}
/// Version 2: the `scope` of `ApprovalResolved` (schema version 6).
impl Record for OutboxEntry {
    const NAME: &'static str = "runner command";
    const VERSION: u8 = 2;
}

impl Record for AuditEntry {
    const NAME: &'static str = "audit entry";
    const VERSION: u8 = 1;
}

impl Record for Webhook {
    const NAME: &'static str = "webhook";
    const VERSION: u8 = 1;
}
impl Record for Delivery {
    const NAME: &'static str = "webhook delivery";
    const VERSION: u8 = 1;
}

impl Record for VersionRecord {
    const NAME: &'static str = "provider version";
    const VERSION: u8 = 1;
}
impl Record for BuildRecord {
    const NAME: &'static str = "build";
    const VERSION: u8 = 1;
}
impl Record for Rollout {
    const NAME: &'static str = "rollout";
    const VERSION: u8 = 1;
}
impl Record for ChannelRecord {
    const NAME: &'static str = "channel";
    const VERSION: u8 = 1;
}
impl Record for OrgRuntimeConfig {
    const NAME: &'static str = "org runtime config";
    const VERSION: u8 = 1;
}

fn config() -> bincode::config::Configuration {
    bincode::config::standard()
}

pub fn encode<T: Record>(value: &T) -> Result<Vec<u8>, StoreError> {
    // Most records fit: growing a small vector byte by byte showed in profiles.
    let mut out = Vec::with_capacity(256);
    out.push(T::VERSION);
    bincode::serde::encode_into_std_write(value, &mut out, config())
        .map_err(|e| StoreError::Encode(format!("{}: {e}", T::NAME)))?;
    Ok(out)
}

pub fn decode<T: Record>(bytes: &[u8]) -> Result<T, StoreError> {
    decode_as(T::NAME, T::VERSION, bytes)
}

/// Decodes a value written as `version` of the record `name` into `T`, which need not be a
/// current record: migrations read the shapes of older versions with it.
pub fn decode_as<T: DeserializeOwned>(
    name: &str,
    version: u8,
    bytes: &[u8],
) -> Result<T, StoreError> {
    let corrupt = |what: String| StoreError::Corrupt(format!("{name}: {what}"));
    let (&found, body) = bytes
        .split_first()
        .ok_or_else(|| corrupt("empty value".into()))?;
    if found != version {
        return Err(corrupt(format!("unknown version {found}")));
    }
    let (value, used) =
        bincode::serde::decode_from_slice(body, config()).map_err(|e| corrupt(e.to_string()))?;
    if used != body.len() {
        return Err(corrupt("trailing bytes".into()));
    }
    Ok(value)
}

/// Encodes a value as `version` of a record: what an older Village wrote (migration tests).
#[cfg(test)]
pub fn encode_as<T: Serialize>(version: u8, value: &T) -> Result<Vec<u8>, StoreError> {
    let mut out = vec![version];
    bincode::serde::encode_into_std_write(value, &mut out, config())
        .map_err(|e| StoreError::Encode(e.to_string()))?;
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sessions::model::OutputStream;

    fn chunk() -> OutputChunk {
        OutputChunk {
            seq: 3,
            stream: OutputStream::Stderr,
            data: "hi\n".into(),
            at: 1_700_000_000_123,
            offset: 10,
        }
    }

    /// The bytes on disk must not change by accident: a change here needs a version bump and a
    /// migration.
    #[test]
    fn golden_bytes() {
        let bytes = encode(&chunk()).unwrap_or_default();
        assert_eq!(
            bytes,
            vec![
                1, 3, 1, 3, b'h', b'i', b'\n', 253, 246, 208, 202, 159, 23, 3, 0, 0, 10
            ]
        );
        assert_eq!(decode::<OutputChunk>(&bytes).ok(), Some(chunk()));
    }

    #[test]
    fn bad_bytes_are_errors_not_panics() {
        assert!(matches!(
            decode::<OutputChunk>(&[]),
            Err(StoreError::Corrupt(_))
        ));
        assert!(matches!(
            decode::<OutputChunk>(&[9, 1, 2]),
            Err(StoreError::Corrupt(_))
        ));
        assert!(matches!(
            decode::<OutputChunk>(&[1, 255, 255]),
            Err(StoreError::Corrupt(_))
        ));
        let mut long = encode(&chunk()).unwrap_or_default();
        long.push(0);
        assert!(matches!(
            decode::<OutputChunk>(&long),
            Err(StoreError::Corrupt(_))
        ));
        let mut short = encode(&chunk()).unwrap_or_default();
        short.truncate(5);
        assert!(matches!(
            decode::<OutputChunk>(&short),
            Err(StoreError::Corrupt(_))
        ));
    }
}
