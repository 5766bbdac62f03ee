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
    /// `N` bytes of cryptographically strong randomness, for secrets.
    fn secret_bytes(&self) -> [u8; 32];
}

pub struct RandomIds;

impl IdSource for RandomIds {
    fn uuid(&self) -> uuid::Uuid {
        uuid::Uuid::new_v4()
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

/// RFC 3339 UTC with milliseconds, as the contract writes every timestamp.
pub fn format_ms(ms: Millis) -> String {
    to_datetime(ms).to_rfc3339_opts(SecondsFormat::Millis, true)
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
