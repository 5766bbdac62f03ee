//! Village: the control plane for a fleet of AI coding agents. See ARCHITECTURE.md.

pub mod api;
pub mod app;
pub mod auth;
pub mod clock;
pub mod config;
pub mod error;
pub mod events;
pub mod paging;
pub mod sessions;
pub mod store;
pub mod ui;
