//! Who receives what on the dashboard stream: per-connection subscriptions,
//! routing of bus events to them, and the per-token connection limit. The WebSocket framing
//! lives in `api::ws`.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};

use uuid::Uuid;

use crate::auth::{Principal, TokenKind};
use crate::events::model::{BusEvent, DomainEvent, FLEET_EVENTS, SESSION_EVENTS};

/// Connections one token may hold at once.
pub const MAX_CONNECTIONS_PER_TOKEN: usize = 10;

/// What one connection asked for.
#[derive(Debug, Default)]
pub struct Subscriptions {
    /// Session → highest output seq already sent (replay and live share it: no duplicate).
    pub sessions: HashMap<Uuid, u64>,
    pub orgs: HashSet<String>,
}

/// How a bus event reaches one connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Route {
    /// Not for this connection.
    Drop,
    /// A session event (state, approval) for a subscriber of the session or its org.
    Session,
    /// Terminal output of a subscribed session, not yet sent.
    Terminal,
    /// A fleet or pipeline event for a subscriber of the org.
    Fleet,
}

impl Subscriptions {
    fn org_subscribed(&self, org: Option<&str>) -> bool {
        org.is_some_and(|o| self.orgs.contains(o))
    }

    /// Decides whether `event` goes to this connection. Org scope was checked when the
    /// subscription was made, so only subscribed sessions and orgs can match.
    pub fn route(&self, event: &BusEvent, who: &Principal) -> Route {
        let org = event.org_id.as_deref();
        if let DomainEvent::TerminalOutput(chunk) = &event.event {
            let seq = chunk.seq;
            return match event.session_id.and_then(|s| self.sessions.get(&s)) {
                Some(&sent) if seq > sent => Route::Terminal,
                _ => Route::Drop,
            };
        }
        if SESSION_EVENTS.contains(&event.name()) {
            let subscribed = event
                .session_id
                .is_some_and(|s| self.sessions.contains_key(&s));
            return if subscribed || self.org_subscribed(org) {
                Route::Session
            } else {
                Route::Drop
            };
        }
        if FLEET_EVENTS.contains(&event.name()) {
            // Shared runners and pipeline events belong to no org: admins see them on any
            // org subscription.
            let visible = match org {
                Some(o) => self.orgs.contains(o),
                None => who.kind == TokenKind::Admin && !self.orgs.is_empty(),
            };
            return if visible { Route::Fleet } else { Route::Drop };
        }
        Route::Drop
    }
}

/// Counts open dashboard connections per token.
#[derive(Clone, Default)]
pub struct ConnectionLimiter {
    open: Arc<Mutex<HashMap<Uuid, usize>>>,
}

/// Holds one connection slot until dropped.
pub struct Slot {
    limiter: ConnectionLimiter,
    token: Uuid,
}

impl ConnectionLimiter {
    /// Takes a slot for `token`, or `None` when it already holds the maximum.
    pub fn acquire(&self, token: Uuid) -> Option<Slot> {
        let mut open = self.open.lock().unwrap_or_else(|p| p.into_inner());
        let n = open.entry(token).or_default();
        if *n >= MAX_CONNECTIONS_PER_TOKEN {
            return None;
        }
        *n += 1;
        Some(Slot {
            limiter: self.clone(),
            token,
        })
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut open = self.limiter.open.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(n) = open.get_mut(&self.token) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                open.remove(&self.token);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn admin() -> Principal {
        Principal::anonymous_admin()
    }

    fn event(name: &'static str, org: Option<&str>, session: Option<Uuid>, seq: u64) -> BusEvent {
        use crate::events::model::{RunnerEventKind, SessionEventData};
        use crate::sessions::model::{OutputChunk, OutputStream, SessionState};
        let event = match name {
            "terminal_output" => DomainEvent::TerminalOutput(std::sync::Arc::new(OutputChunk {
                seq,
                stream: OutputStream::Stdout,
                data: "x".into(),
                at: 0,
                offset: 0,
            })),
            "state_changed" => DomainEvent::Session(SessionEventData::StateChanged {
                from: SessionState::Queued,
                to: SessionState::Running,
            }),
            "runner_offline" => DomainEvent::Runner {
                kind: RunnerEventKind::Offline,
                runner_id: Uuid::from_u128(9),
                hostname: "h".into(),
            },
            other => panic!("no sample event {other}"),
        };
        BusEvent::new(0, org.map(str::to_owned), session, event)
    }

    #[test]
    fn terminal_output_goes_once_to_session_subscribers() {
        let s = Uuid::from_u128(7);
        let mut subs = Subscriptions::default();
        subs.sessions.insert(s, 3);
        assert_eq!(
            subs.route(&event("terminal_output", Some("a"), Some(s), 3), &admin()),
            Route::Drop
        );
        assert_eq!(
            subs.route(&event("terminal_output", Some("a"), Some(s), 4), &admin()),
            Route::Terminal
        );
        assert_eq!(
            subs.route(
                &event("terminal_output", Some("a"), Some(Uuid::from_u128(8)), 9),
                &admin()
            ),
            Route::Drop
        );
        subs.orgs.insert("a".into());
        assert_eq!(
            subs.route(
                &event("terminal_output", Some("a"), Some(Uuid::from_u128(8)), 9),
                &admin()
            ),
            Route::Drop,
            "an org subscription does not stream every terminal"
        );
    }

    #[test]
    fn org_subscriptions_see_session_and_fleet_events_of_their_org() {
        let mut subs = Subscriptions::default();
        subs.orgs.insert("a".into());
        assert_eq!(
            subs.route(
                &event("state_changed", Some("a"), Some(Uuid::nil()), 0),
                &admin()
            ),
            Route::Session
        );
        assert_eq!(
            subs.route(
                &event("state_changed", Some("b"), Some(Uuid::nil()), 0),
                &admin()
            ),
            Route::Drop
        );
        assert_eq!(
            subs.route(&event("runner_offline", Some("a"), None, 0), &admin()),
            Route::Fleet
        );
        assert_eq!(
            subs.route(&event("runner_offline", None, None, 0), &admin()),
            Route::Fleet
        );
        let mut org = admin();
        org.kind = TokenKind::Org;
        assert_eq!(
            subs.route(&event("runner_offline", None, None, 0), &org),
            Route::Drop
        );
    }

    #[test]
    fn the_limiter_frees_slots_when_they_drop() {
        let limiter = ConnectionLimiter::default();
        let token = Uuid::from_u128(1);
        let slots: Vec<Slot> = (0..MAX_CONNECTIONS_PER_TOKEN)
            .filter_map(|_| limiter.acquire(token))
            .collect();
        assert_eq!(slots.len(), MAX_CONNECTIONS_PER_TOKEN);
        assert!(limiter.acquire(token).is_none());
        assert!(limiter.acquire(Uuid::from_u128(2)).is_some());
        drop(slots);
        assert!(limiter.acquire(token).is_some());
    }
}
