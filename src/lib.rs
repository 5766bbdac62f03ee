//! Village: the control plane for a fleet of AI coding agents. See ARCHITECTURE.md.
#![cfg_attr(test, allow(clippy::unwrap_used))]

// glibc's malloc, not mimalloc (used until a day on a big fleet, BENCHMARKS.md): mimalloc kept
// memory freed on one thread resident and the server grew without end under a steady load.
// glibc's malloc stays flat with two arenas, which `village serve` and `village demo` set for
// themselves at start (`cap_malloc_arenas` in main.rs).

pub mod admin;
pub mod api;
pub mod app;
pub mod audit;
pub mod auth;
pub mod backups;
pub mod client;
pub mod clock;
pub mod config;
pub mod demo;
pub mod demo_agent;
pub mod detach;
pub mod error;
pub mod events;
pub mod metrics;
pub mod paging;
pub mod pipeline;
pub mod policy;
pub mod realtime;
pub mod runner;
pub mod runners;
pub mod sessions;
pub mod spend;
pub mod store;
pub mod ui;
pub mod webhooks;
