//! Work a client cannot cancel. A server drops a request's future when its client hangs up, at
//! whatever await it has reached: after a commit but before the in-memory state that mirrors it
//! (active tokens, webhooks, the fleet, the pipeline snapshot) was updated, memory would then
//! disagree with disk. A change that must finish once it has started runs as a task of its own,
//! and the request only waits for it.

use std::future::Future;

use crate::error::{DomainError, DomainResult};
use crate::store::StoreError;

/// Runs `work` to its end whether or not the caller keeps waiting for it.
pub async fn detached<T: Send + 'static>(
    work: impl Future<Output = DomainResult<T>> + Send + 'static,
) -> DomainResult<T> {
    match tokio::spawn(work).await {
        Ok(result) => result,
        Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
        // The runtime is shutting down.
        Err(_) => Err(DomainError::Store(StoreError::Closed)),
    }
}
