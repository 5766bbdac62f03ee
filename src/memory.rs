//! The server's memory: what its allocator gives back to the system.
//!
//! The `village` binary and the load generator allocate with jemalloc (`#[global_allocator]` in
//! each; Cargo.toml says why). The library does not set an allocator itself, so a test binary
//! can count allocations with its own.

/// Starts jemalloc's background threads: memory freed by the server goes back to the system
/// after jemalloc's decay time (10 s) whether or not the server keeps allocating, so an idle
/// server shrinks after a burst and a busy one stays flat. Without them jemalloc purges only
/// while it allocates. `village serve` and `village demo` call this first thing.
pub fn return_freed_memory_in_background() {
    if let Err(e) = tikv_jemalloc_ctl::background_thread::write(true) {
        // Only when jemalloc is not the allocator or cannot start threads: the server runs on,
        // keeping freed memory until its next allocations purge it.
        eprintln!("village: jemalloc background threads not started: {e}");
    }
}
