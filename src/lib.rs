//! Village: the control plane for a fleet of AI coding agents. See ARCHITECTURE.md.
#![cfg_attr(test, allow(clippy::unwrap_used))]

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
pub mod memory;
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
