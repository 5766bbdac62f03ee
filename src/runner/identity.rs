//! The runner's identity: its id and token, kept in `<data-dir>/identity.json` (mode 0600), so a
//! restart is the same runner. Without one, or when the server no longer accepts the token, the
//! runner registers with its join token (the same hostname gets the same id back).

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use serde_json::json;

use crate::client::{ServerUrl, error_message, post_json};

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Identity {
    pub runner_id: String,
    pub runner_token: String,
    pub hostname: String,
}

fn path(data_dir: &Path) -> PathBuf {
    data_dir.join("identity.json")
}

/// Creates the data dir private to this user.
pub fn prepare_data_dir(data_dir: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::create_dir_all(data_dir)?;
    std::fs::set_permissions(data_dir, std::fs::Permissions::from_mode(0o700))
}

pub fn load(data_dir: &Path) -> Option<Identity> {
    let text = std::fs::read_to_string(path(data_dir)).ok()?;
    serde_json::from_str(&text).ok()
}

pub fn save(data_dir: &Path, identity: &Identity) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let tmp = data_dir.join("identity.json.tmp");
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)?;
    f.write_all(serde_json::to_string_pretty(identity)?.as_bytes())?;
    f.sync_all()?;
    std::fs::rename(&tmp, path(data_dir))
}

/// What the runner registers with.
pub struct Registration<'a> {
    pub hostname: &'a str,
    pub providers: Vec<String>,
    pub max_sessions: u32,
    pub features: &'a [String],
}

/// Registers with the join token and returns the new identity (and the server's heartbeat
/// interval, if it named one).
/// Why a registration did not happen.
#[derive(Debug)]
pub enum RegisterError {
    /// The server could not be reached, was overloaded (429) or failing (5xx): try again,
    /// after `retry_after` when the server said how long.
    Transient {
        why: String,
        retry_after: Option<std::time::Duration>,
    },
    /// The server said no (a bad join token, a hostname of another org, a bad request):
    /// trying again changes nothing.
    Refused(String),
}

impl std::fmt::Display for RegisterError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Transient { why, .. } | Self::Refused(why) => f.write_str(why),
        }
    }
}

pub async fn register(
    server: &ServerUrl,
    join_token: &str,
    reg: &Registration<'_>,
) -> Result<(Identity, Option<u64>), RegisterError> {
    let body = json!({
        "hostname": reg.hostname,
        "capabilities": {
            "providers": reg.providers,
            "maxConcurrentSessions": reg.max_sessions,
            "features": reg.features,
        },
        "metadata": {
            "os": std::env::consts::OS,
            "arch": std::env::consts::ARCH,
            "runnerVersion": env!("CARGO_PKG_VERSION"),
        },
    });
    let reply = post_json(server, "/api/v1/runners/register", join_token, &body)
        .await
        .map_err(|why| RegisterError::Transient {
            why: format!("register: {why}"),
            retry_after: None,
        })?;
    match reply.status {
        200 | 201 => {}
        429 | 500.. => {
            return Err(RegisterError::Transient {
                why: format!("register: {}", error_message(&reply)),
                retry_after: reply.retry_after_secs.map(std::time::Duration::from_secs),
            });
        }
        _ => {
            return Err(RegisterError::Refused(format!(
                "register: {}",
                error_message(&reply)
            )));
        }
    }
    let data = &reply.body["data"];
    let id = data["runner"]["runnerId"].as_str();
    let token = data["runnerToken"].as_str();
    match (id, token) {
        (Some(id), Some(token)) => Ok((
            Identity {
                runner_id: id.to_string(),
                runner_token: token.to_string(),
                hostname: reg.hostname.to_string(),
            },
            data["heartbeatIntervalMs"].as_u64(),
        )),
        _ => Err(RegisterError::Refused(
            "register: the answer has no runner id or token".into(),
        )),
    }
}
