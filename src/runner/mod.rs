//! `village runner`: runs agent sessions for a Village server. A client of the public API (REST
//! and the runner channel); it shares only wire shapes with the server.

pub mod agents;
pub mod process;
