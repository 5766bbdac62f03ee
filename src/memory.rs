//! The server's memory: what its allocator gives back to the system.
//!
//! The `village` binary and the load generator allocate with jemalloc (`#[global_allocator]` in
//! each; Cargo.toml says why). The library does not set an allocator itself, so a test binary
//! can count allocations with its own.

/// jemalloc's configuration variable (the crate builds jemalloc with the `_rjem_` prefix).
const JEMALLOC_CONF: &str = "_RJEM_MALLOC_CONF";
/// What the server sets it to when the operator did not.
const BACKGROUND_THREADS: &str = "background_thread:true";

/// Makes sure jemalloc runs its background threads: memory freed by the server goes back to the
/// system after jemalloc's decay time (10 s) whether or not the server keeps allocating, so an
/// idle server shrinks after a burst and a busy one stays flat; without them jemalloc purges only
/// while it allocates. jemalloc reads its configuration once, when the process starts, so when
/// `_RJEM_MALLOC_CONF` is not set the process re-executes itself once with
/// `background_thread:true` (same pid, arguments and descriptors). An operator's own setting is
/// kept as it is. `village serve` and `village demo` call this first thing.
#[cfg(target_os = "linux")]
pub fn return_freed_memory_in_background() {
    use std::ffi::CString;
    use std::os::unix::ffi::OsStrExt;
    if std::env::var_os(JEMALLOC_CONF).is_some() {
        return;
    }
    let to_c = |bytes: &[u8]| CString::new(bytes).ok();
    let args: Option<Vec<CString>> = std::env::args_os().map(|a| to_c(a.as_bytes())).collect();
    let mut env: Option<Vec<CString>> = std::env::vars_os()
        .map(|(k, v)| to_c(&[k.as_bytes(), b"=", v.as_bytes()].concat()))
        .collect();
    let (Some(args), Some(env)) = (args, env.as_mut()) else {
        return;
    };
    env.extend(to_c(
        format!("{JEMALLOC_CONF}={BACKGROUND_THREADS}").as_bytes(),
    ));
    // The binary's own path first, so that the process keeps its name (`ps`, `top`); then
    // /proc/self/exe, which still works when the file was replaced since it started. `execve`
    // returns only when it failed: then the process runs on as it is, purging while allocating.
    let own_path = std::env::current_exe()
        .ok()
        .and_then(|p| to_c(p.as_os_str().as_bytes()));
    for exe in own_path.into_iter().chain(to_c(b"/proc/self/exe")) {
        let _ = nix::unistd::execve(&exe, &args, env);
    }
}

#[cfg(not(target_os = "linux"))]
pub fn return_freed_memory_in_background() {}
