//! Storage of runners: records, hostname index, liveness, and each runner's command outbox.

use redb::ReadableTable;
use uuid::Uuid;

use super::codec::{decode, encode};
use super::engine::{StoreResult, Tables, WriteCtx};
use super::tables::*;
use crate::clock::Millis;
use crate::runners::model::{Liveness, OutboxEntry, RunnerCommand, RunnerRecord};

/// What the domain reads of runners and their outboxes.
pub trait RunnerReads {
    fn get_runner(&self, id: Uuid) -> StoreResult<Option<RunnerRecord>>;

    fn runner_by_hostname(&self, hostname: &str) -> StoreResult<Option<Uuid>>;

    fn all_runners(&self) -> StoreResult<Vec<RunnerRecord>>;

    fn all_liveness(&self) -> StoreResult<Vec<(Uuid, Liveness)>>;

    /// The non-terminal sessions assigned to a runner.
    fn runner_sessions(&self, runner: Uuid) -> StoreResult<Vec<Uuid>>;

    /// How many non-terminal sessions each runner holds (runners with none are absent).
    fn runner_loads(&self) -> StoreResult<std::collections::HashMap<Uuid, u64>>;

    fn runner_load(&self, runner: Uuid) -> StoreResult<u64>;

    /// A runner's unacknowledged commands, in order.
    fn outbox(&self, runner: Uuid) -> StoreResult<Vec<OutboxEntry>>;
}

/// What a write job may change of runners. A command put in an outbox reaches the runner's
/// live channel once the transaction is durable.
pub trait RunnerWrites: RunnerReads {
    /// Writes a runner and its hostname index.
    fn put_runner(&mut self, runner: &mut RunnerRecord) -> StoreResult<()>;

    /// Removes a runner with its liveness and outbox.
    fn delete_runner(&mut self, runner: &RunnerRecord) -> StoreResult<()>;

    fn put_liveness(&mut self, runner: Uuid, live: &Liveness) -> StoreResult<()>;

    /// Puts a command in a runner's outbox and tells the live channel, once committed.
    fn enqueue_command(
        &mut self,
        runner_id: Uuid,
        command: RunnerCommand,
        now: Millis,
    ) -> StoreResult<OutboxEntry>;

    /// How many non-terminal sessions each runner holds (runners with none are absent), as
    /// this transaction stands: `RunnerReads::runner_loads` without reading the table, from
    /// the writer's own copy (a scheduling pass in every batch that queues a session needs
    /// every runner's count).
    fn active_loads(&mut self) -> StoreResult<std::collections::HashMap<Uuid, u64>>;

    /// Drops the command `message_id` from a runner's outbox (an ack), without reading the
    /// rest of it. Returns whether it was there.
    fn remove_command(&mut self, runner_id: Uuid, message_id: Uuid) -> StoreResult<bool>;

    /// Drops outbox entries of a runner that `remove` picks (reads the whole outbox: for the
    /// rare sweeps, not for acks). Returns how many.
    fn remove_commands(
        &mut self,
        runner_id: Uuid,
        remove: &mut dyn FnMut(&OutboxEntry) -> bool,
    ) -> StoreResult<usize>;
}

impl<T: Tables> RunnerReads for T {
    fn get_runner(&self, id: Uuid) -> StoreResult<Option<RunnerRecord>> {
        let t = self.table(RUNNERS)?;
        let v = t.get(id.as_u128())?;
        v.map(|v| decode(v.value())).transpose()
    }

    fn runner_by_hostname(&self, hostname: &str) -> StoreResult<Option<Uuid>> {
        Ok(self
            .table(RUNNERS_BY_HOSTNAME)?
            .get(hostname)?
            .map(|v| Uuid::from_u128(v.value())))
    }

    fn all_runners(&self) -> StoreResult<Vec<RunnerRecord>> {
        let t = self.table(RUNNERS)?;
        let mut out = Vec::new();
        for entry in t.iter()? {
            out.push(decode(entry?.1.value())?);
        }
        Ok(out)
    }

    fn all_liveness(&self) -> StoreResult<Vec<(Uuid, Liveness)>> {
        let t = self.table(RUNNER_LIVENESS)?;
        let mut out = Vec::new();
        for entry in t.iter()? {
            let (k, v) = entry?;
            out.push((Uuid::from_u128(k.value()), decode(v.value())?));
        }
        Ok(out)
    }

    fn runner_sessions(&self, runner: Uuid) -> StoreResult<Vec<Uuid>> {
        let t = self.table(SESSIONS_BY_RUNNER)?;
        let r = runner.as_u128();
        let mut out = Vec::new();
        for entry in t.range((r, 0u128)..=(r, u128::MAX))? {
            out.push(Uuid::from_u128(entry?.0.value().1));
        }
        Ok(out)
    }

    fn runner_loads(&self) -> StoreResult<std::collections::HashMap<Uuid, u64>> {
        let t = self.table(RUNNER_ACTIVE_SESSIONS)?;
        let mut out = std::collections::HashMap::new();
        for entry in t.iter()? {
            let (k, v) = entry?;
            out.insert(Uuid::from_u128(k.value()), v.value());
        }
        Ok(out)
    }

    fn runner_load(&self, runner: Uuid) -> StoreResult<u64> {
        Ok(self
            .table(RUNNER_ACTIVE_SESSIONS)?
            .get(runner.as_u128())?
            .map(|v| v.value())
            .unwrap_or(0))
    }

    fn outbox(&self, runner: Uuid) -> StoreResult<Vec<OutboxEntry>> {
        let t = self.table(RUNNER_OUTBOX)?;
        let r = runner.as_u128();
        let mut out = Vec::new();
        for entry in t.range((r, 0u64)..=(r, u64::MAX))? {
            out.push(decode(entry?.1.value())?);
        }
        Ok(out)
    }
}

impl RunnerWrites for WriteCtx<'_> {
    fn active_loads(&mut self) -> StoreResult<std::collections::HashMap<Uuid, u64>> {
        if let Some(loads) = &self.loads {
            return Ok(loads.clone());
        }
        let loads = self.runner_loads()?;
        self.loads = Some(loads.clone());
        Ok(loads)
    }

    fn put_runner(&mut self, runner: &mut RunnerRecord) -> StoreResult<()> {
        runner.revision = self.get_runner(runner.id)?.map_or(0, |r| r.revision) + 1;
        let bytes = encode(&*runner)?;
        self.open_mut(RUNNERS)?
            .insert(runner.id.as_u128(), bytes.as_slice())?;
        self.open_mut(RUNNERS_BY_HOSTNAME)?
            .insert(runner.hostname.as_str(), runner.id.as_u128())?;
        Ok(())
    }

    fn delete_runner(&mut self, runner: &RunnerRecord) -> StoreResult<()> {
        let id = runner.id.as_u128();
        self.open_mut(RUNNERS)?.remove(id)?;
        self.open_mut(RUNNERS_BY_HOSTNAME)?
            .remove(runner.hostname.as_str())?;
        self.open_mut(RUNNER_LIVENESS)?.remove(id)?;
        self.open_mut(RUNNER_OUTBOX)?
            .retain_in((id, 0u64)..=(id, u64::MAX), |_, _| false)?;
        self.open_mut(RUNNER_OUTBOX_BY_MESSAGE)?
            .retain_in((id, 0u128)..=(id, u128::MAX), |_, _| false)?;
        Ok(())
    }

    fn put_liveness(&mut self, runner: Uuid, live: &Liveness) -> StoreResult<()> {
        let bytes = encode(live)?;
        self.open_mut(RUNNER_LIVENESS)?
            .insert(runner.as_u128(), bytes.as_slice())?;
        Ok(())
    }

    fn enqueue_command(
        &mut self,
        runner_id: Uuid,
        command: RunnerCommand,
        now: Millis,
    ) -> StoreResult<OutboxEntry> {
        // The id only has to be unique; nothing depends on its value.
        let message_id = crate::clock::random_uuid();
        self.writes += 1;
        let meta = self.hot_meta()?;
        let seq = meta
            .get("next_command_seq")?
            .map(|v| v.value())
            .unwrap_or(1);
        meta.insert("next_command_seq", seq + 1)?;
        let entry = OutboxEntry {
            seq,
            message_id,
            runner_id,
            command,
            created_at: now,
        };
        let bytes = encode(&entry)?;
        self.hot_outbox()?
            .insert((runner_id.as_u128(), seq), bytes.as_slice())?;
        self.hot_outbox_by_message()?
            .insert((runner_id.as_u128(), message_id.as_u128()), seq)?;
        self.commands.push(entry.clone());
        Ok(entry)
    }

    fn remove_command(&mut self, runner_id: Uuid, message_id: Uuid) -> StoreResult<bool> {
        let runner = runner_id.as_u128();
        let key = (runner, message_id.as_u128());
        let Some(seq) = self.hot_outbox_by_message()?.get(key)?.map(|v| v.value()) else {
            return Ok(false);
        };
        self.writes += 1;
        self.hot_outbox_by_message()?.remove(key)?;
        self.hot_outbox()?.remove((runner, seq))?;
        self.forget_commands(runner_id, &[message_id]);
        Ok(true)
    }

    fn remove_commands(
        &mut self,
        runner_id: Uuid,
        remove: &mut dyn FnMut(&OutboxEntry) -> bool,
    ) -> StoreResult<usize> {
        let doomed: Vec<(u64, Uuid)> = self
            .outbox(runner_id)?
            .into_iter()
            .filter(|e| remove(e))
            .map(|e| (e.seq, e.message_id))
            .collect();
        let runner = runner_id.as_u128();
        let mut t = self.open_mut(RUNNER_OUTBOX)?;
        for (seq, _) in &doomed {
            t.remove((runner, *seq))?;
        }
        drop(t);
        let mut index = self.open_mut(RUNNER_OUTBOX_BY_MESSAGE)?;
        for (_, message_id) in &doomed {
            index.remove((runner, message_id.as_u128()))?;
        }
        drop(index);
        let message_ids: Vec<Uuid> = doomed.iter().map(|(_, m)| *m).collect();
        self.forget_commands(runner_id, &message_ids);
        Ok(doomed.len())
    }
}

impl WriteCtx<'_> {
    /// Takes commands withdrawn from the outbox out of the batch's list of commands to hand to
    /// the runners' channels: one enqueued and withdrawn in the same batch was never committed,
    /// so its runner must not be sent it.
    fn forget_commands(&mut self, runner_id: Uuid, message_ids: &[Uuid]) {
        if message_ids.is_empty() {
            return;
        }
        self.commands
            .retain(|c| c.runner_id != runner_id || !message_ids.contains(&c.message_id));
    }
}
