//! The `claude` adapter.

use futures_util::future::BoxFuture;

use super::{Adapter, AgentContext, Outcome};

pub struct ClaudeAdapter;

impl Adapter for ClaudeAdapter {
    fn run(&self, _cx: AgentContext) -> BoxFuture<'static, Outcome> {
        Box::pin(async { Outcome::Failed("the claude adapter is not built yet".into()) })
    }
}
