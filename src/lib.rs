//! Village: the control plane for a fleet of AI coding agents. See ARCHITECTURE.md.
#![cfg_attr(test, allow(clippy::unwrap_used))]

/// Every binary built on this crate (the server, its tests, the load generator) allocates with
/// mimalloc: with glibc's malloc, allocating and freeing took about a fifth of the CPU of a
/// session create (BENCHMARKS.md).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

pub mod api;
pub mod app;
pub mod audit;
pub mod auth;
pub mod clock;
pub mod config;
pub mod demo;
pub mod demo_agent;
pub mod detach;
pub mod error;
pub mod events;
pub mod paging;
pub mod pipeline;
pub mod realtime;
pub mod runner;
pub mod runners;
pub mod sessions;
pub mod store;
pub mod ui;
pub mod webhooks;
