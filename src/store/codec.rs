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
use crate::policy::model::ApprovalPolicy;
use crate::runners::model::{Liveness, OutboxEntry, RunnerRecord};
use crate::sessions::model::{Approval, ApprovalLink, OutputChunk, Session, SessionEvent};
use crate::spend::model::{Budget, BuildOutcomes, UsageTotals};
use crate::webhooks::model::{Delivery, OrgNotifications, Webhook};

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

impl Record for ApprovalPolicy {
    const NAME: &'static str = "approval policy";
    const VERSION: u8 = 1;
}
impl Record for OrgNotifications {
    const NAME: &'static str = "notification targets";
    const VERSION: u8 = 1;
}
impl Record for ApprovalLink {
    const NAME: &'static str = "approval link";
    const VERSION: u8 = 1;
}

impl Record for Budget {
    const NAME: &'static str = "budget";
    const VERSION: u8 = 1;
}
impl Record for UsageTotals {
    const NAME: &'static str = "usage totals";
    const VERSION: u8 = 1;
}
impl Record for BuildOutcomes {
    const NAME: &'static str = "build outcomes";
    const VERSION: u8 = 1;
}

/// No record comes near this; a damaged length prefix claiming more fails before anything is
/// allocated for it (without a limit, a flipped byte could ask for terabytes and abort the
/// process: found by the fuzz tests below).
const MAX_RECORD_BYTES: usize = 16 * 1024 * 1024;

fn config() -> impl bincode::config::Config {
    bincode::config::standard().with_limit::<MAX_RECORD_BYTES>()
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

    mod fuzz {
        //! Whatever bytes a damaged file holds, decoding answers `Corrupt`: it never panics and
        //! never allocates what a length prefix claims before the bytes are there.
        use proptest::prelude::*;

        use super::super::*;
        use crate::audit::model::AuditEntry;
        use crate::auth::model::TokenRecord;
        use crate::pipeline::model::{BuildRecord, Rollout};
        use crate::policy::model::ApprovalPolicy;
        use crate::runners::model::{OutboxEntry, RunnerCommand, RunnerRecord};
        use crate::sessions::model::{Approval, ApprovalLink, OutputChunk, Session, SessionEvent};
        use crate::spend::model::{Budget, BuildOutcomes, UsageTotals};
        use crate::webhooks::model::{Delivery, OrgNotifications, Webhook};

        /// Decodes `bytes` as every record; each answer is a value or `Corrupt`.
        fn decode_all(bytes: &[u8]) {
            macro_rules! each {
                ($($t:ty),*) => {$(
                    match decode::<$t>(bytes) {
                        Ok(_) | Err(StoreError::Corrupt(_)) => {}
                        Err(e) => panic!("{}: {e}", <$t as Record>::NAME),
                    }
                )*};
            }
            each!(
                Session,
                Approval,
                OutputChunk,
                SessionEvent,
                RunnerRecord,
                OutboxEntry,
                TokenRecord,
                AuditEntry,
                Webhook,
                Delivery,
                BuildRecord,
                Rollout,
                ApprovalPolicy,
                OrgNotifications,
                ApprovalLink,
                Budget,
                UsageTotals,
                BuildOutcomes
            );
        }

        fn outbox_entry() -> OutboxEntry {
            OutboxEntry {
                seq: 7,
                message_id: uuid::Uuid::from_u128(1),
                runner_id: uuid::Uuid::from_u128(2),
                command: RunnerCommand::TerminalInput {
                    session_id: uuid::Uuid::from_u128(3),
                    data: "ls -la\n".into(),
                },
                created_at: 1_700_000_000_000,
            }
        }

        proptest! {
            #![proptest_config(ProptestConfig::with_cases(2_000))]

            #[test]
            fn arbitrary_bytes_decode_to_a_value_or_corrupt(
                version in 0u8..4,
                body in proptest::collection::vec(any::<u8>(), 0..300),
            ) {
                let mut bytes = vec![version];
                bytes.extend_from_slice(&body);
                decode_all(&bytes);
            }

            #[test]
            fn damaged_records_decode_to_a_value_or_corrupt(
                at in any::<prop::sample::Index>(),
                byte in any::<u8>(),
                keep in any::<prop::sample::Index>(),
            ) {
                let audit = AuditEntry::new(
                    uuid::Uuid::from_u128(5), "admin", "ops", "session.create", "s-1",
                    Some("acme"), 1_700_000_000_000,
                );
                for good in [
                    encode(&outbox_entry()).unwrap_or_default(),
                    encode(&audit).unwrap_or_default(),
                    encode(&super::chunk()).unwrap_or_default(),
                ] {
                    let mut flipped = good.clone();
                    let i = at.index(flipped.len());
                    flipped[i] = byte;
                    decode_all(&flipped);
                    decode_all(&good[..keep.index(good.len() + 1)]);
                }
            }
        }

        /// The regression the fuzz tests found: one byte of a record changed into a varint
        /// marker (251..=255) made a length prefix claim up to 2^64 bytes, and decoding aborted
        /// the process trying to allocate them. Every such change, at every position.
        #[test]
        fn every_byte_turned_into_a_length_marker_decodes_to_a_value_or_corrupt() {
            let audit = AuditEntry::new(
                uuid::Uuid::from_u128(5),
                "admin",
                "ops",
                "session.create",
                "s-1",
                Some("acme"),
                1_700_000_000_000,
            );
            for good in [
                encode(&outbox_entry()).unwrap_or_default(),
                encode(&audit).unwrap_or_default(),
            ] {
                for i in 1..good.len() {
                    for marker in 251..=255u8 {
                        let mut bad = good.clone();
                        bad[i] = marker;
                        decode_all(&bad);
                    }
                }
            }
        }

        /// A length prefix claiming far more than is there (u64::MAX, then 2^40) fails at once.
        #[test]
        fn a_huge_length_prefix_is_corrupt() {
            for claim in [u64::MAX, 1 << 40] {
                let mut bytes = vec![OutputChunk::VERSION, 3, 1];
                bytes.push(255);
                bytes.extend_from_slice(&claim.to_le_bytes());
                bytes.extend_from_slice(b"hi");
                assert!(matches!(
                    decode::<OutputChunk>(&bytes),
                    Err(StoreError::Corrupt(_))
                ));
            }
        }
    }
}
