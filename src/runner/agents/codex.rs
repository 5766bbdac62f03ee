//! The `codex` adapter.

use futures_util::future::BoxFuture;

use super::{Adapter, AgentContext, Outcome};

pub struct CodexAdapter;

impl Adapter for CodexAdapter {
    fn run(&self, _cx: AgentContext) -> BoxFuture<'static, Outcome> {
        Box::pin(async { Outcome::Failed("the codex adapter is not built yet".into()) })
    }
}
