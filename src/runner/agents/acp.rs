//! The `acp` adapter.

use futures_util::future::BoxFuture;

use super::{Adapter, AgentContext, Outcome};

pub struct AcpAdapter;

impl Adapter for AcpAdapter {
    fn run(&self, _cx: AgentContext) -> BoxFuture<'static, Outcome> {
        Box::pin(async { Outcome::Failed("the acp adapter is not built yet".into()) })
    }
}
