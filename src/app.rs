//! Wiring: open the store, load tokens, start the background tasks, serve HTTP until told to
//! stop. `main` and the integration tests both start the server through here.

use std::future::Future;
use std::io::Write;
use std::path::Path;
use std::sync::Arc;

use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::api::{self, AppState, Services};
use crate::auth::AuthService;
use crate::clock::{SharedClock, SharedIds};
use crate::config::Config;
use crate::error::DomainError;
use crate::events::EventBus;
use crate::metrics::Metrics;
use crate::pipeline::{self, PipelineService};
use crate::runners::{self, RunnerService, scheduler};
use crate::sessions::{SessionService, sweeper};
use crate::store::{Store, StoreError};
use crate::webhooks::{WebhookService, dispatcher};

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("data directory {path}: {source}")]
    DataDir {
        path: String,
        source: std::io::Error,
    },
    #[error("opening the database: {0}")]
    Store(#[from] StoreError),
    #[error("loading state: {0}")]
    Domain(#[from] DomainError),
    #[error("configuration error: {0}")]
    Config(#[from] crate::config::ConfigError),
}

pub struct App {
    pub state: AppState,
    pub bus: EventBus,
    /// The first admin token's secret, when this start created it.
    pub bootstrap_token: Option<String>,
    stop: watch::Sender<bool>,
    tasks: Vec<JoinHandle<()>>,
}

impl App {
    pub async fn start(
        config: Config,
        clock: SharedClock,
        ids: SharedIds,
    ) -> Result<App, StartError> {
        config.check_exposure()?;
        raise_open_file_limit();
        for (old, new) in &config.renamed_keys {
            tracing::warn!("configuration key `{old}` is now `{new}`; the old name still works");
        }
        let data_dir = config.server.data_dir.clone();
        let db_path = data_dir.join("village.redb");
        private_data_dir(&data_dir, &db_path).map_err(|source| StartError::DataDir {
            path: data_dir.display().to_string(),
            source,
        })?;
        crate::backups::clear_staging(&data_dir);
        let bus = EventBus::new(4096);
        let store = {
            let bus = bus.clone();
            let cache_bytes = config.server.store_cache_bytes;
            tokio::task::spawn_blocking(move || Store::open_with_cache(&db_path, bus, cache_bytes))
                .await
                .map_err(|_| StoreError::Panicked)??
        };
        let metrics = Arc::new(Metrics::new(store.stats.collectors()));
        bus.observe({
            let metrics = metrics.clone();
            Arc::new(move |e| metrics.observe_event(e))
        });
        let auth = AuthService::load(store.clone(), clock.clone(), ids.clone()).await?;
        let bootstrap_token = auth.bootstrap_admin().await?;
        if let Some(secret) = &bootstrap_token {
            write_admin_token(&data_dir, secret);
        }
        if config.auth.disabled {
            tracing::warn!(
                "auth.disabled = true: every request is treated as admin; use this only for local trials"
            );
        }
        let sessions =
            SessionService::new(store.clone(), clock.clone(), ids.clone(), &config.sessions);
        let runners = RunnerService::load(
            store.clone(),
            bus.clone(),
            auth.clone(),
            sessions.clone(),
            clock.clone(),
            ids.clone(),
            &config.runners,
        )
        .await?;
        // A session that a connected runner can take is assigned in the commit that queues it.
        store.set_placement(scheduler::placement_step(runners.placement_view()));
        let pipeline = PipelineService::load(
            store.clone(),
            bus.clone(),
            runners.clone(),
            clock.clone(),
            ids.clone(),
            &config.pipeline,
        )
        .await?;
        let tls = crate::webhooks::client::tls_config(config.webhooks.ca_file.as_deref()).map_err(
            |message| crate::config::ConfigError::BadValue {
                key: "webhooks.caFile".into(),
                message,
            },
        )?;
        let webhooks = WebhookService::load(
            store.clone(),
            clock.clone(),
            ids.clone(),
            &config.webhooks,
            config.server.public_url.clone(),
            tls,
            metrics.clone(),
        )
        .await?;
        let spend = crate::spend::SpendService::new(store.clone(), clock.clone());
        let (stop, stop_rx) = watch::channel(false);
        let connections = api::edge::Connections::new(&config.server);
        let limits = api::limits::RateLimits::new(&config.limits);
        let audit_retention = config.audit.retention;
        let state = Arc::new(Services {
            config: Arc::new(config),
            clock: clock.clone(),
            ids: ids.clone(),
            store: store.clone(),
            auth,
            sessions: sessions.clone(),
            runners: runners.clone(),
            pipeline: pipeline.clone(),
            bus: bus.clone(),
            realtime: Default::default(),
            connections,
            limits: limits.clone(),
            webhooks: webhooks.clone(),
            policies: crate::policy::PolicyService::new(store.clone(), clock.clone()),
            spend: spend.clone(),
            metrics,
            shutdown: stop_rx.clone(),
        });
        let (store_for_audit, clock_for_audit) = (store.clone(), clock.clone());
        let mut tasks = vec![
            tokio::spawn(sweeper::run(sessions, clock, stop_rx.clone())),
            tokio::spawn(pipeline::run(pipeline, stop_rx.clone())),
            tokio::spawn(crate::spend::run(
                spend,
                bus.clone(),
                runners.clone(),
                stop_rx.clone(),
            )),
            tokio::spawn(runners::background(runners.clone(), stop_rx.clone())),
            tokio::spawn(scheduler::run(store, runners, stop_rx.clone())),
            tokio::spawn(dispatcher::intake(
                webhooks.clone(),
                bus.clone(),
                stop_rx.clone(),
            )),
            tokio::spawn(dispatcher::run(webhooks, stop_rx.clone())),
            tokio::spawn(api::limits::housekeeping(limits, stop_rx.clone())),
        ];
        if let Some(keep) = audit_retention {
            tasks.push(tokio::spawn(crate::audit::retention(
                store_for_audit,
                clock_for_audit,
                keep,
                stop_rx,
            )));
        }
        // Sessions queued before a restart are scheduled as soon as runners reconnect; kick
        // once in case capacity is already there.
        bus.kick_scheduler();
        Ok(App {
            state,
            bus,
            bootstrap_token,
            stop,
            tasks,
        })
    }

    /// Serves on `listener` until `shutdown` resolves, then stops the background tasks.
    pub async fn serve(
        self,
        listener: TcpListener,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) {
        let routes = api::routes(&self.state);
        if let Ok(addr) = listener.local_addr() {
            self.state.webhooks.listening_on(addr);
            tracing::info!("Village listening on http://{addr}");
        }
        // Tell sockets and background tasks first, so upgraded connections close (1001) and
        // the graceful shutdown does not wait on them.
        let stop = self.stop.clone();
        tokio::spawn(async move {
            shutdown.await;
            let _ = stop.send(true);
        });
        let limits = self.state.config.server.clone();
        let connections = self.state.connections.clone();
        api::edge::serve(
            listener,
            routes,
            api::EdgeRoutes::new(&self.state),
            &limits,
            connections,
            self.state.metrics.clone(),
            self.stop.subscribe(),
        )
        .await;
        let _ = self.stop.send(true);
        for task in self.tasks {
            let _ = task.await;
        }
        // The background tasks wrote what a restart needs; a cleanly closed file opens
        // without a repair pass.
        self.state.store.close().await;
        tracing::info!("Village stopped");
    }
}

/// Every runner, dashboard and webhook holds a descriptor: take the soft open-file limit up to
/// the hard one (often 1 024 soft against a far higher hard limit), as servers do.
fn raise_open_file_limit() {
    use nix::sys::resource::{Resource, getrlimit, setrlimit};
    match getrlimit(Resource::RLIMIT_NOFILE) {
        Ok((soft, hard)) if soft < hard => {
            if let Err(e) = setrlimit(Resource::RLIMIT_NOFILE, hard, hard) {
                tracing::warn!(soft, hard, error = %e, "could not raise the open-file limit");
            }
        }
        Ok(_) => {}
        Err(e) => tracing::warn!(error = %e, "could not read the open-file limit"),
    }
}

/// The data dir holds secrets (tokens' hashes, env values, webhook secrets, keystrokes and
/// output): the directory is the service user's alone (0700) and the database file too (0600),
/// also when an older start left them open to others.
fn private_data_dir(data_dir: &Path, db_path: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(data_dir)?;
    std::fs::set_permissions(data_dir, std::fs::Permissions::from_mode(0o700))?;
    // redb initialises an empty file as a new database: create it private before it does.
    std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(false)
        .mode(0o600)
        .open(db_path)?;
    std::fs::set_permissions(db_path, std::fs::Permissions::from_mode(0o600))?;
    let token = data_dir.join("admin-token");
    if token.exists() {
        std::fs::set_permissions(&token, std::fs::Permissions::from_mode(0o600))?;
    }
    Ok(())
}

/// `<data-dir>/admin-token`, readable by the owner only.
fn write_admin_token(data_dir: &Path, secret: &str) {
    let path = data_dir.join("admin-token");
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    let written = options.open(&path).and_then(|mut f| {
        f.write_all(format!("{secret}\n").as_bytes())
            .and_then(|()| f.sync_all())
    });
    match written {
        Ok(()) => tracing::info!(path = %path.display(), "admin token written"),
        Err(e) => {
            tracing::error!(path = %path.display(), error = %e, "could not write the admin token file")
        }
    }
}
