//! The `pty` adapter.

use futures_util::future::BoxFuture;

use super::{Adapter, AgentContext, Outcome};

pub struct PtyAdapter;

impl Adapter for PtyAdapter {
    fn run(&self, _cx: AgentContext) -> BoxFuture<'static, Outcome> {
        Box::pin(async { Outcome::Failed("the pty adapter is not built yet".into()) })
    }
}
