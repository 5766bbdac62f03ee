//! `packaging/`: the systemd units are valid (as `systemd-analyze verify` reads them, with no
//! warning) and keep the hardening an operator relies on.
#![allow(clippy::unwrap_used)]

use std::path::Path;
use std::process::Command;

fn unit(name: &str) -> String {
    std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("packaging")
            .join(name),
    )
    .unwrap()
}

/// The `key=value` lines of a unit's `[Service]` section.
fn service_settings(text: &str) -> Vec<(String, String)> {
    let mut in_service = false;
    let mut settings = Vec::new();
    for line in text.lines().map(str::trim) {
        if line.starts_with('[') {
            in_service = line == "[Service]";
        } else if in_service
            && !line.starts_with('#')
            && let Some((k, v)) = line.split_once('=')
        {
            settings.push((k.to_owned(), v.to_owned()));
        }
    }
    settings
}

fn has(settings: &[(String, String)], key: &str, value: &str) -> bool {
    settings.iter().any(|(k, v)| k == key && v == value)
}

#[test]
fn the_units_verify_without_a_warning() {
    if Command::new("systemd-analyze")
        .arg("--version")
        .output()
        .is_err()
    {
        eprintln!("systemd-analyze is not installed here: the units were not verified");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let mut paths = Vec::new();
    for name in ["village.service", "village-runner.service"] {
        // verify checks that ExecStart's program exists: point it at the binary under test.
        let text = unit(name).replace("/usr/local/bin/village", env!("CARGO_BIN_EXE_village"));
        let path = dir.path().join(name);
        std::fs::write(&path, text).unwrap();
        paths.push(path);
    }
    let out = Command::new("systemd-analyze")
        .arg("verify")
        .args(&paths)
        .output()
        .unwrap();
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success() && said.trim().is_empty(), "{said}");
}

#[test]
fn the_server_unit_is_hardened() {
    let s = service_settings(&unit("village.service"));
    for (key, value) in [
        ("User", "village"),
        ("StateDirectory", "village"),
        ("StateDirectoryMode", "0700"),
        ("UMask", "0077"),
        ("LimitNOFILE", "65536"),
        ("NoNewPrivileges", "yes"),
        ("CapabilityBoundingSet", ""),
        ("ProtectSystem", "strict"),
        ("ProtectHome", "yes"),
        ("PrivateTmp", "yes"),
        ("PrivateDevices", "yes"),
        ("MemoryDenyWriteExecute", "yes"),
        ("RestrictAddressFamilies", "AF_INET AF_INET6 AF_UNIX"),
        ("SystemCallFilter", "@system-service"),
        ("KillSignal", "SIGTERM"),
    ] {
        assert!(has(&s, key, value), "village.service lacks {key}={value}");
    }
    assert!(
        s.iter().any(|(k, v)| k == "ExecStart"
            && v.contains(" serve ")
            && v.contains("/var/lib/village")),
        "{s:?}"
    );
}

#[test]
fn the_runner_unit_is_hardened_and_takes_its_sessions_down_with_it() {
    let s = service_settings(&unit("village-runner.service"));
    for (key, value) in [
        ("User", "village-runner"),
        ("StateDirectory", "village-runner"),
        ("Environment", "HOME=/var/lib/village-runner"),
        ("UMask", "0077"),
        ("KillMode", "control-group"),
        ("NoNewPrivileges", "yes"),
        ("CapabilityBoundingSet", ""),
        ("ProtectSystem", "strict"),
        ("ProtectHome", "yes"),
        ("PrivateTmp", "yes"),
    ] {
        assert!(
            has(&s, key, value),
            "village-runner.service lacks {key}={value}"
        );
    }
    // Agents run JIT runtimes (Node): W^X would break them.
    assert!(!s.iter().any(|(k, _)| k == "MemoryDenyWriteExecute"));
    let exec = s.iter().find(|(k, _)| k == "ExecStart").unwrap();
    assert!(
        exec.1.contains(" runner ") && exec.1.contains("--work-dir /var/lib/village-runner/work")
    );
}
