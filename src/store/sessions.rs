//! Storage of sessions: records and their indexes (org listing, active counts, queue, runner
//! load), events, output and approvals.

use redb::{ReadableTable, ReadableTableMetadata};
use uuid::Uuid;

use super::codec::{decode, encode};
use super::engine::{StoreResult, Tables, WriteCtx, last_seq, output_at_or_before, seq_range};
use super::tables::*;
use crate::clock::Millis;
use crate::sessions::model::{Approval, OutputChunk, Session, SessionEvent, SessionState};

/// What the domain reads of sessions, in a read snapshot or inside a write job.
pub trait SessionReads {
    fn get_session(&self, id: Uuid) -> StoreResult<Option<Session>>;

    /// An org's sessions, newest first.
    fn org_sessions(&self, org_id: &str) -> StoreResult<Vec<Session>>;

    fn org_active_sessions(&self, org_id: &str) -> StoreResult<u64>;

    fn events_after(
        &self,
        session: Uuid,
        after: u64,
        limit: usize,
    ) -> StoreResult<Vec<SessionEvent>>;

    /// The last `n` events, oldest first.
    fn recent_events(&self, session: Uuid, n: usize) -> StoreResult<Vec<SessionEvent>>;

    fn last_event_seq(&self, session: Uuid) -> StoreResult<u64>;

    fn output_after(
        &self,
        session: Uuid,
        after: u64,
        limit: usize,
    ) -> StoreResult<Vec<OutputChunk>>;

    fn last_output_seq(&self, session: Uuid) -> StoreResult<u64>;

    /// The session's newest chunk.
    fn last_output(&self, session: Uuid) -> StoreResult<Option<OutputChunk>>;

    /// The newest chunk that starts at or before byte `offset` of the session's output: the one
    /// holding that byte when it is stored. A few reads whatever the session's length.
    fn output_at(&self, session: Uuid, offset: u64) -> StoreResult<Option<OutputChunk>>;

    /// Every approval of a session, in the order they were requested.
    fn approvals(&self, session: Uuid) -> StoreResult<Vec<Approval>>;

    /// The session's approvals still pending, in the order they were requested. Reads only
    /// those, however many the session has asked.
    fn pending_approvals(&self, session: Uuid) -> StoreResult<Vec<Approval>>;

    fn get_approval(&self, session: Uuid, approval: Uuid) -> StoreResult<Option<Approval>>;

    /// Sessions waiting for a runner, oldest first.
    fn queued_sessions(&self, limit: usize) -> StoreResult<Vec<Uuid>>;

    /// Every session (for whole-fleet summaries).
    fn all_sessions(&self) -> StoreResult<Vec<Session>>;

    /// The sessions not yet ended, counted (`/metrics`): reads the queue and the sessions held
    /// by runners, never the finished ones.
    fn session_census(&self) -> StoreResult<SessionCensus>;
}

/// Sessions not in a terminal state, as `SessionReads::session_census` counts them.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct SessionCensus {
    /// Count per state, for the states that have any.
    pub by_state: Vec<(SessionState, u64)>,
    /// QUEUED without a runner.
    pub waiting: u64,
    /// Creation time of the oldest of those.
    pub oldest_waiting_since: Option<Millis>,
    pub pending_approvals: u64,
}

/// What a write job may change of sessions. Every write keeps the indexes in step.
pub trait SessionWrites: SessionReads {
    /// How many non-terminal sessions `org_id` has (`Reads::org_active_sessions`, through the
    /// batch's open table).
    fn active_sessions_of(&mut self, org_id: &str) -> StoreResult<u64>;

    /// Tells the batch that the current job creates session `session`: it has no events yet,
    /// so its first one needs no look-up, and until the job ends a copy of every event appended
    /// for it is kept. The job builds the new session's view from them (`followed_events`)
    /// instead of reading them back.
    fn begin_session_events(&mut self, session: Uuid);

    /// The events appended for the new session since `begin_session_events`, oldest first.
    fn followed_events(&mut self) -> Vec<SessionEvent>;

    /// Writes a session and keeps its indexes (org listing, active count) in step.
    fn put_session(&mut self, session: &Session) -> StoreResult<()>;

    /// Removes a session with its events, output and approvals (its timers are left to the
    /// sweep, which drops timers of sessions that are gone).
    fn delete_session(&mut self, session: &Session) -> StoreResult<()>;

    /// Deletes up to `budget` of a finished session's output chunks and events, oldest first,
    /// and the session itself once none is left: a purge in steps that each cost a bounded
    /// write, so a session with a million chunks never holds the writer for long. Returns the
    /// rows deleted and whether the session is gone.
    fn purge_session_step(
        &mut self,
        session: &Session,
        budget: usize,
    ) -> StoreResult<(usize, bool)>;

    /// Appends an event with the next sequence number.
    fn append_event(
        &mut self,
        session: Uuid,
        kind: &str,
        summary: String,
        at: Millis,
        data_json: Option<String>,
    ) -> StoreResult<SessionEvent>;

    /// Appends an output chunk; its `seq` must be the next one (the caller read it).
    fn put_output(&mut self, session: Uuid, chunk: &OutputChunk) -> StoreResult<()>;

    /// Writes an approval and keeps the session's pending ones in step.
    fn put_approval(&mut self, approval: &Approval) -> StoreResult<()>;

    /// The `seq` of the session's next approval (1, 2, …), counted in the store.
    fn next_approval_seq(&mut self, session: Uuid) -> StoreResult<u64>;
}

impl<T: Tables> SessionReads for T {
    fn get_session(&self, id: Uuid) -> StoreResult<Option<Session>> {
        let t = self.table(SESSIONS)?;
        let v = t.get(id.as_u128())?;
        v.map(|v| decode(v.value())).transpose()
    }

    fn org_sessions(&self, org_id: &str) -> StoreResult<Vec<Session>> {
        let index = self.table(SESSIONS_BY_ORG)?;
        let sessions = self.table(SESSIONS)?;
        let mut out = Vec::new();
        for entry in index
            .range((org_id, 0u64, 0u128)..=(org_id, u64::MAX, u128::MAX))?
            .rev()
        {
            let (key, _) = entry?;
            let (_, _, id) = key.value();
            if let Some(v) = sessions.get(id)? {
                out.push(decode(v.value())?);
            }
        }
        Ok(out)
    }

    fn org_active_sessions(&self, org_id: &str) -> StoreResult<u64> {
        Ok(self
            .table(ORG_ACTIVE_SESSIONS)?
            .get(org_id)?
            .map(|v| v.value())
            .unwrap_or(0))
    }

    fn events_after(
        &self,
        session: Uuid,
        after: u64,
        limit: usize,
    ) -> StoreResult<Vec<SessionEvent>> {
        seq_range(&self.table(SESSION_EVENTS)?, session, after, limit)
    }

    fn recent_events(&self, session: Uuid, n: usize) -> StoreResult<Vec<SessionEvent>> {
        let t = self.table(SESSION_EVENTS)?;
        let id = session.as_u128();
        let mut out = Vec::with_capacity(n);
        for entry in t.range((id, 0u64)..=(id, u64::MAX))?.rev().take(n) {
            out.push(decode(entry?.1.value())?);
        }
        out.reverse();
        Ok(out)
    }

    fn last_event_seq(&self, session: Uuid) -> StoreResult<u64> {
        last_seq(&self.table(SESSION_EVENTS)?, session)
    }

    fn output_after(
        &self,
        session: Uuid,
        after: u64,
        limit: usize,
    ) -> StoreResult<Vec<OutputChunk>> {
        seq_range(&self.table(SESSION_OUTPUT)?, session, after, limit)
    }

    fn last_output_seq(&self, session: Uuid) -> StoreResult<u64> {
        last_seq(&self.table(SESSION_OUTPUT)?, session)
    }

    fn last_output(&self, session: Uuid) -> StoreResult<Option<OutputChunk>> {
        output_at_or_before(&self.table(SESSION_OUTPUT)?, session, u64::MAX)
    }

    fn output_at(&self, session: Uuid, offset: u64) -> StoreResult<Option<OutputChunk>> {
        // Offsets grow with seq, so a binary search over the seqs finds the chunk in O(log n)
        // reads; walking back from the newest made a runner's stale offset cost the writer
        // thread the whole output. Seqs may have gaps: each probe takes the nearest chunk at or
        // before its seq.
        let t = self.table(SESSION_OUTPUT)?;
        let Some(last) = output_at_or_before::<OutputChunk>(&t, session, u64::MAX)? else {
            return Ok(None);
        };
        if last.offset <= offset {
            return Ok(Some(last));
        }
        // `below`: the newest chunk known to start at or before `offset` (seq `lo`, 0 for none);
        // the chunk at seq `hi` starts after it.
        let (mut lo, mut hi, mut below) = (0u64, last.seq, None);
        while hi - lo > 1 {
            let mid = lo + (hi - lo) / 2;
            match output_at_or_before::<OutputChunk>(&t, session, mid)? {
                Some(c) if c.seq > lo && c.offset <= offset => {
                    lo = c.seq;
                    below = Some(c);
                }
                Some(c) if c.seq > lo => hi = c.seq,
                // No chunk between `lo` and `mid`.
                _ => lo = mid,
            }
        }
        Ok(below)
    }

    fn approvals(&self, session: Uuid) -> StoreResult<Vec<Approval>> {
        let t = self.table(APPROVALS)?;
        let id = session.as_u128();
        let mut out: Vec<Approval> = Vec::new();
        for entry in t.range((id, 0u128)..=(id, u128::MAX))? {
            out.push(decode(entry?.1.value())?);
        }
        out.sort_by_key(|a| a.seq);
        Ok(out)
    }

    fn pending_approvals(&self, session: Uuid) -> StoreResult<Vec<Approval>> {
        let pending = self.table(PENDING_APPROVALS)?;
        let approvals = self.table(APPROVALS)?;
        let id = session.as_u128();
        let mut out: Vec<Approval> = Vec::new();
        for entry in pending.range((id, 0u128)..=(id, u128::MAX))? {
            let key = entry?.0.value();
            if let Some(v) = approvals.get(key)? {
                out.push(decode(v.value())?);
            }
        }
        out.sort_by_key(|a| a.seq);
        Ok(out)
    }

    fn get_approval(&self, session: Uuid, approval: Uuid) -> StoreResult<Option<Approval>> {
        let t = self.table(APPROVALS)?;
        let v = t.get((session.as_u128(), approval.as_u128()))?;
        v.map(|v| decode(v.value())).transpose()
    }

    fn queued_sessions(&self, limit: usize) -> StoreResult<Vec<Uuid>> {
        let t = self.table(SESSION_QUEUE)?;
        let mut out = Vec::new();
        for entry in t.iter()?.take(limit) {
            out.push(Uuid::from_u128(entry?.0.value().1));
        }
        Ok(out)
    }

    fn session_census(&self) -> StoreResult<SessionCensus> {
        let queue = self.table(SESSION_QUEUE)?;
        let waiting = queue.len()?;
        let oldest_waiting_since = queue.first()?.map(|(k, _)| k.value().0 as Millis);
        let mut counts: Vec<(SessionState, u64)> = Vec::new();
        let mut count =
            |state: SessionState, n: u64| match counts.iter_mut().find(|(s, _)| *s == state) {
                Some((_, c)) => *c += n,
                None => counts.push((state, n)),
            };
        if waiting > 0 {
            count(SessionState::Queued, waiting);
        }
        let held = self.table(SESSIONS_BY_RUNNER)?;
        let sessions = self.table(SESSIONS)?;
        let pending = self.table(PENDING_APPROVALS)?;
        let mut pending_approvals = 0;
        for entry in held.iter()? {
            let (_, session) = entry?.0.value();
            let Some(v) = sessions.get(session)? else {
                continue;
            };
            let s: Session = decode(v.value())?;
            if s.state.is_terminal() {
                continue;
            }
            count(s.state, 1);
            for entry in pending.range((session, 0u128)..=(session, u128::MAX))? {
                entry?;
                pending_approvals += 1;
            }
        }
        counts.sort_by_key(|(s, _)| s.as_str());
        Ok(SessionCensus {
            by_state: counts,
            waiting,
            oldest_waiting_since,
            pending_approvals,
        })
    }

    fn all_sessions(&self) -> StoreResult<Vec<Session>> {
        let t = self.table(SESSIONS)?;
        let mut out = Vec::new();
        for entry in t.iter()? {
            out.push(decode(entry?.1.value())?);
        }
        Ok(out)
    }
}

impl SessionWrites for WriteCtx<'_> {
    fn active_sessions_of(&mut self, org_id: &str) -> StoreResult<u64> {
        Ok(self
            .hot_org_active()?
            .get(org_id)?
            .map(|v| v.value())
            .unwrap_or(0))
    }

    fn begin_session_events(&mut self, session: Uuid) {
        self.event_seqs.insert(session.as_u128(), 0);
        self.followed = Some((session, Vec::new()));
    }

    fn followed_events(&mut self) -> Vec<SessionEvent> {
        self.followed.take().map(|(_, e)| e).unwrap_or_default()
    }

    fn put_session(&mut self, session: &Session) -> StoreResult<()> {
        let bytes = encode(session)?;
        self.writes += 1;
        // One lookup for read-old and write-new: this is the hottest write path.
        let old: Option<Session> = {
            let previous = self
                .hot_sessions()?
                .insert(session.id.as_u128(), bytes.as_slice())?;
            previous.map(|v| decode(v.value())).transpose()?
        };
        let was_active = old.as_ref().is_some_and(|s| !s.state.is_terminal());
        let is_active = !session.state.is_terminal();
        if old.is_none() {
            self.hot_sessions_by_org()?.insert(
                (
                    session.org_id.as_str(),
                    session.created_at.max(0) as u64,
                    session.id.as_u128(),
                ),
                (),
            )?;
        }
        if was_active != is_active {
            self.adjust_active(&session.org_id, is_active)?;
        }
        let created = session.created_at.max(0) as u64;
        let id = session.id.as_u128();
        let was_queued = old.as_ref().is_some_and(Session::is_unassigned_queued);
        if was_queued != session.is_unassigned_queued() {
            let queue = self.hot_queue()?;
            if was_queued {
                queue.remove((created, id))?;
            } else {
                queue.insert((created, id), ())?;
                self.queued = true;
            }
        }
        let old_runner = old.as_ref().and_then(Session::occupies_runner);
        let new_runner = session.occupies_runner();
        if old_runner != new_runner {
            if let Some(r) = old_runner {
                self.hot_sessions_by_runner()?.remove((r.as_u128(), id))?;
                self.adjust_runner_load(r, false)?;
            }
            if let Some(r) = new_runner {
                self.hot_sessions_by_runner()?
                    .insert((r.as_u128(), id), ())?;
                self.adjust_runner_load(r, true)?;
            }
        }
        Ok(())
    }

    fn delete_session(&mut self, session: &Session) -> StoreResult<()> {
        let id = session.id.as_u128();
        self.writes += 1;
        self.hot_sessions()?.remove(id)?;
        self.hot_sessions_by_org()?.remove((
            session.org_id.as_str(),
            session.created_at.max(0) as u64,
            id,
        ))?;
        if !session.state.is_terminal() {
            self.adjust_active(&session.org_id, false)?;
        }
        if session.is_unassigned_queued() {
            self.hot_queue()?
                .remove((session.created_at.max(0) as u64, id))?;
        }
        if let Some(r) = session.occupies_runner() {
            self.open_mut(SESSIONS_BY_RUNNER)?
                .remove((r.as_u128(), id))?;
            self.adjust_runner_load(r, false)?;
        }
        self.hot_events()?
            .retain_in((id, 0u64)..=(id, u64::MAX), |_, _| false)?;
        self.event_seqs.remove(&id);
        self.open_mut(SESSION_OUTPUT)?
            .retain_in((id, 0u64)..=(id, u64::MAX), |_, _| false)?;
        self.open_mut(APPROVALS)?
            .retain_in((id, 0u128)..=(id, u128::MAX), |_, _| false)?;
        self.open_mut(PENDING_APPROVALS)?
            .retain_in((id, 0u128)..=(id, u128::MAX), |_, _| false)?;
        self.open_mut(APPROVAL_COUNTS)?.remove(id)?;
        // A finished session's only timer left is its purge timer, which the sweep clears;
        // scanning the whole timer table here would stall every writer.
        Ok(())
    }

    fn purge_session_step(
        &mut self,
        session: &Session,
        budget: usize,
    ) -> StoreResult<(usize, bool)> {
        let id = session.id.as_u128();
        let (from_output, more) = remove_first(&mut self.open_mut(SESSION_OUTPUT)?, id, budget)?;
        if more {
            return Ok((from_output, false));
        }
        let (from_events, more) = remove_first(self.hot_events()?, id, budget - from_output)?;
        let deleted = from_output + from_events;
        if more {
            return Ok((deleted, false));
        }
        // What is left (the record, its indexes, approvals) is small.
        self.delete_session(session)?;
        Ok((deleted, true))
    }

    fn append_event(
        &mut self,
        session: Uuid,
        kind: &str,
        summary: String,
        at: Millis,
        data_json: Option<String>,
    ) -> StoreResult<SessionEvent> {
        self.writes += 1;
        let id = session.as_u128();
        let last = match self.event_seqs.get(&id) {
            Some(&seq) => seq,
            None => last_seq(self.hot_events()?, session)?,
        };
        let event = SessionEvent {
            seq: last + 1,
            kind: kind.to_owned(),
            summary,
            at,
            data_json,
        };
        let bytes = encode(&event)?;
        self.hot_events()?
            .insert((id, event.seq), bytes.as_slice())?;
        self.event_seqs.insert(id, event.seq);
        if let Some((followed, events)) = &mut self.followed
            && *followed == session
        {
            events.push(event.clone());
        }
        Ok(event)
    }

    fn put_output(&mut self, session: Uuid, chunk: &OutputChunk) -> StoreResult<()> {
        let bytes = encode(chunk)?;
        self.open_mut(SESSION_OUTPUT)?
            .insert((session.as_u128(), chunk.seq), bytes.as_slice())?;
        Ok(())
    }

    fn put_approval(&mut self, approval: &Approval) -> StoreResult<()> {
        let bytes = encode(approval)?;
        let key = (approval.session_id.as_u128(), approval.id.as_u128());
        self.open_mut(APPROVALS)?.insert(key, bytes.as_slice())?;
        let mut pending = self.open_mut(PENDING_APPROVALS)?;
        match approval.resolution {
            None => pending.insert(key, ())?,
            Some(_) => pending.remove(key)?,
        };
        Ok(())
    }

    fn next_approval_seq(&mut self, session: Uuid) -> StoreResult<u64> {
        let mut counts = self.open_mut(APPROVAL_COUNTS)?;
        let next = counts.get(session.as_u128())?.map_or(0, |c| c.value()) + 1;
        counts.insert(session.as_u128(), next)?;
        Ok(next)
    }
}

impl WriteCtx<'_> {
    pub(super) fn adjust_runner_load(&mut self, runner: Uuid, up: bool) -> StoreResult<()> {
        self.writes += 1;
        let t = self.hot_runner_active()?;
        let key = runner.as_u128();
        let n = t.get(key)?.map(|v| v.value()).unwrap_or(0);
        let n = if up { n + 1 } else { n.saturating_sub(1) };
        if n == 0 {
            t.remove(key)?;
        } else {
            t.insert(key, n)?;
        }
        if let Some(loads) = &mut self.loads {
            if n == 0 {
                loads.remove(&runner);
            } else {
                loads.insert(runner, n);
            }
        }
        Ok(())
    }

    fn adjust_active(&mut self, org_id: &str, up: bool) -> StoreResult<()> {
        self.writes += 1;
        let t = self.hot_org_active()?;
        let n = t.get(org_id)?.map(|v| v.value()).unwrap_or(0);
        let n = if up { n + 1 } else { n.saturating_sub(1) };
        if n == 0 {
            t.remove(org_id)?;
        } else {
            t.insert(org_id, n)?;
        }
        Ok(())
    }
}

/// Removes up to `budget` of a session's rows from a `(session, seq)` table, oldest first;
/// returns how many, and whether any is left.
fn remove_first(
    t: &mut redb::Table<'_, (u128, u64), &'static [u8]>,
    id: u128,
    budget: usize,
) -> StoreResult<(usize, bool)> {
    let keys = first_keys(&*t, (id, 0u64)..=(id, u64::MAX), budget + 1)?;
    let more = keys.len() > budget;
    let mut removed = 0;
    for key in keys.into_iter().take(budget) {
        t.remove(key)?;
        removed += 1;
    }
    Ok((removed, more))
}

/// The first `n` keys of a `(session, seq)` range.
fn first_keys(
    t: &impl ReadableTable<(u128, u64), &'static [u8]>,
    range: std::ops::RangeInclusive<(u128, u64)>,
    n: usize,
) -> StoreResult<Vec<(u128, u64)>> {
    let mut keys = Vec::with_capacity(n.min(4096));
    for entry in t.range(range)?.take(n) {
        keys.push(entry?.0.value());
    }
    Ok(keys)
}
