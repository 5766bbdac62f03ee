//! `--slow[=FACTOR]`: every scenario on a machine FACTOR times slower (default 4).
//!
//! The method is a CPU quota: a cgroup whose quota is 1/FACTOR of the machine (`nproc` ×
//! period / FACTOR per period), with the load generator, its in-process server and every child
//! process (the `village` runner and server binaries, the WebSocket client processes, the
//! agents) in it. That is what a small cloud VM with a CPU quota is. A quota slows the real
//! code uniformly: the server, the clients and the kernel's work on their behalf (TCP,
//! `pwrite`, `fdatasync`'s CPU part) all run 1/FACTOR as often, while what is measured is
//! untouched. Busy work added to the code would instead slow only where it is put, and change
//! the very paths being timed. (Disk latency is not slowed: a quota is a CPU limit.)
//!
//! The thread counts stay those of the whole machine (`TOKIO_WORKER_THREADS` = `nproc` for
//! the runtimes, which would otherwise size themselves from the quota): a burstable VM with
//! `nproc` throttled CPUs, not a smaller one.
//!
//! How: this process (the supervisor) makes the cgroup `loadgen-slow-<pid>` under its own
//! (cgroup v2's `cpu.max` when the v2 hierarchy has the `cpu` controller, else v1's
//! `cpu.cfs_period_us`/`cpu.cfs_quota_us`), runs a fixed CPU job on `nproc` threads (noting the
//! CPU time each thread needs: the job's length on the whole machine, whatever else runs), joins
//! the cgroup, times the same job again and refuses to go on when the measured slowdown (slowed
//! wall time / CPU time) is off the factor by more than `FACTOR_TOLERANCE`. A machine busy
//! with other work shows as an unslowed wall time above the CPU time; the slowed run is less
//! exposed to it (its quota is below its fair share of a machine that is not overloaded). Then it runs the load generator again as a
//! child, with the same arguments less `--slow`: the child is in the cgroup from its first
//! instruction (before its runtime and its own children), and every scenario parses clean
//! arguments. When the child ends, the supervisor moves back to the parent cgroup, removes
//! the cgroup and exits with the child's status. The child prints the measured slowdown at the
//! head of its output (`header`).
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, Instant};

/// The factor when `--slow` has none.
const DEFAULT_FACTOR: f64 = 4.0;
/// The smallest quota the kernel accepts per period (cgroup v1 `cpu.cfs_quota_us` and v2
/// `cpu.max` both refuse less than 1 ms).
const MIN_QUOTA_MICROS: u64 = 1_000;

/// The quota's period: the shortest whose quota the kernel accepts (`cores` × period / `factor`
/// ≥ 1 ms; 2 ms for factor 4 on 2 cores). A throttled process runs at full speed until its
/// share of the period is used up and then waits for the rest of it, so the period bounds each
/// stall: a slower machine has no such stalls at all, it is slower all the time, and the
/// shorter the period the closer the quota comes to that. With a 10 ms period (what this used
/// before) stalls of up to 5 ms made the p99 of single fast requests (BENCHMARKS.md, "Hot
/// paths, fifth pass"); the default 100 ms would add up to 75 ms.
fn period_micros(cores: usize, factor: f64) -> u64 {
    (MIN_QUOTA_MICROS as f64 * factor / cores as f64)
        .ceil()
        .max(MIN_QUOTA_MICROS as f64) as u64
}

/// The largest accepted difference between the measured slowdown and the factor.
const FACTOR_TOLERANCE: f64 = 0.25;
/// About how long the fixed CPU job takes on the machine at full speed.
const CALIBRATION_JOB: Duration = Duration::from_millis(300);
/// Set in the child's environment: the measured slowdown, for its output's header.
const SLOWED_ENV: &str = "VILLAGE_LOADGEN_SLOWED";

/// `--slow` or `--slow=FACTOR` among `args` (the program's arguments, without its name):
/// the factor and the arguments without it. None when absent.
pub(crate) fn parse(args: &[String]) -> Option<Result<(f64, Vec<String>), String>> {
    let position = args
        .iter()
        .position(|a| a == "--slow" || a.starts_with("--slow="))?;
    let factor = match args[position].strip_prefix("--slow=") {
        None => Ok(DEFAULT_FACTOR),
        Some(f) => match f.parse::<f64>() {
            Ok(f) if f > 1.0 && f.is_finite() => Ok(f),
            _ => Err(format!("--slow={f}: the factor must be a number above 1")),
        },
    };
    let mut rest = args.to_vec();
    rest.remove(position);
    Some(factor.map(|f| (f, rest)))
}

/// Set in the child's environment: the cgroup the supervisor came from (unslowed).
const UNSLOWED_ENV: &str = "VILLAGE_LOADGEN_UNSLOWED_CGROUP";

/// Whether this run is slowed (inside the quota).
pub(crate) fn is_slowed() -> bool {
    std::env::var_os(SLOWED_ENV).is_some()
}

/// Moves process `pid` out of the quota, back to the cgroup the supervisor came from: for
/// processes that stand for other machines (the `stream` scenario's 500 viewers). Nothing to
/// do when this run is not slowed.
pub(crate) fn release(pid: u32) -> Result<(), String> {
    match std::env::var_os(UNSLOWED_ENV) {
        Some(dir) => write(&Path::new(&dir).join("cgroup.procs"), &pid.to_string()),
        None => Ok(()),
    }
}

/// The first line of every scenario's output: whether this run was slowed, and how much.
pub(crate) fn header() -> String {
    match std::env::var(SLOWED_ENV) {
        Ok(line) => line,
        Err(_) => format!("not slowed: the whole machine ({} cores)", cores()),
    }
}

/// The CPUs this process may run on (`Cpus_allowed_list`, which a quota does not change;
/// `available_parallelism` divides by a quota), else `available_parallelism`.
pub(crate) fn cores() -> usize {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let counted: usize = status
        .lines()
        .find_map(|l| l.strip_prefix("Cpus_allowed_list:"))
        .unwrap_or("")
        .trim()
        .split(',')
        .filter_map(|range| match range.split_once('-') {
            Some((a, b)) => Some(b.parse::<usize>().ok()? + 1 - a.parse::<usize>().ok()?),
            None => range.parse::<usize>().ok().map(|_| 1),
        })
        .sum();
    if counted > 0 {
        counted
    } else {
        std::thread::available_parallelism().map_or(1, |n| n.get())
    }
}

/// A cpu cgroup this process made, and the one it came from.
struct Cgroup {
    dir: PathBuf,
    parent: PathBuf,
}

impl Cgroup {
    /// Makes `loadgen-slow-<pid>` under this process's cpu cgroup with 1/`factor` of `cores`
    /// CPUs (quota = `cores` × period / `factor`).
    fn create(cores: usize, factor: f64) -> Result<(Self, String), String> {
        let period = period_micros(cores, factor);
        let quota = (cores as f64 * period as f64 / factor).round() as u64;
        let own = std::fs::read_to_string("/proc/self/cgroup")
            .map_err(|e| format!("/proc/self/cgroup: {e}"))?;
        let v2_root = ["/sys/fs/cgroup", "/sys/fs/cgroup/unified"]
            .into_iter()
            .map(Path::new)
            .find(|root| {
                std::fs::read_to_string(root.join("cgroup.controllers"))
                    .is_ok_and(|c| c.split_whitespace().any(|c| c == "cpu"))
            });
        let (parent, v2) = if let Some(root) = v2_root {
            let path = own
                .lines()
                .find_map(|l| l.strip_prefix("0::"))
                .ok_or("no cgroup v2 entry in /proc/self/cgroup")?;
            (root.join(path.trim_start_matches('/')), true)
        } else {
            // v1: `N:cpu:/path` or `N:cpu,cpuacct:/path`.
            let path = own
                .lines()
                .find_map(|l| {
                    let mut parts = l.splitn(3, ':');
                    let (_, controllers, path) = (parts.next()?, parts.next()?, parts.next()?);
                    controllers.split(',').any(|c| c == "cpu").then_some(path)
                })
                .ok_or("no cpu controller: neither cgroup v2 with `cpu` in cgroup.controllers nor a v1 cpu hierarchy")?;
            let mounts = ["/sys/fs/cgroup/cpu", "/sys/fs/cgroup/cpu,cpuacct"];
            let mount = mounts
                .into_iter()
                .map(Path::new)
                .find(|m| m.join("cpu.cfs_quota_us").exists())
                .ok_or("no cgroup v1 cpu hierarchy at /sys/fs/cgroup/cpu")?;
            (mount.join(path.trim_start_matches('/')), false)
        };
        let dir = parent.join(format!("loadgen-slow-{}", std::process::id()));
        std::fs::create_dir(&dir).map_err(|e| format!("mkdir {}: {e}", dir.display()))?;
        let cgroup = Self { dir, parent };
        let configured = if v2 {
            // The parent must hand the cpu controller down (fails in a cgroup that holds
            // processes itself, other than the root).
            let subtree = cgroup.parent.join("cgroup.subtree_control");
            let enabled = std::fs::read_to_string(&subtree)
                .is_ok_and(|c| c.split_whitespace().any(|c| c == "cpu"));
            let enable = if enabled {
                Ok(())
            } else {
                write(&subtree, "+cpu")
            };
            enable.and_then(|()| write(&cgroup.dir.join("cpu.max"), &format!("{quota} {period}")))
        } else {
            write(&cgroup.dir.join("cpu.cfs_period_us"), &period.to_string())
                .and_then(|()| write(&cgroup.dir.join("cpu.cfs_quota_us"), &quota.to_string()))
        };
        if let Err(e) = configured {
            cgroup.remove();
            return Err(e);
        }
        let what = format!(
            "cgroup {} {}: {quota} µs of CPU per {period} µs period",
            if v2 { "v2" } else { "v1" },
            cgroup.dir.display()
        );
        Ok((cgroup, what))
    }

    /// Moves this whole process (every thread) into `dir`.
    fn move_to(dir: &Path) -> Result<(), String> {
        write(&dir.join("cgroup.procs"), &std::process::id().to_string())
    }

    fn join(&self) -> Result<(), String> {
        Self::move_to(&self.dir)
    }

    /// Back to the parent cgroup, then removes the cgroup (waiting a little for child
    /// processes still exiting). Prints the path of a cgroup it could not remove.
    fn remove(self) {
        if let Err(e) = Self::move_to(&self.parent) {
            eprintln!(
                "--slow: could not move back to {}: {e}",
                self.parent.display()
            );
        }
        let deadline = Instant::now() + Duration::from_secs(3);
        loop {
            match std::fs::remove_dir(&self.dir) {
                Ok(()) => return,
                Err(e) if Instant::now() >= deadline => {
                    eprintln!(
                        "--slow: the cgroup {} is left behind ({e}); remove it with rmdir",
                        self.dir.display()
                    );
                    return;
                }
                Err(_) => std::thread::sleep(Duration::from_millis(50)),
            }
        }
    }
}

fn write(path: &Path, text: &str) -> Result<(), String> {
    std::fs::write(path, text).map_err(|e| format!("writing {text:?} to {}: {e}", path.display()))
}

/// Iterations of the fixed job's loop per thread that take about `CALIBRATION_JOB`.
fn job_size() -> u64 {
    let probe = 1 << 20;
    let began = Instant::now();
    let mut n = 0;
    while began.elapsed() < Duration::from_millis(30) {
        spin(probe);
        n += probe;
    }
    (n as f64 * CALIBRATION_JOB.as_secs_f64() / began.elapsed().as_secs_f64()) as u64
}

/// `iterations` of a loop the compiler cannot remove.
fn spin(iterations: u64) -> u64 {
    let mut x = std::hint::black_box(0x9E37_79B9_7F4A_7C15u64);
    for i in 0..iterations {
        x = x.rotate_left(5) ^ i.wrapping_mul(0x2545_F491_4F6C_DD1D);
    }
    std::hint::black_box(x)
}

/// CPU time this thread has used (`/proc/thread-self/schedstat`), zero when unknown.
fn thread_cpu() -> Duration {
    let stat = std::fs::read_to_string("/proc/thread-self/schedstat").unwrap_or_default();
    Duration::from_nanos(
        stat.split_whitespace()
            .next()
            .and_then(|ns| ns.parse().ok())
            .unwrap_or(0),
    )
}

/// `iterations` on each of `threads` threads at once, the best of `tries`: the wall time, and
/// the CPU time a thread used (the mean over the threads).
fn time_job(threads: usize, iterations: u64, tries: usize) -> (Duration, Duration) {
    (0..tries)
        .map(|_| {
            let began = Instant::now();
            let cpu: Duration = std::thread::scope(|s| {
                let spinners: Vec<_> = (0..threads)
                    .map(|_| {
                        s.spawn(|| {
                            let before = thread_cpu();
                            spin(iterations);
                            thread_cpu().saturating_sub(before)
                        })
                    })
                    .collect();
                spinners
                    .into_iter()
                    .map(|t| t.join().unwrap_or_default())
                    .sum()
            });
            (began.elapsed(), cpu / threads.max(1) as u32)
        })
        .min()
        .unwrap_or_default()
}

/// Runs the load generator (`args`, without `--slow`) as a child in a cgroup with 1/`factor`
/// of the machine's CPU and exits with its status; 2 when the cgroup cannot be made or does not
/// slow a CPU job by `factor` (± `FACTOR_TOLERANCE`).
pub(crate) fn supervise(factor: f64, args: Vec<String>) -> ExitCode {
    let cores = cores();
    let (cgroup, what) = match Cgroup::create(cores, factor) {
        Ok(made) => made,
        Err(e) => {
            eprintln!(
                "--slow needs a cpu cgroup it can make and join: root (or a delegated cgroup), \
                 and the cpu controller (cgroup v2 with `cpu` in /sys/fs/cgroup/cgroup.controllers, \
                 or cgroup v1 at /sys/fs/cgroup/cpu). {e}"
            );
            return ExitCode::from(2);
        }
    };
    // The job's CPU time per thread is what it takes on the whole machine, whoever else runs
    // meanwhile; its wall time unslowed is printed too (above the CPU time: others were busy).
    let iterations = job_size();
    let (full_wall, full_cpu) = time_job(cores, iterations, 2);
    if let Err(e) = cgroup.join() {
        eprintln!("--slow: could not join {}: {e}", cgroup.dir.display());
        cgroup.remove();
        return ExitCode::from(2);
    }
    let (slowed, _) = time_job(cores, iterations, 2);
    let measured = slowed.as_secs_f64() / full_cpu.as_secs_f64().max(1e-6);
    let line = format!(
        "slowed: a fixed CPU job on {cores} threads takes {measured:.2}× as long ({:.0} ms of CPU \
         each, {:.0} ms wall unslowed, {:.0} ms slowed; target {factor}×, quota {:.2} of {cores} \
         cores; {what})",
        full_cpu.as_secs_f64() * 1000.0,
        full_wall.as_secs_f64() * 1000.0,
        slowed.as_secs_f64() * 1000.0,
        cores as f64 / factor,
    );
    if (measured / factor - 1.0).abs() > FACTOR_TOLERANCE {
        eprintln!("{line}");
        eprintln!(
            "--slow: the measured slowdown is off the target by more than {:.0} % (a busy \
             machine, or a quota the kernel does not enforce): not running",
            FACTOR_TOLERANCE * 100.0
        );
        cgroup.remove();
        return ExitCode::from(2);
    }
    let mut command = std::process::Command::new(std::env::current_exe().unwrap());
    command
        .args(&args)
        .env(SLOWED_ENV, &line)
        .env(UNSLOWED_ENV, &cgroup.parent);
    if std::env::var_os("TOKIO_WORKER_THREADS").is_none() {
        command.env("TOKIO_WORKER_THREADS", cores.to_string());
    }
    let child = command.spawn();
    // Ctrl-C reaches the child too: this process waits for it to end and cleans up.
    let mut interrupt = nix::sys::signal::SigSet::empty();
    interrupt.add(nix::sys::signal::Signal::SIGINT);
    let _ = interrupt.thread_block();
    let status = child.and_then(|mut child| child.wait());
    cgroup.remove();
    match status {
        Ok(status) => match status.code() {
            Some(code) => ExitCode::from(code.clamp(0, 255) as u8),
            None => {
                eprintln!("--slow: the load generator ended by a signal ({status})");
                ExitCode::FAILURE
            }
        },
        Err(e) => {
            eprintln!("--slow: could not run the load generator: {e}");
            ExitCode::FAILURE
        }
    }
}
