//! The operator's commands: `village token create|list|revoke`, `village backup`,
//! `village restore`, `village check-config` and `village status`.
//!
//! Each works on a running server (`--server URL`, with an admin token) or, where that makes
//! sense, directly on a data dir whose server is stopped (the database file is locked while a
//! server has it open, and the commands say so rather than wait). Output is for people by default
//! and JSON with `--json`, in the API's shapes (docs/api.md).

use std::path::{Path, PathBuf};

use serde_json::{Value, json};

use crate::api::wire::tokens::Token;
use crate::auth::{AuthService, NewToken, Principal, TokenKind};
use crate::client::{self, ServerUrl, error_message};
use crate::clock::{RandomIds, SharedClock, SystemClock};
use crate::config::Config;
use crate::events::EventBus;
use crate::paging::PageRequest;
use crate::store::{Store, StoreError, backup};

/// Where a command acts.
pub enum Target {
    /// A running server and an admin token for it.
    Server { url: ServerUrl, token: String },
    /// The data dir of a stopped server.
    DataDir(PathBuf),
}

/// A command's failure: what to print, and the exit code (2: the command line or configuration
/// is wrong; 1: anything else).
#[derive(Debug)]
pub struct Failure {
    pub message: String,
    pub code: u8,
}

impl Failure {
    fn new(message: impl Into<String>) -> Self {
        Self {
            message: message.into(),
            code: 1,
        }
    }

    pub fn usage(message: impl Into<String>) -> Self {
        Self {
            message: message.into(),
            code: 2,
        }
    }
}

type Outcome = Result<(), Failure>;

/// The database file of a data dir.
pub fn database_path(data_dir: &Path) -> PathBuf {
    data_dir.join("village.redb")
}

/// Picks the target from the command line: `--server` if given (the token from `--token`, else
/// from the data dir's `admin-token` file), else the data dir.
pub fn target(
    server: Option<&str>,
    token: Option<String>,
    data_dir: &Path,
) -> Result<Target, Failure> {
    let Some(server) = server else {
        return Ok(Target::DataDir(data_dir.to_path_buf()));
    };
    let url = ServerUrl::parse(server).map_err(Failure::usage)?;
    let token = match token {
        Some(t) => t,
        None => {
            let file = data_dir.join("admin-token");
            std::fs::read_to_string(&file)
                .map(|t| t.trim().to_owned())
                .map_err(|e| {
                    Failure::usage(format!(
                        "--server needs an admin token: pass --token (or VILLAGE_TOKEN), or \
                         --data-dir of the server to read its admin-token file ({}: {e})",
                        file.display()
                    ))
                })?
        }
    };
    Ok(Target::Server { url, token })
}

/// Runs `work` on a small runtime of its own (the commands are one-shot).
fn run<F: std::future::Future<Output = Outcome>>(work: F) -> Outcome {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| Failure::new(format!("cannot start the async runtime: {e}")))?
        .block_on(work)
}

/// The page cache of a command's database (it reads little).
const COMMAND_CACHE_BYTES: usize = 16 * 1024 * 1024;

/// Opens a stopped server's database. Refuses a data dir without one (rather than create an
/// empty database) and one a running server holds.
fn open_data_dir(data_dir: &Path) -> Result<Store, Failure> {
    let path = database_path(data_dir);
    if !path.is_file() {
        return Err(Failure::new(format!(
            "no database at {}: is --data-dir the server's data dir?",
            path.display()
        )));
    }
    Store::open_with_cache(&path, EventBus::new(16), COMMAND_CACHE_BYTES).map_err(|e| match e {
        StoreError::Db(ref err) if matches!(**err, redb::Error::DatabaseAlreadyOpen) => {
            Failure::new(format!(
                "{} is open in a running server: pass --server URL (and --token) to act through it",
                path.display()
            ))
        }
        e => Failure::new(format!("opening {}: {e}", path.display())),
    })
}

/// The operator at this host's shell, as the audit log records them for data-dir commands.
fn shell_operator() -> Principal {
    Principal::local_operator("village command on the data dir")
}

async fn auth_of(store: &Store) -> Result<AuthService, Failure> {
    let clock: SharedClock = std::sync::Arc::new(SystemClock);
    AuthService::load(store.clone(), clock, std::sync::Arc::new(RandomIds))
        .await
        .map_err(|e| Failure::new(format!("loading tokens: {e}")))
}

fn reply_failure(what: &str, reply: &client::Reply) -> Failure {
    Failure::new(format!("{what}: {}", error_message(reply)))
}

fn print_json(value: &Value) {
    println!(
        "{}",
        serde_json::to_string_pretty(value).unwrap_or_else(|_| value.to_string())
    );
}

// ---- tokens -----------------------------------------------------------------------------------

/// `village token create`: prints the new token's secret (once) or, with `json`, the API's
/// answer.
pub fn token_create(
    target: Target,
    kind: &str,
    name: &str,
    org_id: Option<&str>,
    json: bool,
) -> Outcome {
    run(async move {
        let created = match target {
            Target::Server { url, token } => {
                let mut body = json!({ "kind": kind, "name": name });
                if let Some(org) = org_id {
                    body["orgId"] = json!(org);
                }
                let reply = client::post_json(&url, "/api/v1/tokens", &token, &body)
                    .await
                    .map_err(Failure::new)?;
                if reply.status != 201 {
                    return Err(reply_failure("creating the token", &reply));
                }
                reply.body["data"].clone()
            }
            Target::DataDir(dir) => {
                let kind = TokenKind::parse(kind)
                    .ok_or_else(|| Failure::usage("--kind must be admin, org or runner_join"))?;
                let store = open_data_dir(&dir)?;
                let auth = auth_of(&store).await?;
                let new = NewToken {
                    kind,
                    name: name.to_owned(),
                    org_id: org_id.map(str::to_owned),
                };
                let issued = auth.create(&shell_operator(), new).await;
                store.close().await;
                let issued =
                    issued.map_err(|e| Failure::new(format!("creating the token: {e}")))?;
                serde_json::to_value(Token::from(&issued))
                    .map_err(|e| Failure::new(e.to_string()))?
            }
        };
        if json {
            print_json(&created);
        } else {
            eprintln!(
                "created {} token {} ({}); its secret is shown once:",
                created["kind"].as_str().unwrap_or("?"),
                created["tokenId"].as_str().unwrap_or("?"),
                created["name"].as_str().unwrap_or("?"),
            );
            println!("{}", created["token"].as_str().unwrap_or(""));
        }
        Ok(())
    })
}

/// `village token list`: every token (never a secret), oldest first.
pub fn token_list(target: Target, json: bool) -> Outcome {
    run(async move {
        let items: Vec<Value> = match target {
            Target::Server { url, token } => {
                let mut items = Vec::new();
                for page in 1.. {
                    let path = format!("/api/v1/tokens?page={page}&pageSize=100");
                    let reply = client::call(&url, hyper::Method::GET, &path, &token, None)
                        .await
                        .map_err(Failure::new)?;
                    if reply.status != 200 {
                        return Err(reply_failure("listing tokens", &reply));
                    }
                    let data = &reply.body["data"];
                    items.extend(data["items"].as_array().cloned().unwrap_or_default());
                    if data["hasMore"].as_bool() != Some(true) {
                        break;
                    }
                }
                items
            }
            Target::DataDir(dir) => {
                let store = open_data_dir(&dir)?;
                let auth = auth_of(&store).await?;
                let all = PageRequest {
                    page: 1,
                    page_size: u64::MAX,
                };
                let page = auth.list(&shell_operator(), all).await;
                store.close().await;
                let page = page.map_err(|e| Failure::new(format!("listing tokens: {e}")))?;
                page.items
                    .iter()
                    .map(|t| serde_json::to_value(Token::from(t)).unwrap_or(Value::Null))
                    .collect()
            }
        };
        if json {
            print_json(&Value::Array(items));
            return Ok(());
        }
        println!(
            "{:<36}  {:<11}  {:<24}  {:<20}  {:<8}  NAME",
            "TOKEN ID", "KIND", "ORG", "CREATED", "STATE"
        );
        for t in &items {
            let field = |k: &str| t[k].as_str().unwrap_or("-").to_owned();
            let created = field("createdAt").chars().take(19).collect::<String>();
            let state = if t["revokedAt"].is_string() {
                "revoked"
            } else {
                "active"
            };
            println!(
                "{:<36}  {:<11}  {:<24}  {:<20}  {:<8}  {}",
                field("tokenId"),
                field("kind"),
                field("orgId"),
                created,
                state,
                field("name")
            );
        }
        Ok(())
    })
}

/// `village token revoke ID`.
pub fn token_revoke(target: Target, token_id: &str) -> Outcome {
    let id = uuid::Uuid::parse_str(token_id)
        .map_err(|_| Failure::usage(format!("{token_id:?} is not a token id")))?;
    run(async move {
        match target {
            Target::Server { url, token } => {
                let path = format!("/api/v1/tokens/{id}");
                let reply = client::call(&url, hyper::Method::DELETE, &path, &token, None)
                    .await
                    .map_err(Failure::new)?;
                if reply.status != 200 {
                    return Err(reply_failure("revoking the token", &reply));
                }
            }
            Target::DataDir(dir) => {
                let store = open_data_dir(&dir)?;
                let auth = auth_of(&store).await?;
                let revoked = auth.revoke(&shell_operator(), id).await;
                store.close().await;
                revoked.map_err(|e| Failure::new(format!("revoking the token: {e}")))?;
            }
        }
        eprintln!("revoked token {id}");
        Ok(())
    })
}

// ---- backup and restore -----------------------------------------------------------------------

/// `village backup --out FILE`: a consistent copy of the database, from a running server (which
/// goes on serving) or from a stopped server's data dir. The file is written under a temporary
/// name, checked (it opens, and holds the rows the server counted) and only then renamed.
pub fn backup(target: Target, out: &Path) -> Outcome {
    if out.exists() {
        return Err(Failure::usage(format!(
            "{} already exists; a backup never overwrites a file",
            out.display()
        )));
    }
    run(async move {
        let summary = match target {
            Target::DataDir(dir) => {
                let store = open_data_dir(&dir)?;
                let copied = store.backup_to(out.to_path_buf()).await;
                store.close().await;
                copied.map_err(|e| Failure::new(format!("backup: {e}")))?
            }
            Target::Server { url, token } => download_backup(&url, &token, out).await?,
        };
        eprintln!(
            "backup written to {}: {} rows in {} tables, {} bytes, schema version {}",
            out.display(),
            summary.rows,
            summary.tables,
            summary.bytes,
            summary.schema_version
        );
        Ok(())
    })
}

async fn download_backup(
    url: &ServerUrl,
    token: &str,
    out: &Path,
) -> Result<backup::BackupSummary, Failure> {
    use std::os::unix::fs::OpenOptionsExt;
    let mut partial_name = out.as_os_str().to_owned();
    partial_name.push(".partial");
    let partial = PathBuf::from(partial_name);
    let file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&partial)
        .map_err(|e| Failure::new(format!("creating {}: {e}", partial.display())))?;
    let mut file = tokio::fs::File::from_std(file);
    let fetched = client::download(url, "/api/v1/admin/backup", token, &mut file).await;
    let checked = (|| {
        let downloaded = match fetched {
            Ok(Ok(d)) => d,
            Ok(Err(reply)) => return Err(reply_failure("backup", &reply)),
            Err(e) => return Err(Failure::new(format!("backup: {e}"))),
        };
        let header = |name: &str| {
            downloaded
                .headers
                .get(name)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.parse::<u64>().ok())
        };
        if header("content-length").is_some_and(|len| len != downloaded.bytes) {
            return Err(Failure::new(
                "backup: the connection ended before the whole file arrived",
            ));
        }
        let summary = backup::inspect(&partial)
            .map_err(|e| Failure::new(format!("backup: the file received is not usable: {e}")))?;
        if let Some(rows) = header("x-village-backup-rows")
            && rows != summary.rows
        {
            return Err(Failure::new(format!(
                "backup: the server copied {rows} rows but the file holds {}",
                summary.rows
            )));
        }
        Ok(summary)
    })();
    let done = checked.and_then(|summary| {
        std::fs::File::open(&partial)
            .and_then(|f| f.sync_all())
            .and_then(|()| std::fs::rename(&partial, out))
            .map_err(|e| Failure::new(format!("writing {}: {e}", out.display())))?;
        Ok(summary)
    });
    if done.is_err() {
        let _ = std::fs::remove_file(&partial);
    }
    done
}

/// `village restore --from FILE`: puts a backup in place as the data dir's database, with the
/// server stopped.
pub fn restore(data_dir: &Path, from: &Path, force: bool) -> Outcome {
    use std::os::unix::fs::DirBuilderExt;
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(data_dir)
        .map_err(|e| Failure::new(format!("creating {}: {e}", data_dir.display())))?;
    let now = chrono::Utc::now().timestamp();
    let (summary, kept) = backup::restore(from, &database_path(data_dir), force, now)
        .map_err(|e| Failure::new(format!("restore: {e}")))?;
    eprintln!(
        "restored {} into {}: {} rows in {} tables, schema version {}",
        from.display(),
        database_path(data_dir).display(),
        summary.rows,
        summary.tables,
        summary.schema_version
    );
    if let Some(old) = kept {
        eprintln!("the database it replaced is kept as {}", old.display());
    }
    Ok(())
}

/// `village compact`: gives a stopped server's free database pages back to the filesystem
/// (after a purge of many sessions, say).
pub fn compact(data_dir: &Path) -> Outcome {
    let path = database_path(data_dir);
    if !path.is_file() {
        return Err(Failure::usage(format!(
            "{}: no database (is --data-dir the server's data dir?)",
            path.display()
        )));
    }
    let started = std::time::Instant::now();
    let done = backup::compact(&path).map_err(|e| Failure::new(format!("compact: {e}")))?;
    let mib = |b: u64| b as f64 / (1024.0 * 1024.0);
    eprintln!(
        "compacted {}: {:.1} MiB -> {:.1} MiB in {:.1} s",
        path.display(),
        mib(done.bytes_before),
        mib(done.bytes_after),
        started.elapsed().as_secs_f64()
    );
    Ok(())
}

// ---- configuration and status -----------------------------------------------------------------

/// `village check-config FILE`: loads the file as `village serve` would (with this
/// environment's `VILLAGE_*` variables) and reports the first problem, naming its key.
pub fn check_config(file: &Path) -> Outcome {
    if !file.is_file() {
        return Err(Failure::usage(format!("{}: no such file", file.display())));
    }
    let config = Config::load(Some(file), std::env::vars())
        .map_err(|e| Failure::usage(format!("{}: {e}", file.display())))?;
    config
        .check_exposure()
        .map_err(|e| Failure::usage(format!("{}: {e}", file.display())))?;
    println!(
        "{}: OK (listen {}, data dir {})",
        file.display(),
        config.server.listen,
        config.server.data_dir.display()
    );
    Ok(())
}

/// `village status`: a running server's health, readiness, fleet and sessions by state. Fails
/// (exit 1) when the server is unreachable or not ready.
pub fn status(url: ServerUrl, token: String, json: bool) -> Outcome {
    run(async move {
        let health = client::call(&url, hyper::Method::GET, "/healthz", &token, None)
            .await
            .map_err(|e| Failure::new(format!("{}: unreachable: {e}", url.authority())))?;
        let ready = client::call(&url, hyper::Method::GET, "/readyz", &token, None)
            .await
            .map_err(Failure::new)?;
        let fleet = client::call(&url, hyper::Method::GET, "/api/v1/fleet", &token, None)
            .await
            .map_err(Failure::new)?;
        if fleet.status != 200 {
            return Err(reply_failure("reading the fleet", &fleet));
        }
        let fleet = &fleet.body["data"];
        let is_ready = ready.status == 200;
        if json {
            print_json(&json!({
                "server": format!("http://{}{}", url.authority(), url.prefix),
                "healthy": health.status == 200,
                "ready": is_ready,
                "fleet": fleet,
            }));
        } else {
            let n = |v: &Value| v.as_u64().unwrap_or(0);
            println!("server     http://{}{}", url.authority(), url.prefix);
            println!(
                "health     {}",
                if health.status == 200 {
                    "ok"
                } else {
                    "failing"
                }
            );
            println!("ready      {}", if is_ready { "yes" } else { "NO" });
            println!(
                "runners    {} online, {} offline, {} draining",
                n(&fleet["online"]),
                n(&fleet["offline"]),
                n(&fleet["draining"])
            );
            let capacity = &fleet["capacity"];
            println!(
                "capacity   {} of {} slots used, {} available",
                n(&capacity["used"]),
                n(&capacity["total"]),
                n(&capacity["available"])
            );
            let by_state = fleet["sessionsByState"]
                .as_object()
                .map(|m| {
                    m.iter()
                        .map(|(state, count)| format!("{state} {}", n(count)))
                        .collect::<Vec<_>>()
                        .join(", ")
                })
                .unwrap_or_default();
            println!("sessions   {by_state}");
        }
        if is_ready {
            Ok(())
        } else {
            Err(Failure::new("the server is not ready (see /readyz)"))
        }
    })
}
