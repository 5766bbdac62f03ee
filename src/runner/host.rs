//! What a heartbeat says about the host: CPU, memory and the work dir's disk (sysinfo), and the
//! versions of the agents this runner offers (each program's `--version`).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::{Value, json};

/// Samples host load. CPU usage is measured between two refreshes, so the first sample after
/// start reads 0.
pub struct HostLoad {
    system: Option<sysinfo::System>,
    disks: Option<sysinfo::Disks>,
    work_dir: PathBuf,
}

impl HostLoad {
    pub fn new(work_dir: &Path) -> Self {
        let mut system = sysinfo::System::new().ok();
        if let Some(s) = system.as_mut() {
            s.refresh_cpu_usage();
        }
        Self {
            system,
            disks: sysinfo::Disks::new_with_refreshed_list().ok(),
            work_dir: std::fs::canonicalize(work_dir).unwrap_or_else(|_| work_dir.to_path_buf()),
        }
    }

    /// `{cpuPercent, memoryPercent, diskPercent}`, each 0..100.
    pub fn sample(&mut self) -> Value {
        let (cpu, memory) = match self.system.as_mut() {
            Some(s) => {
                s.refresh_cpu_usage();
                s.refresh_memory();
                let total = s.total_memory();
                let mem = if total == 0 {
                    0.0
                } else {
                    s.used_memory() as f64 * 100.0 / total as f64
                };
                (f64::from(s.global_cpu_usage()), mem)
            }
            None => (0.0, 0.0),
        };
        let disk = self.disk_percent();
        json!({
            "cpuPercent": round1(cpu.clamp(0.0, 100.0)),
            "memoryPercent": round1(memory.clamp(0.0, 100.0)),
            "diskPercent": round1(disk.clamp(0.0, 100.0)),
        })
    }

    /// Use of the disk holding the work dir: the mount with the longest matching prefix.
    fn disk_percent(&mut self) -> f64 {
        let Some(disks) = self.disks.as_mut() else {
            return 0.0;
        };
        disks.refresh(true);
        disks
            .iter()
            .filter(|d| self.work_dir.starts_with(d.mount_point()))
            .max_by_key(|d| d.mount_point().as_os_str().len())
            .map(|d| {
                let total = d.total_space();
                if total == 0 {
                    0.0
                } else {
                    (total - d.available_space().min(total)) as f64 * 100.0 / total as f64
                }
            })
            .unwrap_or(0.0)
    }
}

fn round1(v: f64) -> f64 {
    (v * 10.0).round() / 10.0
}

/// Runs `program --version` (5 s at most) and returns its first non-empty line.
pub async fn version_of(program: &str, args: &[String]) -> Option<String> {
    let mut cmd = tokio::process::Command::new(program);
    cmd.args(args)
        .arg("--version")
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .kill_on_drop(true);
    let out = tokio::time::timeout(Duration::from_secs(5), cmd.output())
        .await
        .ok()?
        .ok()?;
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(str::trim)
        .find(|l| !l.is_empty())
        .map(|l| l.chars().take(100).collect())
}

/// Where `program` is: itself if it names a path, else the first match on PATH.
pub fn find_program(program: &str) -> Option<PathBuf> {
    use std::os::unix::fs::PermissionsExt;
    let executable = |p: &Path| {
        std::fs::metadata(p)
            .map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
            .unwrap_or(false)
    };
    if program.contains('/') {
        let p = PathBuf::from(program);
        return executable(&p).then_some(p);
    }
    std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|dir| dir.join(program))
            .find(|p| executable(p))
    })
}

/// Versions by provider id, for `runtimeVersions`.
pub type Versions = BTreeMap<String, String>;
