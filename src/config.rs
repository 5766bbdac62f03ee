//! Configuration: defaults, then one TOML file, then `VILLAGE_<SECTION>_<KEY>` environment
//! variables, then command-line flags. Every key is known here by name; an unknown key or a
//! bad value stops the start with a message naming it.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

#[derive(Debug, Clone)]
pub struct Config {
    pub server: ServerConfig,
    pub sessions: SessionsConfig,
    pub runners: RunnersConfig,
    pub pipeline: PipelineConfig,
    pub websocket: WebsocketConfig,
    pub auth: AuthConfig,
    pub webhooks: WebhooksConfig,
    pub limits: LimitsConfig,
    pub audit: AuditConfig,
    /// Keys that were given under an old name, as `(old, new)`: the server warns at start.
    pub renamed_keys: Vec<(&'static str, &'static str)>,
}

#[derive(Debug, Clone)]
pub struct ServerConfig {
    pub listen: SocketAddr,
    pub data_dir: PathBuf,
    /// A request's head must arrive within this (also how long a keep-alive connection may
    /// wait for its next request).
    pub header_read_timeout: Duration,
    /// A connection that neither reads nor writes for this long is closed.
    pub idle_timeout: Duration,
    /// Open connections in all (WebSockets included); more are closed when accepted.
    pub max_connections: usize,
    /// Open connections from one address: generous, a NAT'd runner host or a proxy holds many.
    pub max_connections_per_ip: usize,
    /// `/readyz` fails while the data dir's filesystem has less free space than this.
    pub min_free_disk_bytes: u64,
    /// Memory the database may use to cache its pages.
    pub store_cache_bytes: usize,
    /// Where people reach this server (approval links start with it); `None`: `http://` and
    /// the address it listens on.
    pub public_url: Option<String>,
}

#[derive(Debug, Clone)]
pub struct SessionsConfig {
    pub max_sessions_per_org: u64,
    pub default_timeout: Duration,
    pub session_data_ttl: Duration,
    pub approval_timeout: Duration,
}

#[derive(Debug, Clone)]
pub struct RunnersConfig {
    pub heartbeat_timeout: Duration,
    pub max_runners_per_org: u64,
    pub default_capacity: u64,
    pub lost_after: Duration,
    pub restart_grace: Duration,
    /// The orgs whose sessions shared (org-less) runners may run; `None`: every org.
    pub shared_runner_orgs: Option<Vec<String>>,
}

#[derive(Debug, Clone)]
pub struct PipelineConfig {
    pub enable_auto_rollout: bool,
    pub default_channel: String,
    pub canary_duration: Duration,
    pub max_failure_rate: f64,
    pub min_sessions_for_verdict: u64,
    pub max_offline_rate: f64,
    /// Provider versions one runner's heartbeats may add to the version list per server start.
    pub max_discovered_versions_per_runner: usize,
}

#[derive(Debug, Clone)]
pub struct WebsocketConfig {
    pub heartbeat_interval: Duration,
    /// A dashboard connection that has not authenticated within this is closed.
    pub auth_timeout: Duration,
    /// Frames above this are answered with `MESSAGE_TOO_LARGE`; above twice this the
    /// connection is closed (1009) without reading the rest.
    pub max_frame_bytes: usize,
}

#[derive(Debug, Clone)]
pub struct WebhooksConfig {
    /// Let webhooks reach loopback, private, link-local and other reserved addresses (the
    /// admin's choice, for every org): off by default, so an org token cannot probe the
    /// server's own network.
    pub allow_private_targets: bool,
    /// Webhooks one org may register (and the admin, org-less).
    pub max_per_org: usize,
    /// PEM certificates of authorities trusted for `https://` targets besides the Mozilla
    /// roots built in (an internal CA).
    pub ca_file: Option<PathBuf>,
}

#[derive(Debug, Clone)]
pub struct AuditConfig {
    /// Entries older than this are deleted; `None` keeps them all.
    pub retention: Option<Duration>,
}

/// Request rate limits, in calls a minute (0: off). Bursts of a sixth of a minute's calls pass.
#[derive(Debug, Clone)]
pub struct LimitsConfig {
    /// Every `/api` request from one client address.
    pub per_ip_per_minute: u32,
    /// Authenticated REST calls of one token, runner reports apart.
    pub per_token_per_minute: u32,
    /// Heartbeats, output, usage and state reports of one token over REST.
    pub runner_reports_per_minute: u32,
}

#[derive(Debug, Clone)]
pub struct AuthConfig {
    /// Every caller is treated as an admin, REST and WebSockets alike: for local trials only,
    /// and refused on any address but loopback.
    pub disabled: bool,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            server: ServerConfig {
                listen: SocketAddr::from(([127, 0, 0, 1], 8080)),
                data_dir: PathBuf::from("./data"),
                header_read_timeout: Duration::from_secs(10),
                idle_timeout: Duration::from_secs(120),
                max_connections: 16_384,
                max_connections_per_ip: 1_024,
                min_free_disk_bytes: 64 * 1024 * 1024,
                store_cache_bytes: crate::store::DEFAULT_CACHE_BYTES,
                public_url: None,
            },
            sessions: SessionsConfig {
                max_sessions_per_org: 10,
                default_timeout: Duration::from_secs(60 * 60),
                session_data_ttl: Duration::from_secs(24 * 3600),
                approval_timeout: Duration::from_secs(1440 * 60),
            },
            runners: RunnersConfig {
                heartbeat_timeout: Duration::from_millis(30_000),
                max_runners_per_org: 10,
                default_capacity: 5,
                lost_after: Duration::from_millis(300_000),
                restart_grace: Duration::from_millis(300_000),
                shared_runner_orgs: None,
            },
            pipeline: PipelineConfig {
                enable_auto_rollout: false,
                default_channel: "stable".into(),
                canary_duration: Duration::from_secs(3600),
                max_failure_rate: 0.10,
                min_sessions_for_verdict: 20,
                max_offline_rate: 0.15,
                max_discovered_versions_per_runner: 20,
            },
            websocket: WebsocketConfig {
                heartbeat_interval: Duration::from_millis(30_000),
                auth_timeout: Duration::from_secs(10),
                max_frame_bytes: 1024 * 1024,
            },
            auth: AuthConfig { disabled: false },
            audit: AuditConfig {
                retention: Some(Duration::from_secs(365 * 24 * 3600)),
            },
            limits: LimitsConfig {
                per_ip_per_minute: 30_000,
                per_token_per_minute: 6_000,
                runner_reports_per_minute: 60_000,
            },
            webhooks: WebhooksConfig {
                allow_private_targets: false,
                max_per_org: 25,
                ca_file: None,
            },
            renamed_keys: Vec::new(),
        }
    }
}

/// A configuration problem, always naming the key.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("config file {path}: {message}")]
    File { path: String, message: String },
    #[error("unknown configuration key `{0}`")]
    UnknownKey(String),
    #[error("bad value for `{key}`: {message}")]
    BadValue { key: String, message: String },
}

/// A raw value before it is checked against the key's type.
enum Raw<'a> {
    Toml(&'a toml::Value),
    Env(&'a str),
}

impl Raw<'_> {
    fn describe(&self) -> String {
        match self {
            Raw::Toml(v) => format!("{v:?}"),
            Raw::Env(s) => format!("{s:?}"),
        }
    }
}

impl Config {
    /// Builds the configuration from an optional file and an environment.
    pub fn load(
        file: Option<&Path>,
        env: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Self, ConfigError> {
        let mut cfg = Config::default();
        if let Some(path) = file {
            let text = std::fs::read_to_string(path).map_err(|e| ConfigError::File {
                path: path.display().to_string(),
                message: e.to_string(),
            })?;
            cfg.apply_toml(&text).map_err(|e| match e {
                ConfigError::File { message, .. } => ConfigError::File {
                    path: path.display().to_string(),
                    message,
                },
                other => other,
            })?;
        }
        let mut vars: Vec<(String, String)> = env
            .into_iter()
            .filter(|(k, _)| k.starts_with("VILLAGE_") && !is_command_variable(k))
            .collect();
        vars.sort();
        for (name, value) in vars {
            let Some((section, key)) = env_key(&name) else {
                return Err(ConfigError::UnknownKey(name));
            };
            cfg.set(&section, &key, Raw::Env(&value))
                .map_err(|e| match e {
                    ConfigError::UnknownKey(_) => ConfigError::UnknownKey(name.clone()),
                    ConfigError::BadValue { message, .. } => ConfigError::BadValue {
                        key: name.clone(),
                        message,
                    },
                    other => other,
                })?;
        }
        cfg.validate()?;
        Ok(cfg)
    }

    pub fn apply_toml(&mut self, text: &str) -> Result<(), ConfigError> {
        let table: toml::Table = text
            .parse()
            .map_err(|e: toml::de::Error| ConfigError::File {
                path: String::new(),
                message: e.message().to_string(),
            })?;
        for (section, value) in &table {
            let Some(keys) = value.as_table() else {
                return Err(ConfigError::UnknownKey(section.clone()));
            };
            for (key, value) in keys {
                self.set(section, key, Raw::Toml(value))?;
            }
        }
        Ok(())
    }

    /// Refuses to serve with authentication off anywhere but on loopback: every caller would
    /// be an admin. Checked once the listen address is final (after command-line flags).
    pub fn check_exposure(&self) -> Result<(), ConfigError> {
        if self.auth.disabled && !self.server.listen.ip().is_loopback() {
            return Err(ConfigError::BadValue {
                key: "auth.disabled".into(),
                message: format!(
                    "authentication may be off only on a loopback address, not on {}",
                    self.server.listen
                ),
            });
        }
        Ok(())
    }

    fn validate(&self) -> Result<(), ConfigError> {
        let bad = |key: &str, message: &str| ConfigError::BadValue {
            key: key.into(),
            message: message.into(),
        };
        if self.sessions.max_sessions_per_org == 0 {
            return Err(bad("sessions.maxSessionsPerOrg", "must be at least 1"));
        }
        if self.runners.default_capacity == 0 {
            return Err(bad("runners.defaultCapacity", "must be at least 1"));
        }
        if self.websocket.heartbeat_interval < Duration::from_millis(1) {
            return Err(bad("websocket.heartbeatIntervalMs", "must be at least 1"));
        }
        if self.server.max_connections == 0 {
            return Err(bad("server.maxConnections", "must be at least 1"));
        }
        if self.server.max_connections_per_ip == 0 {
            return Err(bad("server.maxConnectionsPerIp", "must be at least 1"));
        }
        if self.server.idle_timeout <= self.websocket.heartbeat_interval {
            return Err(bad(
                "server.idleTimeoutMs",
                "must be longer than websocket.heartbeatIntervalMs, or idle sockets that answer pings are cut",
            ));
        }
        if self.websocket.max_frame_bytes < 1024 {
            return Err(bad("websocket.maxFrameBytes", "must be at least 1024"));
        }
        Ok(())
    }

    fn set(&mut self, section: &str, key: &str, raw: Raw<'_>) -> Result<(), ConfigError> {
        let name = format!("{section}.{key}");
        let bad = |message: String| ConfigError::BadValue {
            key: name.clone(),
            message,
        };
        match name.as_str() {
            "server.listen" => {
                self.server.listen =
                    string(&raw).and_then(|s| s.parse().ok()).ok_or_else(|| {
                        bad(format!(
                            "{} is not an address like 127.0.0.1:8080",
                            raw.describe()
                        ))
                    })?;
            }
            "server.publicUrl" => {
                let url = string(&raw)
                    .map(|s| s.trim_end_matches('/').to_owned())
                    .filter(|s| {
                        let rest = s
                            .strip_prefix("https://")
                            .or_else(|| s.strip_prefix("http://"));
                        rest.is_some_and(|r| {
                            !r.is_empty() && !r.starts_with('/') && !r.contains(char::is_whitespace)
                        })
                    })
                    .ok_or_else(|| {
                        bad(format!(
                            "{} is not an http:// or https:// URL like https://village.example.com",
                            raw.describe()
                        ))
                    })?;
                self.server.public_url = Some(url);
            }
            "server.dataDir" => {
                let s = string(&raw).filter(|s| !s.is_empty());
                self.server.data_dir =
                    PathBuf::from(s.ok_or_else(|| bad("expected a path".into()))?);
            }
            "server.headerReadTimeoutMs" => {
                self.server.header_read_timeout = duration(&raw, 1.0).map_err(bad)?
            }
            "server.idleTimeoutMs" => {
                self.server.idle_timeout = duration(&raw, 1.0).map_err(bad)?
            }
            "server.maxConnections" => {
                self.server.max_connections = count(&raw).map_err(bad)? as usize
            }
            "server.maxConnectionsPerIp" => {
                self.server.max_connections_per_ip = count(&raw).map_err(bad)? as usize
            }
            "server.minFreeDiskMb" => {
                self.server.min_free_disk_bytes =
                    count(&raw).map_err(bad)?.saturating_mul(1024 * 1024)
            }
            "server.storeCacheMb" => {
                let mb = usize::try_from(count(&raw).map_err(bad)?).unwrap_or(usize::MAX);
                self.server.store_cache_bytes = mb.saturating_mul(1024 * 1024)
            }
            "sessions.maxSessionsPerOrg" => {
                self.sessions.max_sessions_per_org = count(&raw).map_err(bad)?
            }
            "sessions.defaultTimeoutMinutes" => {
                self.sessions.default_timeout = duration(&raw, 60_000.0).map_err(bad)?
            }
            "sessions.sessionDataTtlHours" => {
                self.sessions.session_data_ttl = duration(&raw, 3_600_000.0).map_err(bad)?
            }
            "sessions.approvalTimeoutMinutes" => {
                self.sessions.approval_timeout = duration(&raw, 60_000.0).map_err(bad)?
            }
            "runners.heartbeatTimeoutMs" => {
                self.runners.heartbeat_timeout = duration(&raw, 1.0).map_err(bad)?
            }
            "runners.maxRunnersPerOrg" => {
                self.runners.max_runners_per_org = count(&raw).map_err(bad)?
            }
            "runners.defaultCapacity" => {
                self.runners.default_capacity = count(&raw).map_err(bad)?
            }
            "runners.lostAfterMs" => self.runners.lost_after = duration(&raw, 1.0).map_err(bad)?,
            "runners.restartGraceMs" => {
                self.runners.restart_grace = duration(&raw, 1.0).map_err(bad)?
            }
            "runners.sharedRunnerOrgs" => {
                self.runners.shared_runner_orgs = Some(org_list(&raw).map_err(bad)?)
            }
            "pipeline.enableAutoRollout" => {
                self.pipeline.enable_auto_rollout = boolean(&raw).map_err(bad)?
            }
            "pipeline.defaultChannel" => {
                self.pipeline.default_channel = string(&raw)
                    .filter(|s| s == "stable" || s == "beta")
                    .ok_or_else(|| bad(format!("{} is not `stable` or `beta`", raw.describe())))?;
            }
            "pipeline.canaryDurationMinutes" => {
                self.pipeline.canary_duration = duration(&raw, 60_000.0).map_err(bad)?
            }
            "pipeline.maxFailureRate" => {
                self.pipeline.max_failure_rate = rate(&raw).map_err(bad)?
            }
            "pipeline.minSessionsForVerdict" => {
                self.pipeline.min_sessions_for_verdict = count(&raw).map_err(bad)?
            }
            "pipeline.maxOfflineRate" => {
                self.pipeline.max_offline_rate = rate(&raw).map_err(bad)?
            }
            "pipeline.maxDiscoveredVersionsPerRunner" => {
                self.pipeline.max_discovered_versions_per_runner =
                    count(&raw).map_err(bad)? as usize
            }
            "websocket.heartbeatIntervalMs" => {
                self.websocket.heartbeat_interval = duration(&raw, 1.0).map_err(bad)?
            }
            "websocket.authTimeoutMs" => {
                self.websocket.auth_timeout = duration(&raw, 1.0).map_err(bad)?
            }
            "websocket.maxFrameBytes" => {
                self.websocket.max_frame_bytes = count(&raw).map_err(bad)? as usize
            }
            "limits.perIpPerMinute" => {
                self.limits.per_ip_per_minute = per_minute(&raw).map_err(bad)?
            }
            "limits.perTokenPerMinute" => {
                self.limits.per_token_per_minute = per_minute(&raw).map_err(bad)?
            }
            "limits.runnerReportsPerMinute" => {
                self.limits.runner_reports_per_minute = per_minute(&raw).map_err(bad)?
            }
            "audit.retentionDays" => {
                let days = number(&raw).map_err(bad)?;
                if !(0.0..=36_500.0).contains(&days) {
                    return Err(bad(format!(
                        "{} is not a number of days from 0 to 36500",
                        raw.describe()
                    )));
                }
                self.audit.retention =
                    (days > 0.0).then(|| Duration::from_secs_f64(days * 24.0 * 3600.0));
            }
            "auth.disabled" => self.auth.disabled = boolean(&raw).map_err(bad)?,
            "webhooks.allowPrivateTargets" => {
                self.webhooks.allow_private_targets = boolean(&raw).map_err(bad)?
            }
            "webhooks.maxPerOrg" => self.webhooks.max_per_org = count(&raw).map_err(bad)? as usize,
            "webhooks.caFile" => {
                let s = string(&raw).filter(|s| !s.is_empty());
                self.webhooks.ca_file = Some(PathBuf::from(
                    s.ok_or_else(|| bad("expected a path".into()))?,
                ));
            }
            // The old name of `auth.disabled`, inverted; it still works, with a warning.
            "websocket.authRequired" => {
                self.auth.disabled = !boolean(&raw).map_err(bad)?;
                self.renamed_keys
                    .push(("websocket.authRequired", "auth.disabled"));
            }
            _ => return Err(ConfigError::UnknownKey(name)),
        }
        Ok(())
    }
}

/// Variables the binary's other commands read (the runner's, the admin commands'), which a
/// shell that runs them may also start a server from: not configuration keys.
fn is_command_variable(name: &str) -> bool {
    matches!(
        name,
        "VILLAGE_LOG"
            | "VILLAGE_LOG_FORMAT"
            | "VILLAGE_SERVER"
            | "VILLAGE_TOKEN"
            | "VILLAGE_JOIN_TOKEN"
            | "VILLAGE_WORK_DIR"
            | "VILLAGE_MAX_SESSIONS"
    ) || name.starts_with("VILLAGE_RUNNER_")
}

/// `VILLAGE_SESSIONS_MAX_SESSIONS_PER_ORG` → (`sessions`, `maxSessionsPerOrg`).
fn env_key(name: &str) -> Option<(String, String)> {
    let rest = name.strip_prefix("VILLAGE_")?;
    let (section, key) = rest.split_once('_')?;
    let mut camel = String::new();
    for (i, word) in key.split('_').enumerate() {
        let lower = word.to_ascii_lowercase();
        if i == 0 {
            camel.push_str(&lower);
        } else {
            let mut chars = lower.chars();
            if let Some(first) = chars.next() {
                camel.push(first.to_ascii_uppercase());
                camel.push_str(chars.as_str());
            }
        }
    }
    Some((section.to_ascii_lowercase(), camel))
}

fn string(raw: &Raw<'_>) -> Option<String> {
    match raw {
        Raw::Toml(v) => v.as_str().map(str::to_owned),
        Raw::Env(s) => Some((*s).to_owned()),
    }
}

fn number(raw: &Raw<'_>) -> Result<f64, String> {
    let n = match raw {
        Raw::Toml(toml::Value::Integer(i)) => Some(*i as f64),
        Raw::Toml(toml::Value::Float(f)) => Some(*f),
        Raw::Toml(_) => None,
        Raw::Env(s) => s.trim().parse::<f64>().ok(),
    };
    n.filter(|n| n.is_finite())
        .ok_or_else(|| format!("{} is not a number", raw.describe()))
}

fn count(raw: &Raw<'_>) -> Result<u64, String> {
    let n = number(raw)?;
    if n < 0.0 || n.fract() != 0.0 || n > 1e12 {
        return Err(format!("{} is not a whole number ≥ 0", raw.describe()));
    }
    Ok(n as u64)
}

/// A duration written in `unit_ms` units; fractions are allowed (0.05 minutes is 3 s).
fn duration(raw: &Raw<'_>, unit_ms: f64) -> Result<Duration, String> {
    let n = number(raw)?;
    if n <= 0.0 {
        return Err(format!("{} must be above 0", raw.describe()));
    }
    let ms = n * unit_ms;
    if ms > 1e15 {
        return Err(format!("{} is too large", raw.describe()));
    }
    Ok(Duration::from_micros((ms * 1000.0).round() as u64))
}

/// Org ids: a TOML array of strings, or a comma-separated list in the environment.
fn org_list(raw: &Raw<'_>) -> Result<Vec<String>, String> {
    let items: Vec<String> = match raw {
        Raw::Toml(toml::Value::Array(items)) => items
            .iter()
            .map(|v| v.as_str().map(str::to_owned))
            .collect::<Option<_>>()
            .ok_or_else(|| format!("{} is not a list of org ids", raw.describe()))?,
        Raw::Toml(_) => return Err(format!("{} is not a list of org ids", raw.describe())),
        Raw::Env(s) => s
            .split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(str::to_owned)
            .collect(),
    };
    match items.iter().find(|o| !crate::auth::is_org_slug(o)) {
        Some(bad) => Err(format!("`{bad}` is not an org id")),
        None => Ok(items),
    }
}

/// A rate in calls a minute (0 turns the limit off).
fn per_minute(raw: &Raw<'_>) -> Result<u32, String> {
    let n = count(raw)?;
    u32::try_from(n).map_err(|_| format!("{} is too large", raw.describe()))
}

fn rate(raw: &Raw<'_>) -> Result<f64, String> {
    let n = number(raw)?;
    if !(0.0..=1.0).contains(&n) {
        return Err(format!("{} is not between 0 and 1", raw.describe()));
    }
    Ok(n)
}

fn boolean(raw: &Raw<'_>) -> Result<bool, String> {
    match raw {
        Raw::Toml(toml::Value::Boolean(b)) => Ok(*b),
        Raw::Env(s) if s.eq_ignore_ascii_case("true") || *s == "1" => Ok(true),
        Raw::Env(s) if s.eq_ignore_ascii_case("false") || *s == "0" => Ok(false),
        _ => Err(format!("{} is not true or false", raw.describe())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn file_then_env_override_defaults() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let path = dir.path().join("v.toml");
        std::fs::write(
            &path,
            "[sessions]\nmaxSessionsPerOrg = 3\ndefaultTimeoutMinutes = 0.05\n[websocket]\nauthRequired = false\n",
        )
        .unwrap_or_else(|e| panic!("{e}"));
        let cfg = Config::load(
            Some(&path),
            env(&[
                ("VILLAGE_SESSIONS_MAX_SESSIONS_PER_ORG", "20"),
                ("PATH", "/bin"),
            ]),
        )
        .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(cfg.sessions.max_sessions_per_org, 20);
        assert_eq!(cfg.sessions.default_timeout, Duration::from_secs(3));
        assert!(cfg.auth.disabled);
        assert_eq!(
            cfg.renamed_keys,
            vec![("websocket.authRequired", "auth.disabled")]
        );
        assert_eq!(cfg.runners.default_capacity, 5);
    }

    #[test]
    fn the_store_cache_is_bounded_by_default_and_configurable() {
        let cfg = Config::load(None, env(&[])).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(cfg.server.store_cache_bytes, 32 * 1024 * 1024);
        let cfg = Config::load(None, env(&[("VILLAGE_SERVER_STORE_CACHE_MB", "256")]))
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(cfg.server.store_cache_bytes, 256 * 1024 * 1024);
        let err = Config::load(None, env(&[("VILLAGE_SERVER_STORE_CACHE_MB", "lots")]))
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(err.contains("VILLAGE_SERVER_STORE_CACHE_MB"), "{err}");
    }

    #[test]
    fn auth_may_be_off_only_on_loopback() {
        let cfg = Config::load(None, env(&[("VILLAGE_AUTH_DISABLED", "true")]))
            .unwrap_or_else(|e| panic!("{e}"));
        assert!(cfg.auth.disabled && cfg.renamed_keys.is_empty());
        assert!(cfg.check_exposure().is_ok(), "127.0.0.1 is the default");
        for addr in ["0.0.0.0:8080", "10.0.0.5:8080", "[::]:8080"] {
            let mut open = cfg.clone();
            open.server.listen = addr.parse().unwrap_or_else(|e| panic!("{e}"));
            let err = open.check_exposure().map(|_| ()).unwrap_err().to_string();
            assert!(err.contains("auth.disabled"), "{addr}: {err}");
        }
        let mut v6 = cfg.clone();
        v6.server.listen = "[::1]:8080".parse().unwrap_or_else(|e| panic!("{e}"));
        assert!(v6.check_exposure().is_ok());
        let mut on = Config::default();
        on.server.listen = "0.0.0.0:8080".parse().unwrap_or_else(|e| panic!("{e}"));
        assert!(
            on.check_exposure().is_ok(),
            "with authentication on, any address"
        );
    }

    #[test]
    fn shared_runner_orgs_come_as_a_list_or_comma_separated() {
        let mut cfg = Config::default();
        assert_eq!(cfg.runners.shared_runner_orgs, None, "every org by default");
        cfg.apply_toml("[runners]\nsharedRunnerOrgs = [\"acme\", \"globex\"]\n")
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(
            cfg.runners.shared_runner_orgs,
            Some(vec!["acme".to_string(), "globex".to_string()])
        );
        let cfg = Config::load(
            None,
            env(&[("VILLAGE_RUNNERS_SHARED_RUNNER_ORGS", "acme, initech")]),
        )
        .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(
            cfg.runners.shared_runner_orgs,
            Some(vec!["acme".to_string(), "initech".to_string()])
        );
        let err = Config::default()
            .apply_toml("[runners]\nsharedRunnerOrgs = [\"Not An Org!\"]\n")
            .unwrap_err();
        assert!(
            err.to_string().contains("runners.sharedRunnerOrgs"),
            "{err}"
        );
    }

    #[test]
    fn unknown_and_bad_keys_are_named() {
        let mut cfg = Config::default();
        let err = cfg
            .apply_toml("[sessions]\nmaxSessionsPerOrgg = 3\n")
            .unwrap_err();
        assert!(
            err.to_string().contains("sessions.maxSessionsPerOrgg"),
            "{err}"
        );
        let err = cfg
            .apply_toml("[runners]\ndefaultCapacity = \"five\"\n")
            .unwrap_err();
        assert!(err.to_string().contains("runners.defaultCapacity"), "{err}");
        let err = Config::load(None, env(&[("VILLAGE_RUNNERS_LOST_AFTER_MS", "-3")])).unwrap_err();
        assert!(
            err.to_string().contains("VILLAGE_RUNNERS_LOST_AFTER_MS"),
            "{err}"
        );
        // The runner's and the admin commands' variables are not keys, and not errors.
        Config::load(
            None,
            env(&[("VILLAGE_SERVER", "http://x:1"), ("VILLAGE_TOKEN", "t")]),
        )
        .unwrap_or_else(|e| panic!("{e}"));
        let err = Config::load(None, env(&[("VILLAGE_BOGUS_KEY", "1")])).unwrap_err();
        assert!(err.to_string().contains("VILLAGE_BOGUS_KEY"), "{err}");
        let err = cfg
            .apply_toml("[pipeline]\nmaxFailureRate = 1.5\n")
            .unwrap_err();
        assert!(err.to_string().contains("pipeline.maxFailureRate"), "{err}");
    }
}
