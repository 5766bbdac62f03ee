//! A session's recording: its terminal output and its timeline read back together in time
//! order, a page at a time, so that a reader holds one page of each and never the whole
//! session (`GET /sessions/{id}/recording` streams what this hands out).
//!
//! The reader stops at the last output chunk and the last event stored when the recording was
//! asked for: a live session's recording is what it had printed by then.

use std::collections::VecDeque;

use super::*;

/// Most rows one store read takes.
const PAGE_ROWS: usize = 256;
/// About how many bytes of output one store read should bring in: the next read takes as many
/// chunks as fit when each is as large as the largest of the read before (at least one, at most
/// [`PAGE_ROWS`], and at most twice as many as the read before).
const PAGE_BYTES: usize = 2 * 1024 * 1024;
/// Chunks the first read of output takes, before their size is known.
const FIRST_OUTPUT_ROWS: usize = 16;

/// Where a recording starts: the session as it was when the recording was asked for.
#[derive(Debug, Clone)]
pub struct RecordingStart {
    pub session: Session,
    /// Time 0 of the recording: the first time the session was RUNNING, or its creation when
    /// it never ran.
    pub origin: Millis,
}

/// One entry of a recording, in time order.
#[derive(Debug, Clone, PartialEq)]
pub enum RecordingItem {
    Output(OutputChunk),
    Event(SessionEvent),
}

impl RecordingItem {
    pub fn at(&self) -> Millis {
        match self {
            Self::Output(c) => c.at,
            Self::Event(e) => e.at,
        }
    }
}

/// Reads a session's output and events page by page and merges them by time (an event before
/// the output of the same millisecond). Holds at most one page of each.
pub struct RecordingReader {
    store: Store,
    id: Uuid,
    last_output: u64,
    last_event: u64,
    output_after: u64,
    events_after: u64,
    output_rows: usize,
    output: VecDeque<OutputChunk>,
    events: VecDeque<SessionEvent>,
}

impl SessionService {
    /// Opens a session's recording (its org or admin, like its output): the session, and a
    /// reader of everything stored up to now.
    pub async fn recording(
        &self,
        p: &Principal,
        id: Uuid,
    ) -> DomainResult<(RecordingStart, RecordingReader)> {
        let p = p.clone();
        let (session, last_output, last_event) = self
            .store
            .read(move |r| {
                let s = load(r, &p, id, Access::Manage)?;
                Ok::<_, DomainError>((s, r.last_output_seq(id)?, r.last_event_seq(id)?))
            })
            .await?;
        let origin = session.started_running_at.unwrap_or(session.created_at);
        let reader = RecordingReader {
            store: self.store.clone(),
            id,
            last_output,
            last_event,
            output_after: 0,
            events_after: 0,
            output_rows: FIRST_OUTPUT_ROWS,
            output: VecDeque::new(),
            events: VecDeque::new(),
        };
        Ok((RecordingStart { session, origin }, reader))
    }
}

impl RecordingReader {
    fn output_done(&self) -> bool {
        self.output_after >= self.last_output
    }

    fn events_done(&self) -> bool {
        self.events_after >= self.last_event
    }

    /// The next entries in time order; empty once the recording is complete.
    pub async fn next_page(&mut self) -> DomainResult<Vec<RecordingItem>> {
        loop {
            self.refill().await?;
            let mut page = Vec::new();
            loop {
                let take_event = match (self.output.front(), self.events.front()) {
                    (None, None) => break,
                    (Some(c), Some(e)) => e.at <= c.at,
                    // One side has nothing in hand: go on only if it has nothing more to read.
                    (Some(_), None) if self.events_done() => false,
                    (None, Some(_)) if self.output_done() => true,
                    _ => break,
                };
                let item = if take_event {
                    self.events.pop_front().map(RecordingItem::Event)
                } else {
                    self.output.pop_front().map(RecordingItem::Output)
                };
                page.extend(item);
            }
            let finished = self.output.is_empty()
                && self.events.is_empty()
                && self.output_done()
                && self.events_done();
            if !page.is_empty() || finished {
                return Ok(page);
            }
        }
    }

    /// Reads the next page of whichever side has nothing in hand and more to read.
    async fn refill(&mut self) -> DomainResult<()> {
        let want_output = self.output.is_empty() && !self.output_done();
        let want_events = self.events.is_empty() && !self.events_done();
        if !want_output && !want_events {
            return Ok(());
        }
        let (id, output_after, events_after) = (self.id, self.output_after, self.events_after);
        let output_rows = usize::try_from(self.last_output - output_after)
            .unwrap_or(usize::MAX)
            .min(self.output_rows);
        let event_rows = usize::try_from(self.last_event - events_after)
            .unwrap_or(usize::MAX)
            .min(PAGE_ROWS);
        let (output, events) = self
            .store
            .read(move |r| {
                let output = if want_output {
                    r.output_after(id, output_after, output_rows)?
                } else {
                    Vec::new()
                };
                let events = if want_events {
                    r.events_after(id, events_after, event_rows)?
                } else {
                    Vec::new()
                };
                Ok::<_, DomainError>((output, events))
            })
            .await?;
        if want_output {
            match output.last() {
                Some(c) => self.output_after = c.seq,
                // Purged meanwhile: nothing more to read.
                None => self.output_after = self.last_output,
            }
            let largest = output.iter().map(|c| c.data.len()).max().unwrap_or(1);
            self.output_rows = (PAGE_BYTES / largest.max(1))
                .min(self.output_rows.saturating_mul(2))
                .clamp(1, PAGE_ROWS);
            let last = self.last_output;
            self.output
                .extend(output.into_iter().take_while(|c| c.seq <= last));
        }
        if want_events {
            match events.last() {
                Some(e) => self.events_after = e.seq,
                None => self.events_after = self.last_event,
            }
            let last = self.last_event;
            self.events
                .extend(events.into_iter().take_while(|e| e.seq <= last));
        }
        Ok(())
    }
}
