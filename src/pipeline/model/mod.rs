//! The update pipeline's records and rules, as a pure in-memory state machine: provider
//! versions, runner builds, staged rollouts per channel, org runtime configs, the build each
//! runner should run, and the health verdicts on rollout stages. Every change goes through a
//! method of [`PipelineState`] that checks the rules, mutates the state and notes what changed,
//! so the service only persists what the rules decided, and the property tests can drive the
//! very same code without a server.
//!
//! - `types.rs`: the records and value types, with their enums and string forms;
//! - `rules.rs`: the state transitions (register, rollouts and their verbs, channels, org
//!   configs);
//! - `desired.rs`: which build a runner should run (bucket, pins, beta, `autoUpgrade`);
//! - `verdicts.rs`: stage counts, health rules, the judge and what its verdicts trigger;
//! - `tests.rs`: the property test of the rollout invariants over the whole model.
//!
//! Everything public is re-exported here, so callers name `crate::pipeline::model::X`.

mod desired;
mod rules;
mod types;
mod verdicts;

#[cfg(test)]
mod tests;

pub use desired::*;
pub use rules::*;
pub use types::*;
pub use verdicts::*;
