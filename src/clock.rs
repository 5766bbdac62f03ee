//! Time and randomness. Every rule that depends on "now" or on a fresh id asks these
//! sources, so tests can move time forward instead of sleeping.

use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};

use chrono::{DateTime, SecondsFormat, TimeZone, Utc};
use tokio::sync::Notify;

/// Milliseconds since the Unix epoch, UTC. The one time representation stored on disk.
pub type Millis = i64;

pub trait Clock: Send + Sync + 'static {
    fn now_ms(&self) -> Millis;
    /// Resolves when the clock jumps (manual clocks); the real clock never jumps.
    fn jumped(&self) -> Option<&Notify> {
        None
    }
}

/// The wall clock.
pub struct SystemClock;

impl Clock for SystemClock {
    fn now_ms(&self) -> Millis {
        Utc::now().timestamp_millis()
    }
}

/// A clock that stands still until a test advances it.
pub struct ManualClock {
    now: AtomicI64,
    notify: Notify,
}

impl ManualClock {
    pub fn new(start: Millis) -> Arc<Self> {
        Arc::new(Self {
            now: AtomicI64::new(start),
            notify: Notify::new(),
        })
    }

    pub fn advance_ms(&self, ms: i64) {
        self.now.fetch_add(ms, Ordering::SeqCst);
        self.notify.notify_waiters();
    }
}

impl Clock for ManualClock {
    fn now_ms(&self) -> Millis {
        self.now.load(Ordering::SeqCst)
    }
    fn jumped(&self) -> Option<&Notify> {
        Some(&self.notify)
    }
}

pub type SharedClock = Arc<dyn Clock>;

/// Source of ids and secrets.
pub trait IdSource: Send + Sync + 'static {
    fn uuid(&self) -> uuid::Uuid;

    /// An id for a record that is written once and then mostly appended to (sessions,
    /// approvals): still a version-4 UUID on the wire, but its first 48 bits are the creation
    /// time in milliseconds, like UUIDv7, so that new records land at the end of the storage
    /// B-trees instead of on random pages. The remaining 74 bits stay random.
    fn ordered_uuid(&self, now: Millis) -> uuid::Uuid {
        time_prefixed(self.uuid(), now)
    }
    /// `N` bytes of cryptographically strong randomness, for secrets.
    fn secret_bytes(&self) -> [u8; 32];
}

/// Puts `now` (ms) in the top 48 bits of a random version-4 UUID, keeping its version and
/// variant bits.
pub fn time_prefixed(random: uuid::Uuid, now: Millis) -> uuid::Uuid {
    let bits = random.as_u128() & ((1u128 << 80) - 1);
    let ms = (now.max(0) as u128) & ((1u128 << 48) - 1);
    uuid::Uuid::from_u128((ms << 80) | bits)
}

pub struct RandomIds;

/// A random version-4 UUID from a thread-local generator (seeded by the OS): no system call
/// per id, unlike asking the OS each time.
pub fn random_uuid() -> uuid::Uuid {
    uuid::Builder::from_random_bytes(rand::random()).into_uuid()
}

impl IdSource for RandomIds {
    fn uuid(&self) -> uuid::Uuid {
        random_uuid()
    }
    fn secret_bytes(&self) -> [u8; 32] {
        let mut buf = [0u8; 32];
        // The OS random source failing is not something a server can continue through.
        if let Err(err) = getrandom::fill(&mut buf) {
            panic!("operating system random source failed: {err}");
        }
        buf
    }
}

pub type SharedIds = Arc<dyn IdSource>;

/// A configured duration as milliseconds (saturating far beyond any sane value).
pub fn ms(d: std::time::Duration) -> Millis {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX / 4)
}

/// RFC 3339 UTC with milliseconds, as the API writes every timestamp.
pub fn format_ms(ms: Millis) -> String {
    to_datetime(ms).to_rfc3339_opts(SecondsFormat::Millis, true)
}

/// [`format_ms`] as it is written into a formatter (a response being serialised), without a
/// `String` of its own.
#[derive(Debug, Clone, Copy)]
pub struct Rfc3339Ms(pub Millis);

impl std::fmt::Display for Rfc3339Ms {
    /// Digits written by hand: every API answer carries one of these, and a format string
    /// would be parsed anew each time.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        use chrono::{Datelike, Timelike};
        let t = to_datetime(self.0);
        let year = match u32::try_from(t.year()) {
            Ok(year) if year <= 9999 => year,
            _ => return f.write_str(&format_ms(self.0)),
        };
        let mut out = *b"0000-00-00T00:00:00.000Z";
        let mut put = |at: usize, width: usize, mut value: u32| {
            for i in (at..at + width).rev() {
                out[i] = b'0' + (value % 10) as u8;
                value /= 10;
            }
        };
        put(0, 4, year);
        put(5, 2, t.month());
        put(8, 2, t.day());
        put(11, 2, t.hour());
        put(14, 2, t.minute());
        put(17, 2, t.second());
        put(20, 3, t.timestamp_subsec_millis().min(999));
        f.write_str(std::str::from_utf8(&out).map_err(|_| std::fmt::Error)?)
    }
}

impl serde::Serialize for Rfc3339Ms {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

pub fn to_datetime(ms: Millis) -> DateTime<Utc> {
    Utc.timestamp_millis_opt(ms)
        .single()
        .unwrap_or(DateTime::<Utc>::UNIX_EPOCH)
}

/// Parses an RFC 3339 timestamp into milliseconds.
pub fn parse_rfc3339(s: &str) -> Option<Millis> {
    DateTime::parse_from_rfc3339(s)
        .ok()
        .map(|d| d.with_timezone(&Utc).timestamp_millis())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ordered_ids_are_version_4_and_sort_by_time() {
        let a = RandomIds.ordered_uuid(1_795_000_000_000);
        let b = RandomIds.ordered_uuid(1_795_000_000_001);
        assert_eq!(a.get_version_num(), 4);
        assert_eq!(a.get_variant(), uuid::Variant::RFC4122);
        assert!(a < b);
        assert_ne!(RandomIds.ordered_uuid(5), RandomIds.ordered_uuid(5));
    }

    #[test]
    fn written_timestamps_are_the_formatted_ones() {
        for ms in [
            0,
            1,
            999,
            1_700_000_000_000,
            1_795_000_000_123,
            253_402_300_799_999,
            253_402_300_800_000,
            -1,
        ] {
            assert_eq!(Rfc3339Ms(ms).to_string(), format_ms(ms), "{ms}");
        }
    }

    #[test]
    fn timestamps_are_rfc3339_with_millis() {
        assert_eq!(format_ms(1_795_000_000_000), "2026-11-18T11:06:40.000Z");
        assert_eq!(
            parse_rfc3339("2026-11-18T11:06:40.000Z"),
            Some(1_795_000_000_000)
        );
        assert_eq!(parse_rfc3339("yesterday"), None);
    }
}
