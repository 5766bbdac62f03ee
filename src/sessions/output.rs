//! A session's timeline and terminal: events and output read by sequence number, output
//! appended exactly once by offset, and keystrokes sent to the runner.

use super::*;

impl SessionService {
    pub async fn events(
        &self,
        p: &Principal,
        id: Uuid,
        after: u64,
        limit: u64,
    ) -> DomainResult<Vec<SessionEvent>> {
        let p = p.clone();
        self.store
            .read(move |r| {
                load(r, &p, id, Access::Manage)?;
                Ok(r.events_after(id, after, limit as usize)?)
            })
            .await
    }

    pub async fn output(
        &self,
        p: &Principal,
        id: Uuid,
        after: u64,
        limit: u64,
    ) -> DomainResult<Vec<OutputChunk>> {
        let p = p.clone();
        self.store
            .read(move |r| {
                load(r, &p, id, Access::Manage)?;
                Ok(r.output_after(id, after, limit as usize)?)
            })
            .await
    }

    /// Keystrokes from a person watching the session, for its runner (dashboard stream).
    pub async fn terminal_input(&self, p: &Principal, id: Uuid, data: String) -> DomainResult<()> {
        let p = p.clone();
        let now = self.now();
        self.store
            .write(move |w| {
                let s = load(w, &p, id, Access::Manage)?;
                let Some(runner) = s.runner_id.filter(|_| s.state.is_started()) else {
                    return Err(DomainError::invalid_state(format!(
                        "input reaches a running session's runner; the session is {}",
                        s.state.as_str()
                    )));
                };
                w.enqueue_command(
                    runner,
                    RunnerCommand::TerminalInput {
                        session_id: id,
                        data,
                    },
                    now,
                )?;
                // Who typed, not what: keystrokes may hold secrets.
                audit::record(w, &p, "session.terminal_input", id, Some(&s.org_id), now)?;
                Ok(())
            })
            .await
    }

    /// Stores a chunk of terminal output exactly once. `offset` (bytes the runner sent before
    /// this chunk) makes retries safe: an exact repeat answers the stored chunk's seq; a gap or
    /// overlap is refused with the offset the server holds.
    pub async fn append_output(
        &self,
        p: &Principal,
        id: Uuid,
        assignment: Option<Uuid>,
        stream: OutputStream,
        data: String,
        offset: Option<u64>,
    ) -> DomainResult<u64> {
        let p = p.clone();
        let now = self.now();
        self.store
            .write(move |w| {
                let s = load(w, &p, id, Access::Runner(assignment))?;
                if !s.state.is_started() {
                    return Err(DomainError::invalid_state(format!(
                        "output is accepted while the session runs; it is {}",
                        s.state.as_str()
                    )));
                }
                // What is stored ends where the last chunk ends: no session rewrite per chunk.
                let last = w.last_output(id)?;
                let held = last.as_ref().map_or(0, |c| c.offset + c.data.len() as u64);
                let len = data.len() as u64;
                match offset {
                    Some(o) if o == held => {}
                    None => {}
                    Some(o) if o < held && o + len <= held => {
                        let repeat = w.output_at(id, o)?;
                        return match repeat {
                            Some(c) if c.offset == o && c.data == data && c.stream == stream => {
                                Ok(c.seq)
                            }
                            _ => Err(offset_mismatch(held)),
                        };
                    }
                    Some(_) => return Err(offset_mismatch(held)),
                }
                let chunk = OutputChunk {
                    seq: last.as_ref().map_or(0, |c| c.seq) + 1,
                    stream,
                    data,
                    at: now,
                    offset: held,
                };
                w.put_output(id, &chunk)?;
                let seq = chunk.seq;
                w.emit(BusEvent::new(
                    now,
                    Some(s.org_id.clone()),
                    Some(id),
                    DomainEvent::TerminalOutput(Arc::new(chunk)),
                ));
                Ok(seq)
            })
            .await
    }
}

pub(super) fn offset_mismatch(held: u64) -> DomainError {
    DomainError::Conflict {
        kind: Conflict::OutputOffsetMismatch,
        message: format!("output offset does not match; the server holds {held} bytes"),
        details: Some(ConflictDetails::OutputOffset { held }),
    }
}
