//! `packaging/`: the systemd units are valid (as `systemd-analyze verify` reads them, with no
//! warning) and keep the hardening an operator relies on; the Debian package (cargo-deb, from
//! the binary under test) holds what it should, installs, upgrades, removes and purges in a
//! throwaway root, and deletes data on purge only; `install.sh` lays out the same files under a
//! root, keeps an existing configuration and uninstalls without losing data; the Dockerfile and
//! the compose file hold together (and the image builds where a Docker daemon runs).
#![allow(clippy::unwrap_used)]

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::OnceLock;

fn repo() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

fn read(relative: &str) -> String {
    std::fs::read_to_string(repo().join(relative))
        .unwrap_or_else(|e| panic!("reading {relative}: {e}"))
}

fn unit(name: &str) -> String {
    read(&format!("packaging/{name}"))
}

/// Runs `cmd` (stdin closed) and fails the test with its output unless it exits 0.
fn run(cmd: &mut Command) -> Output {
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed ({}):\n{}{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Whether `program ARGS` runs here and exits 0.
fn available(program: &str, args: &[&str]) -> bool {
    Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

fn mode(path: &Path) -> u32 {
    std::fs::metadata(path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .permissions()
        .mode()
        & 0o7777
}

fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| o.stdout.trim_ascii() == b"0")
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
        let text = unit(name).replace("/usr/bin/village", env!("CARGO_BIN_EXE_village"));
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

#[test]
fn the_units_run_the_binary_where_the_deb_puts_it() {
    for name in ["village.service", "village-runner.service"] {
        let s = service_settings(&unit(name));
        let exec = s.iter().find(|(k, _)| k == "ExecStart").unwrap();
        assert!(exec.1.starts_with("/usr/bin/village "), "{name}: {exec:?}");
    }
    let manifest = read("Cargo.toml");
    assert!(
        manifest.contains(r#"["target/release/village", "usr/bin/", "755"]"#),
        "Cargo.toml's [package.metadata.deb] installs the binary elsewhere than /usr/bin"
    );
}

// ---- the Debian package -----------------------------------------------------------------------

/// The version of cargo-deb that scripts/deb.sh pins.
fn pinned_cargo_deb() -> String {
    read("scripts/deb.sh")
        .lines()
        .find_map(|l| l.strip_prefix("version="))
        .expect("scripts/deb.sh sets version=")
        .to_owned()
}

/// The .deb of the binary under test, made once for the tests that need it, without a release
/// build: cargo-deb packages the binary already built (stripped, lightly compressed). `None`
/// when cargo-deb is not installed.
fn deb() -> Option<&'static Path> {
    static DEB: OnceLock<Option<PathBuf>> = OnceLock::new();
    DEB.get_or_init(build_deb).as_deref()
}

fn build_deb() -> Option<PathBuf> {
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let Some(version) = Command::new(&cargo)
        .args(["deb", "--version"])
        .output()
        .ok()
        .filter(|o| o.status.success())
    else {
        eprintln!(
            "cargo-deb is not installed: the Debian package was not built or checked \
             (`./scripts/deb.sh --install-only` installs it; scripts/test.sh does)"
        );
        return None;
    };
    let installed = stdout(&version).trim().to_owned();
    let pinned = pinned_cargo_deb();
    if installed != format!("cargo-deb {pinned}") {
        eprintln!("{installed} is installed, scripts/deb.sh pins {pinned}: packaging with it");
    }
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("packaging-deb");
    let _ = std::fs::remove_dir_all(&dir);
    // The asset target/release/village is read from <target dir>/release/: a target dir of its
    // own whose release/village is the binary under test.
    let release = dir.join("target").join("release");
    std::fs::create_dir_all(&release).unwrap();
    std::os::unix::fs::symlink(env!("CARGO_BIN_EXE_village"), release.join("village")).unwrap();
    let deb = dir.join("village.deb");
    run(Command::new(&cargo)
        .args(["deb", "--no-build", "--strip", "--fast", "--manifest-path"])
        .arg(repo().join("Cargo.toml"))
        .arg("--output")
        .arg(&deb)
        .env("CARGO_TARGET_DIR", dir.join("target")));
    Some(deb)
}

fn dpkg_deb(deb: &Path, args: &[&str]) -> String {
    stdout(&run(Command::new("dpkg-deb").args(args).arg(deb)))
}

#[test]
fn the_deb_holds_the_binary_the_units_the_config_and_the_maintainer_scripts() {
    let Some(deb) = deb() else { return };
    if !available("dpkg-deb", &["--version"]) {
        eprintln!("dpkg-deb is not installed: the Debian package was built but not read");
        return;
    }
    // `-rwxr-xr-x 0/0 38677824 2026-01-01 00:00 ./usr/bin/village`
    let contents = dpkg_deb(deb, &["--contents"]);
    for (path, mode) in [
        ("./usr/bin/village", "-rwxr-xr-x"),
        ("./lib/systemd/system/village.service", "-rw-r--r--"),
        ("./lib/systemd/system/village-runner.service", "-rw-r--r--"),
        ("./etc/village/village.toml", "-rw-r-----"),
        ("./usr/share/doc/village/README.md", "-rw-r--r--"),
        ("./usr/share/doc/village/copyright", "-rw-r--r--"),
    ] {
        let entry = contents
            .lines()
            .map(|l| l.split_whitespace().collect::<Vec<_>>())
            .find(|w| w.last() == Some(&path));
        assert_eq!(
            entry.as_ref().map(|w| w[0]),
            Some(mode),
            "{path} in the .deb:\n{contents}"
        );
        assert_eq!(
            entry.as_ref().map(|w| w[1]),
            Some("0/0"),
            "{path} belongs to root"
        );
    }

    let control = dpkg_deb(deb, &["--field"]);
    let field = |name: &str| {
        control
            .lines()
            .find_map(|l| l.strip_prefix(&format!("{name}: ")).map(str::to_owned))
    };
    assert_eq!(field("Package").as_deref(), Some("village"));
    assert_eq!(
        field("Version"),
        Some(format!("{}-1", env!("CARGO_PKG_VERSION")))
    );
    assert_eq!(field("Section").as_deref(), Some("net"));
    assert_eq!(field("Priority").as_deref(), Some("optional"));
    assert!(field("Maintainer").is_some());
    let depends = field("Depends").unwrap_or_default();
    assert!(depends.split(", ").any(|d| d == "adduser"), "{depends}");
    // $auto: dpkg-shlibdeps (dpkg-dev) names the shared libraries' packages.
    if available("dpkg-shlibdeps", &["--version"]) {
        assert!(depends.contains("libc6"), "{depends}");
    }

    // The configuration is a conffile: upgrades keep an administrator's changes.
    let conffiles = stdout(&run(Command::new("dpkg-deb")
        .arg("--info")
        .arg(deb)
        .arg("conffiles")));
    assert_eq!(conffiles.trim(), "/etc/village/village.toml");
    // `     3462 bytes,    86 lines   *  postinst             #!/bin/sh`: `*`, executable.
    let info = dpkg_deb(deb, &["--info"]);
    for script in ["postinst", "prerm", "postrm"] {
        assert!(
            info.lines().any(|l| l
                .split_whitespace()
                .collect::<Vec<_>>()
                .windows(2)
                .any(|w| w == ["*", script])),
            "no executable {script} in the .deb:\n{info}"
        );
        let packaged = stdout(&run(Command::new("dpkg-deb")
            .arg("--info")
            .arg(deb)
            .arg(script)));
        assert_eq!(packaged, read(&format!("packaging/debian/{script}")));
    }

    // The files are the repository's, and the packaged (stripped) binary runs.
    let x = tempfile::tempdir().unwrap();
    run(Command::new("dpkg-deb").arg("-x").arg(deb).arg(x.path()));
    for name in ["village.service", "village-runner.service"] {
        let packaged =
            std::fs::read_to_string(x.path().join("lib/systemd/system").join(name)).unwrap();
        assert_eq!(packaged, unit(name));
    }
    assert_eq!(
        std::fs::read_to_string(x.path().join("etc/village/village.toml")).unwrap(),
        read("packaging/village.toml")
    );
    let version = stdout(&run(
        Command::new(x.path().join("usr/bin/village")).arg("--version")
    ));
    assert!(version.contains(env!("CARGO_PKG_VERSION")), "{version}");
}

/// Stand-ins for the tools that would change the host (accounts, services): each one appends
/// its command line to `calls` and exits with `status`.
fn stub_tools(dir: &Path, calls: &Path, tools: &[(&str, u8)]) {
    std::fs::create_dir_all(dir).unwrap();
    for (tool, status) in tools {
        let path = dir.join(tool);
        std::fs::write(
            &path,
            format!(
                "#!/bin/sh\necho \"{tool} $*\" >> '{}'\nexit {status}\n",
                calls.display()
            ),
        )
        .unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
    }
}

/// The tools with which a maintainer script could reach the host's accounts and services.
const HOST_TOOLS: &[&str] = &[
    "adduser",
    "addgroup",
    "deluser",
    "delgroup",
    "useradd",
    "userdel",
    "groupadd",
    "groupdel",
    "usermod",
    "systemctl",
    "deb-systemd-invoke",
];

fn calls(log: &Path) -> String {
    std::fs::read_to_string(log).unwrap_or_default()
}

#[test]
fn the_deb_installs_upgrades_removes_and_purges_in_a_throwaway_root() {
    let Some(deb) = deb() else { return };
    if !available("dpkg", &["--version"]) {
        eprintln!("dpkg is not installed: the package's life in a throwaway root was not run");
        return;
    }
    if !is_root() {
        eprintln!(
            "not root: dpkg cannot install into a throwaway root (it gives files to root), so \
             the package's install, upgrade, remove and purge were not run"
        );
        return;
    }
    let sandbox = tempfile::tempdir().unwrap();
    let root = sandbox.path().join("root");
    for dir in [
        "var/lib/dpkg/info",
        "var/lib/dpkg/updates",
        "var/lib/dpkg/triggers",
    ] {
        std::fs::create_dir_all(root.join(dir)).unwrap();
    }
    std::fs::write(root.join("var/lib/dpkg/status"), "").unwrap();
    // The maintainer scripts run on the host (--force-script-chrootless, which sets DPKG_ROOT):
    // they must not reach its accounts or services. Stand-ins that fail catch any attempt.
    let log = sandbox.path().join("calls");
    let stubs = sandbox.path().join("stubs");
    let tools: Vec<(&str, u8)> = HOST_TOOLS.iter().map(|t| (*t, 1)).collect();
    stub_tools(&stubs, &log, &tools);
    let path = format!(
        "{}:{}:/usr/sbin:/sbin",
        stubs.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let dpkg = |args: &[&str]| {
        let out = run(Command::new("dpkg")
            .arg(format!("--root={}", root.display()))
            .args([
                "--force-script-chrootless",
                "--force-depends",
                "--log=/dev/null",
            ])
            .args(args)
            .env("PATH", &path)
            .env_remove("DPKG_ROOT")
            .env_remove("DPKG_ADMINDIR"));
        format!("{}{}", stdout(&out), String::from_utf8_lossy(&out.stderr))
    };
    let deb = deb.to_str().unwrap();

    let said = dpkg(&["--install", deb]);
    assert!(
        said.contains("not creating the village user"),
        "postinst says what it left out: {said}"
    );
    assert_eq!(mode(&root.join("usr/bin/village")), 0o755);
    assert_eq!(mode(&root.join("etc/village")), 0o750);
    assert_eq!(mode(&root.join("etc/village/village.toml")), 0o640);
    for name in ["village.service", "village-runner.service"] {
        assert!(root.join("lib/systemd/system").join(name).is_file());
    }
    // deb-systemd-helper (init-system-helpers) enables the server for the next boot, not the
    // runner (it needs /etc/village/runner.env first).
    if Path::new("/usr/bin/deb-systemd-helper").exists() {
        let wants = root.join("etc/systemd/system/multi-user.target.wants");
        assert!(wants.join("village.service").is_symlink());
        assert!(!wants.join("village-runner.service").exists());
    }

    // What the service and the administrator make.
    let config = root.join("etc/village/village.toml");
    let changed = format!("{}\n# changed here\n", read("packaging/village.toml"));
    std::fs::write(&config, &changed).unwrap();
    for (dir, file) in [
        ("var/lib/village", "village.redb"),
        ("var/lib/village-runner", "identity.json"),
    ] {
        std::fs::create_dir_all(root.join(dir)).unwrap();
        std::fs::write(root.join(dir).join(file), "data").unwrap();
    }

    // An upgrade (here to the same version) keeps the changed conffile and the data.
    dpkg(&["--install", deb]);
    assert_eq!(std::fs::read_to_string(&config).unwrap(), changed);
    assert!(root.join("var/lib/village/village.redb").is_file());

    // remove: the program goes, the configuration and the data stay.
    dpkg(&["--remove", "village"]);
    assert!(!root.join("usr/bin/village").exists());
    assert!(!root.join("lib/systemd/system/village.service").exists());
    assert_eq!(std::fs::read_to_string(&config).unwrap(), changed);
    assert!(root.join("var/lib/village/village.redb").is_file());
    assert!(root.join("var/lib/village-runner/identity.json").is_file());

    // purge: everything goes.
    let said = dpkg(&["--purge", "village"]);
    assert!(said.contains("no users removed"), "{said}");
    for gone in ["etc/village", "var/lib/village", "var/lib/village-runner"] {
        assert!(!root.join(gone).exists(), "{gone} is left after purge");
    }
    assert_eq!(calls(&log), "", "a maintainer script reached the host");
}

/// Runs a maintainer script of packaging/debian/ with DPKG_ROOT set to `root` and the host's
/// tools replaced by stand-ins.
fn maintainer_script(script: &str, args: &[&str], root: &Path, stubs: &Path) -> Output {
    run(Command::new("sh")
        .arg(repo().join("packaging/debian").join(script))
        .args(args)
        .env("DPKG_ROOT", root)
        .env(
            "PATH",
            format!(
                "{}:{}",
                stubs.display(),
                std::env::var("PATH").unwrap_or_default()
            ),
        ))
}

#[test]
fn the_maintainer_scripts_delete_data_on_purge_only() {
    let sandbox = tempfile::tempdir().unwrap();
    let root = sandbox.path().join("root");
    let stubs = sandbox.path().join("stubs");
    let log = sandbox.path().join("calls");
    let mut tools: Vec<(&str, u8)> = HOST_TOOLS.iter().map(|t| (*t, 1)).collect();
    // deb-systemd-helper only records; no statoverride is set.
    tools.extend([("deb-systemd-helper", 0), ("dpkg-statoverride", 1)]);
    stub_tools(&stubs, &log, &tools);
    std::fs::create_dir_all(root.join("etc/village")).unwrap();
    std::fs::write(root.join("etc/village/village.toml"), "").unwrap();
    for dir in ["var/lib/village", "var/lib/village-runner"] {
        std::fs::create_dir_all(root.join(dir)).unwrap();
        std::fs::write(root.join(dir).join("data"), "data").unwrap();
    }

    maintainer_script("postinst", &["configure", ""], &root, &stubs);
    assert_eq!(mode(&root.join("etc/village")), 0o750);
    assert_eq!(mode(&root.join("etc/village/village.toml")), 0o640);
    assert!(calls(&log).contains("deb-systemd-helper enable village.service"));
    assert!(!calls(&log).contains("enable village-runner.service"));

    // Every other postrm action keeps the data.
    for action in [
        "remove",
        "upgrade",
        "failed-upgrade",
        "abort-install",
        "abort-upgrade",
        "disappear",
    ] {
        maintainer_script("postrm", &[action, "0.1.0-1"], &root, &stubs);
        maintainer_script("prerm", &[action, "0.1.0-1"], &root, &stubs);
        for dir in ["var/lib/village", "var/lib/village-runner"] {
            assert!(
                root.join(dir).join("data").is_file(),
                "postrm {action} deleted {dir}"
            );
        }
        assert!(root.join("etc/village/village.toml").is_file());
    }
    std::fs::remove_file(root.join("etc/village/village.toml")).unwrap();
    maintainer_script("postrm", &["purge"], &root, &stubs);
    for gone in ["var/lib/village", "var/lib/village-runner", "etc/village"] {
        assert!(!root.join(gone).exists(), "postrm purge left {gone}");
    }
    let called = calls(&log);
    for tool in HOST_TOOLS {
        assert!(
            !called.lines().any(|l| l.starts_with(&format!("{tool} "))),
            "with DPKG_ROOT set, a maintainer script ran {tool}:\n{called}"
        );
    }

    // Without DPKG_ROOT, postrm removes the users too: in the purge branch only, as the data.
    let postrm = read("packaging/debian/postrm");
    let start = postrm.find("\npurge)").expect("postrm has a purge branch");
    let end = start
        + postrm[start..]
            .find("\n    ;;")
            .expect("the purge branch ends");
    let (purge, rest) = (
        &postrm[start..end],
        format!("{}{}", &postrm[..start], &postrm[end..]),
    );
    for destructive in ["rm -rf", "deluser", "delgroup"] {
        assert!(purge.contains(destructive), "purge does not {destructive}");
        assert!(
            !rest.contains(destructive),
            "postrm runs {destructive} outside its purge branch"
        );
    }
}

// ---- install.sh -------------------------------------------------------------------------------

fn install_sh(args: &[&str]) -> Output {
    Command::new("sh")
        .arg(repo().join("packaging/install.sh"))
        .args(args)
        .stdin(Stdio::null())
        .output()
        .unwrap()
}

fn install_sh_ok(args: &[&str]) -> String {
    let out = install_sh(args);
    let said = format!("{}{}", stdout(&out), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "install.sh {args:?}: {said}");
    said
}

#[test]
fn the_install_script_lays_out_the_files_under_a_root_and_uninstalls_keeping_data() {
    let sandbox = tempfile::tempdir().unwrap();
    // A stand-in for the binary: install.sh copies it, it never runs it.
    let binary = sandbox.path().join("village");
    std::fs::write(&binary, "#!/bin/sh\necho village 0.0.0\n").unwrap();
    let root = sandbox.path().join("root");
    std::fs::create_dir(&root).unwrap();
    let args = |more: &[&str]| -> Vec<String> {
        let mut all = vec![
            "--root".to_owned(),
            root.display().to_string(),
            "--binary".to_owned(),
            binary.display().to_string(),
        ];
        all.extend(more.iter().map(|s| s.to_string()));
        all
    };
    let call = |more: &[&str]| {
        let all = args(more);
        install_sh_ok(&all.iter().map(String::as_str).collect::<Vec<_>>())
    };

    let said = call(&[]);
    for skipped in [
        "creating the village user",
        "creating the village-runner user",
        "systemctl",
    ] {
        assert!(
            said.lines()
                .any(|l| l.contains("skipped (--root)") && l.contains(skipped)),
            "install.sh --root does not say it skipped {skipped}: {said}"
        );
    }
    let bin = root.join("usr/local/bin/village");
    assert_eq!(mode(&bin), 0o755);
    assert_eq!(
        std::fs::read(&bin).unwrap(),
        std::fs::read(&binary).unwrap()
    );
    let units = root.join("etc/systemd/system");
    for name in ["village.service", "village-runner.service"] {
        let path = units.join(name);
        assert_eq!(mode(&path), 0o644);
        // The unit as in packaging/, but running the binary where install.sh put it.
        let text = std::fs::read_to_string(&path).unwrap();
        assert_eq!(
            text,
            unit(name).replace(
                "ExecStart=/usr/bin/village",
                "ExecStart=/usr/local/bin/village"
            )
        );
    }
    let config = root.join("etc/village/village.toml");
    assert_eq!(mode(&root.join("etc/village")), 0o750);
    assert_eq!(mode(&config), 0o640);
    assert_eq!(
        std::fs::read_to_string(&config).unwrap(),
        read("packaging/village.toml")
    );

    // Again: the binary and the units are replaced, the configuration is the administrator's.
    std::fs::write(&config, "[server]\nlisten = \"127.0.0.1:9000\"\n").unwrap();
    std::fs::write(&binary, "#!/bin/sh\necho village 0.0.1\n").unwrap();
    let said = call(&[]);
    assert!(
        said.contains("kept the existing /etc/village/village.toml"),
        "{said}"
    );
    assert_eq!(
        std::fs::read_to_string(&config).unwrap(),
        "[server]\nlisten = \"127.0.0.1:9000\"\n"
    );
    assert_eq!(
        std::fs::read(&bin).unwrap(),
        std::fs::read(&binary).unwrap()
    );
    assert_eq!(mode(&config), 0o640);

    // Uninstall: the program and the units go; the configuration and the data stay.
    for dir in ["var/lib/village", "var/lib/village-runner"] {
        std::fs::create_dir_all(root.join(dir)).unwrap();
        std::fs::write(root.join(dir).join("data"), "data").unwrap();
    }
    call(&["--uninstall"]);
    assert!(!bin.exists());
    assert!(!units.join("village.service").exists());
    assert!(!units.join("village-runner.service").exists());
    assert!(config.is_file());
    assert!(root.join("var/lib/village/data").is_file());
    assert!(root.join("var/lib/village-runner/data").is_file());
    // --purge: they go too.
    let said = call(&["--uninstall", "--purge"]);
    assert!(
        said.contains("skipped (--root): removing the village user"),
        "{said}"
    );
    for gone in ["etc/village", "var/lib/village", "var/lib/village-runner"] {
        assert!(!root.join(gone).exists(), "--purge left {gone}");
    }

    // --prefix moves the binary and the units' ExecStart with it.
    call(&["--prefix", "/usr"]);
    let text = std::fs::read_to_string(units.join("village.service")).unwrap();
    assert_eq!(text, unit("village.service"));
    assert!(root.join("usr/bin/village").is_file());

    // A wrong command line is refused with exit 2 and changes nothing.
    for bad in [
        vec!["--frobnicate"],
        vec!["--prefix", "relative/dir"],
        vec!["--purge"],
        vec!["--binary"],
    ] {
        let all = args(&bad);
        let out = install_sh(&all.iter().map(String::as_str).collect::<Vec<_>>());
        assert_eq!(out.status.code(), Some(2), "install.sh {bad:?}");
    }
    let out = install_sh(&[
        "--root",
        &root.display().to_string(),
        "--binary",
        "/nonexistent",
    ]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("/nonexistent: no such file"));
}

#[test]
fn the_shell_scripts_parse_and_pass_shellcheck() {
    let scripts = [
        ("sh", "packaging/install.sh"),
        ("sh", "packaging/debian/postinst"),
        ("sh", "packaging/debian/prerm"),
        ("sh", "packaging/debian/postrm"),
        ("bash", "scripts/deb.sh"),
    ];
    for (shell, script) in scripts {
        let path = repo().join(script);
        assert_eq!(mode(&path) & 0o111, 0o111, "{script} is not executable");
        let first = read(script).lines().next().unwrap_or_default().to_owned();
        assert!(
            first.starts_with("#!") && first.contains(shell),
            "{script}: {first}"
        );
        run(Command::new(shell).arg("-n").arg(&path));
        // POSIX sh proper: dash, where installed (Debian's /bin/sh).
        if shell == "sh" && available("dash", &["-c", "true"]) {
            run(Command::new("dash").arg("-n").arg(&path));
        }
    }
    if !available("shellcheck", &["--version"]) {
        eprintln!("shellcheck is not installed here: the scripts were only parsed");
        return;
    }
    run(Command::new("shellcheck").args(scripts.iter().map(|(_, s)| repo().join(s))));
}

// ---- the container image ----------------------------------------------------------------------

/// The instructions of a Dockerfile: (KEYWORD, arguments), continuation lines joined and
/// comment lines dropped.
fn dockerfile() -> Vec<(String, String)> {
    let mut out = Vec::new();
    let mut current = String::new();
    for line in read("packaging/Dockerfile").lines() {
        let trimmed = line.trim();
        if trimmed.starts_with('#') || (trimmed.is_empty() && current.is_empty()) {
            continue;
        }
        match trimmed.strip_suffix('\\') {
            Some(part) => {
                current.push_str(part);
                current.push(' ');
            }
            None => {
                current.push_str(trimmed);
                let (keyword, args) = current.split_once(' ').unwrap_or((&current, ""));
                out.push((keyword.to_ascii_uppercase(), args.trim().to_owned()));
                current.clear();
            }
        }
    }
    out
}

/// The `KEY=value` pairs of the last stage's ENV instructions.
fn dockerfile_env(instructions: &[(String, String)]) -> Vec<(String, String)> {
    let last_from = instructions.iter().rposition(|(k, _)| k == "FROM").unwrap();
    instructions[last_from..]
        .iter()
        .filter(|(k, _)| k == "ENV")
        .flat_map(|(_, args)| {
            args.split_whitespace()
                .map(|pair| {
                    let (k, v) = pair.split_once('=').expect("ENV KEY=value");
                    (k.to_owned(), v.to_owned())
                })
                .collect::<Vec<_>>()
        })
        .collect()
}

#[test]
fn the_dockerfile_builds_in_two_stages_and_runs_as_a_user_with_a_volume_and_a_health_check() {
    let ins = dockerfile();
    let all = |keyword: &str| -> Vec<&str> {
        ins.iter()
            .filter(|(k, _)| k == keyword)
            .map(|(_, a)| a.as_str())
            .collect()
    };
    let from = all("FROM");
    assert!(
        from.len() >= 2,
        "a build stage and a runtime stage: {from:?}"
    );
    // The builder links against the glibc of the runtime image: the same Debian release.
    let runtime = from.last().unwrap();
    let release = runtime
        .strip_prefix("debian:")
        .and_then(|tag| tag.split('-').next())
        .expect("the runtime stage is a Debian image");
    assert!(
        from[0].starts_with("rust:")
            && from[0].contains(release)
            && from[0].ends_with(" AS builder"),
        "the builder is the official Rust image on Debian {release}: {}",
        from[0]
    );
    assert!(
        all("RUN")
            .iter()
            .any(|r| r.contains("cargo build --release --locked")),
        "the image builds with the lock file"
    );
    assert!(all("COPY").iter().any(|c| c.starts_with("--from=builder ")));

    let env = dockerfile_env(&ins);
    let var = |name: &str| {
        env.iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
            .unwrap_or_else(|| panic!("the image sets no {name}"))
    };
    let data_dir = var("VILLAGE_SERVER_DATA_DIR");
    assert_eq!(var("VILLAGE_RUNNER_DATA_DIR"), data_dir);
    let user = all("USER");
    let uid = user.last().expect("a USER").split(':').next().unwrap();
    assert!(uid != "root" && uid != "0", "the image runs as root");
    assert!(
        all("RUN")
            .iter()
            .any(|r| r.contains(&format!("--uid {uid} "))),
        "USER {uid} is not the user the image creates"
    );
    assert!(
        all("VOLUME").iter().any(|v| v
            .split_whitespace()
            .any(|p| p.trim_matches(['[', ']', '"', ',']) == data_dir)),
        "no VOLUME for the data dir {data_dir}"
    );
    let port = var("VILLAGE_SERVER_LISTEN").rsplit(':').next().unwrap();
    assert!(all("EXPOSE").contains(&port), "EXPOSE {port}");
    let health = all("HEALTHCHECK");
    assert_eq!(health.len(), 1);
    assert!(
        health[0].contains(" CMD ") && health[0].contains("/readyz"),
        "{}",
        health[0]
    );
    assert_eq!(all("ENTRYPOINT"), [r#"["village"]"#]);
    assert_eq!(all("CMD"), [r#"["serve"]"#]);

    // The image's settings, and the compose file's for the server, are a configuration the
    // server accepts (the key names, and authentication stays on for a non-loopback address).
    let compose = yaml_paths(&read("packaging/compose.yaml"));
    let mut check = Command::new(env!("CARGO_BIN_EXE_village"));
    check
        .arg("check-config")
        .arg(repo().join("packaging/village.toml"))
        .env_clear()
        .envs(env.iter().map(|(k, v)| (k.as_str(), v.as_str())));
    for (path, value) in &compose {
        if let Some(name) = path.strip_prefix("services.server.environment.") {
            check.env(name, value.trim_matches('"'));
        }
    }
    let said = stdout(&run(&mut check));
    assert!(
        said.contains(&format!("listen 0.0.0.0:{port}, data dir {data_dir}")),
        "{said}"
    );
    // The runner's variables are the runner's options.
    let help = stdout(&run(
        Command::new(env!("CARGO_BIN_EXE_village")).args(["runner", "--help"])
    ));
    for name in [
        "VILLAGE_RUNNER_DATA_DIR",
        "VILLAGE_SERVER",
        "VILLAGE_JOIN_TOKEN",
    ] {
        assert!(
            help.contains(&format!("env: {name}")),
            "village runner reads no {name}"
        );
    }
}

/// The scalars of a YAML file written in block style (mappings, lists of scalars; no flow
/// collections, anchors or multi-line strings), as (path, value): `services.server.image` →
/// `village:latest`, list items as `path[]`. Panics on anything else: the compose file keeps to
/// this subset.
fn yaml_paths(text: &str) -> Vec<(String, String)> {
    let mut stack: Vec<(usize, String)> = Vec::new();
    let mut out = Vec::new();
    for (n, line) in text.lines().enumerate() {
        let trimmed = line.trim_start();
        if trimmed.is_empty() || trimmed.starts_with('#') {
            continue;
        }
        let indent = line.len() - trimmed.len();
        assert!(
            !line[..indent].contains('\t'),
            "compose.yaml:{}: a tab in the indentation",
            n + 1
        );
        while stack.last().is_some_and(|(i, _)| *i >= indent) {
            stack.pop();
        }
        let parent = stack
            .iter()
            .map(|(_, k)| k.as_str())
            .collect::<Vec<_>>()
            .join(".");
        if let Some(item) = trimmed.strip_prefix("- ") {
            out.push((format!("{parent}[]"), item.trim().to_owned()));
            continue;
        }
        let (key, value) = trimmed
            .split_once(": ")
            .or_else(|| trimmed.strip_suffix(':').map(|k| (k, "")))
            .unwrap_or_else(|| panic!("compose.yaml:{}: not `key: value`: {line}", n + 1));
        assert!(
            !key.is_empty() && !key.contains(' ') && !value.starts_with(['{', '&', '*', '|', '>']),
            "compose.yaml:{}: outside the checked subset: {line}",
            n + 1
        );
        let path = if parent.is_empty() {
            key.to_owned()
        } else {
            format!("{parent}.{key}")
        };
        if value.is_empty() {
            stack.push((indent, key.to_owned()));
        } else {
            out.push((path, value.to_owned()));
        }
    }
    out
}

#[test]
fn the_compose_file_runs_a_server_and_a_runner_of_the_image() {
    let text = read("packaging/compose.yaml");
    let paths = yaml_paths(&text);
    let get = |path: &str| {
        paths
            .iter()
            .find(|(p, _)| p == path)
            .map(|(_, v)| v.as_str())
            .unwrap_or_else(|| panic!("compose.yaml has no {path}"))
    };
    let list = |path: &str| -> Vec<&str> {
        paths
            .iter()
            .filter(|(p, _)| p == &format!("{path}[]"))
            .map(|(_, v)| v.trim_matches('"'))
            .collect()
    };
    let context = repo()
        .join("packaging")
        .join(get("services.server.build.context"));
    assert!(
        context
            .join(get("services.server.build.dockerfile"))
            .is_file()
    );
    assert_eq!(
        context.canonicalize().unwrap(),
        repo().canonicalize().unwrap(),
        "the build context is the repository"
    );
    assert_eq!(get("services.server.image"), get("services.runner.image"));
    let env = dockerfile_env(&dockerfile());
    let listen = &env
        .iter()
        .find(|(k, _)| k == "VILLAGE_SERVER_LISTEN")
        .unwrap()
        .1;
    let port = listen.rsplit(':').next().unwrap();
    assert!(
        list("services.server.ports")
            .iter()
            .any(|p| p.ends_with(&format!(":{port}"))),
        "the server's port {port} is not published"
    );
    assert_eq!(
        get("services.runner.environment.VILLAGE_SERVER"),
        format!("http://server:{port}")
    );
    assert_eq!(
        get("services.runner.depends_on.server.condition"),
        "service_healthy"
    );
    assert_eq!(get("services.runner.healthcheck.disable"), "true");
    assert!(get("services.runner.command").starts_with(r#"["runner","#));
    assert!(get("services.server.command").starts_with(r#"["serve""#));
    for service in ["server", "runner"] {
        assert_eq!(get(&format!("services.{service}.init")), "true");
        // Each keeps its state in a named volume of its own, at the image's data dir.
        let volumes = list(&format!("services.{service}.volumes"));
        let (name, at) = volumes[0].split_once(':').unwrap();
        assert_eq!(at, "/var/lib/village");
        assert!(
            text.lines().any(|l| l == format!("  {name}:")),
            "the volume {name} is not declared"
        );
    }
    let tops: Vec<&str> = text
        .lines()
        .filter(|l| !l.starts_with([' ', '#']) && !l.is_empty())
        .collect();
    assert_eq!(tops, ["name: village", "services:", "volumes:"]);
    // A real YAML parser, where there is one.
    if available("python3", &["-c", "import yaml"]) {
        run(Command::new("python3")
            .args(["-c", "import sys, yaml; yaml.safe_load(open(sys.argv[1]))"])
            .arg(repo().join("packaging/compose.yaml")));
    }
}

/// Removes a container and its anonymous volume (the data dir) when dropped, the test passing
/// or not.
struct Container(String);

impl Drop for Container {
    fn drop(&mut self) {
        let _ = Command::new("docker")
            .args(["rm", "--force", "--volumes", &self.0])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }
}

#[test]
fn the_image_builds_and_its_server_becomes_healthy_where_docker_runs() {
    if !available("docker", &["info"]) {
        eprintln!(
            "no Docker daemon answers here (`docker info` failed): the image was not built; the \
             Dockerfile and compose.yaml were checked statically only"
        );
        return;
    }
    let tag = "village:packaging-test";
    let mut build = Command::new("docker");
    build
        .args(["build", "--file", "packaging/Dockerfile", "--tag", tag, "."])
        .current_dir(repo());
    if !available("docker", &["buildx", "version"]) {
        // Without the buildx plugin, the classic builder (the Dockerfile needs nothing more).
        build.env("DOCKER_BUILDKIT", "0");
    }
    run(&mut build);
    let version = stdout(&run(Command::new("docker").args([
        "run",
        "--rm",
        tag,
        "--version",
    ])));
    assert!(version.contains(env!("CARGO_PKG_VERSION")), "{version}");

    // The server starts as the image's user with the image's settings, and its health check
    // passes (checked every second here instead of every 30).
    let id = stdout(&run(Command::new("docker").args([
        "run",
        "--detach",
        "--init",
        "--health-interval=1s",
        tag,
    ])))
    .trim()
    .to_owned();
    let container = Container(id);
    let mut status = String::new();
    for _ in 0..60 {
        status = stdout(&run(Command::new("docker").args([
            "inspect",
            "--format",
            "{{.State.Health.Status}}",
            &container.0,
        ])))
        .trim()
        .to_owned();
        if status == "healthy" {
            break;
        }
        std::thread::sleep(std::time::Duration::from_secs(1));
    }
    let logs = Command::new("docker")
        .args(["logs", &container.0])
        .output()
        .unwrap();
    assert_eq!(
        status,
        "healthy",
        "{}",
        String::from_utf8_lossy(&logs.stderr)
    );
    let token = run(Command::new("docker").args([
        "exec",
        &container.0,
        "sh",
        "-c",
        "id -u; stat -c %a /var/lib/village /var/lib/village/admin-token",
    ]));
    let said = stdout(&token);
    assert_eq!(
        said.lines().collect::<Vec<_>>(),
        ["10001", "700", "600"],
        "{said}"
    );

    if available("docker", &["compose", "version"]) {
        run(Command::new("docker")
            .args([
                "compose",
                "--file",
                "packaging/compose.yaml",
                "config",
                "--quiet",
            ])
            .current_dir(repo()));
    } else {
        eprintln!(
            "the docker compose plugin is not installed: compose.yaml was checked statically only"
        );
    }
}
