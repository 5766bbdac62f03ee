//! Storage of the update pipeline: loaded whole at start (it is small), written per record.

use super::codec::{decode, encode};
use super::engine::{StoreResult, Tables, WriteCtx};
use super::tables::*;
use crate::pipeline::model::{
    BuildRecord, Channel, ChannelRecord, OrgRuntimeConfig, PipelineState, Rollout, VersionRecord,
};
use redb::ReadableTable;

/// What the domain reads of the pipeline: everything at once.
pub trait PipelineReads {
    /// Everything the pipeline holds.
    fn load_pipeline(&self) -> StoreResult<PipelineState>;
}

/// What a write job may change of the pipeline: one record at a time.
pub trait PipelineWrites: PipelineReads {
    fn put_version(&mut self, v: &VersionRecord) -> StoreResult<()>;
    fn put_build(&mut self, b: &BuildRecord) -> StoreResult<()>;
    fn put_rollout(&mut self, r: &Rollout) -> StoreResult<()>;
    fn put_channel(&mut self, channel: Channel, c: &ChannelRecord) -> StoreResult<()>;
    fn put_org_config(&mut self, c: &OrgRuntimeConfig) -> StoreResult<()>;
}

impl<T: Tables> PipelineReads for T {
    fn load_pipeline(&self) -> StoreResult<PipelineState> {
        let r = self;
        let mut state = PipelineState::default();
        for entry in r.table(VERSIONS)?.iter()? {
            let v: VersionRecord = decode(entry?.1.value())?;
            state.versions.insert((v.provider, v.version.clone()), v);
        }
        for entry in r.table(BUILDS)?.iter()? {
            let b: BuildRecord = decode(entry?.1.value())?;
            state.builds.insert(b.build_id.clone(), b);
        }
        for entry in r.table(ROLLOUTS)?.iter()? {
            let ro: Rollout = decode(entry?.1.value())?;
            state.rollouts.insert(ro.id, ro);
        }
        for entry in r.table(CHANNELS)?.iter()? {
            let (k, v) = entry?;
            if let Some(channel) = Channel::parse(k.value()) {
                let c: ChannelRecord = decode(v.value())?;
                state.channels.insert(channel, c);
            }
        }
        for entry in r.table(ORG_RUNTIME_CONFIGS)?.iter()? {
            let c: OrgRuntimeConfig = decode(entry?.1.value())?;
            state.org_configs.insert(c.org_id.clone(), c);
        }
        Ok(state)
    }
}

impl PipelineWrites for WriteCtx<'_> {
    fn put_version(&mut self, v: &VersionRecord) -> StoreResult<()> {
        let bytes = encode(v)?;
        self.open_mut(VERSIONS)?
            .insert((v.provider.as_str(), v.version.as_str()), bytes.as_slice())?;
        Ok(())
    }

    fn put_build(&mut self, b: &BuildRecord) -> StoreResult<()> {
        let bytes = encode(b)?;
        self.open_mut(BUILDS)?
            .insert(b.build_id.as_str(), bytes.as_slice())?;
        Ok(())
    }

    fn put_rollout(&mut self, r: &Rollout) -> StoreResult<()> {
        let bytes = encode(r)?;
        self.open_mut(ROLLOUTS)?
            .insert(r.id.as_u128(), bytes.as_slice())?;
        Ok(())
    }

    fn put_channel(&mut self, channel: Channel, c: &ChannelRecord) -> StoreResult<()> {
        let bytes = encode(c)?;
        self.open_mut(CHANNELS)?
            .insert(channel.as_str(), bytes.as_slice())?;
        Ok(())
    }

    fn put_org_config(&mut self, c: &OrgRuntimeConfig) -> StoreResult<()> {
        let bytes = encode(c)?;
        self.open_mut(ORG_RUNTIME_CONFIGS)?
            .insert(c.org_id.as_str(), bytes.as_slice())?;
        Ok(())
    }
}
