//! The composition root: configuration in, then the store, the providers, the background
//! tasks and the router, wired together. `control serve` and the one-shot commands start here;
//! nothing else builds an [`App`].

use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tracing::{error, info};

use crate::app::App;
use crate::clock::{Clock, SystemClock};
use crate::config::{
    CloudName, CloudflareSection, Config, EnvTokens, FlySection, HetznerSection, LogFormat,
    TunnelsName,
};
use crate::providers::cloudflare::{self, Cloudflare, CloudflareConfig};
use crate::providers::fly::{Fly, FlyConfig};
use crate::providers::hetzner::{self, Hetzner, HetznerConfig};
use crate::providers::http::RetryPolicy;
use crate::providers::local::{self, LocalProvider, LocalVmConfig, programs};
use crate::providers::{Cloud, Providers, Secret, Tunnels};
use crate::store::{Store, StoreOptions, redact_url};
use crate::{accounts, audit, background, http, tls};

/// The providers resources may live on, as `[providers]` selects them: the cloud new
/// resources go to, every other configured cloud existing resources may live on, and the
/// tunnels. The local provider is always there: resources made on it stay reachable whatever
/// the default becomes.
fn providers(config: &Config, local: &Arc<LocalProvider>) -> anyhow::Result<Providers> {
    let local_cloud = local::cloud(local.clone());
    let tokens = &config.env_tokens;
    let hetzner = config
        .hetzner
        .as_ref()
        .map(|section| hetzner_cloud(section, tokens))
        .transpose()?;
    let default = match (config.providers.default, &hetzner) {
        (CloudName::Local, _) => local_cloud.clone(),
        (CloudName::Hetzner, Some(cloud)) => cloud.clone(),
        (CloudName::Hetzner, None) => {
            anyhow::bail!("providers.default is hetzner without [hetzner]")
        }
    };
    let tunnels: Arc<dyn Tunnels> = match (config.providers.tunnels, &config.cloudflare) {
        (TunnelsName::Local, _) => local.clone(),
        (TunnelsName::Cloudflare, Some(section)) => Arc::new(cloudflare_tunnels(section, tokens)?),
        (TunnelsName::Cloudflare, None) => {
            anyhow::bail!("providers.tunnels is cloudflare without [cloudflare]")
        }
    };
    let mut providers = Providers::new(default).with(local_cloud);
    if let Some(cloud) = hetzner {
        providers = providers.with(cloud);
    }
    if let Some(section) = &config.fly {
        providers = providers.with_fly(Arc::new(fly_org(section, tokens)?));
    }
    Ok(providers.with_tunnels(tunnels))
}

/// The Cloudflare account and zone `[cloudflare]` names: its token read from its file.
fn cloudflare_tunnels(
    section: &CloudflareSection,
    tokens: &EnvTokens,
) -> anyhow::Result<Cloudflare> {
    Ok(Cloudflare::new(
        CloudflareConfig {
            base_url: section
                .base_url
                .clone()
                .unwrap_or_else(|| cloudflare::DEFAULT_BASE_URL.to_owned()),
            token: read_token(
                section.token_file.as_deref(),
                "cloudflare.token_file",
                "CLOUDFLARE_API_TOKEN",
                tokens.cloudflare.as_ref(),
            )?,
            account_id: section.account_id.clone(),
            zone_id: section.zone_id.clone(),
            retry: RetryPolicy::default(),
        },
        Arc::new(SystemClock),
    )?)
}

/// A provider API token from its file, trimmed, else the one environment variable `env`
/// gave; errors name the key or the variable, never the token.
fn read_token(
    path: Option<&Path>,
    key: &str,
    env: &str,
    from_env: Option<&Secret>,
) -> anyhow::Result<Secret> {
    let token = match (path, from_env) {
        (Some(path), _) => std::fs::read_to_string(path)
            .with_context(|| format!("cannot read the token file {} ({key})", path.display()))?,
        (None, Some(token)) => token.0.clone(),
        (None, None) => anyhow::bail!("no {key} is configured and {env} is not set"),
    };
    let token = token.trim();
    anyhow::ensure!(!token.is_empty(), "the token for {key} ({env}) is empty");
    Ok(Secret(token.to_owned()))
}

/// The Hetzner Cloud project `[hetzner]` names: its token read from its file (never logged).
fn hetzner_cloud(section: &HetznerSection, tokens: &EnvTokens) -> anyhow::Result<Cloud> {
    let mut config = HetznerConfig::new(read_token(
        section.token_file.as_deref(),
        "hetzner.token_file",
        "HCLOUD_TOKEN",
        tokens.hetzner.as_ref(),
    )?);
    if let Some(url) = &section.base_url {
        config.base_url.clone_from(url);
    }
    if let Some(location) = &section.location {
        config.location.clone_from(location);
    }
    if let Some(server_type) = &section.server_type {
        config.server_type.clone_from(server_type);
    }
    if let Some(budget) = section.requests_per_hour {
        config.requests_per_hour = budget;
    }
    Ok(hetzner::cloud(Arc::new(Hetzner::new(
        config,
        Arc::new(SystemClock),
    )?)))
}

/// The Fly organization `[fly]` names (the legacy cohort): its token read from its file.
fn fly_org(section: &FlySection, tokens: &EnvTokens) -> anyhow::Result<Fly> {
    let mut config = FlyConfig::new(
        read_token(
            section.token_file.as_deref(),
            "fly.token_file",
            "FLY_API_TOKEN",
            tokens.fly.as_ref(),
        )?,
        section.org_slug.clone(),
    );
    if let Some(url) = &section.base_url {
        config.base_url.clone_from(url);
    }
    Ok(Fly::new(config, Arc::new(SystemClock))?)
}

pub fn init_logging(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info,sqlx=warn"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()));
    // A second initialisation (tests running several commands) keeps the first subscriber.
    let _ = match format {
        LogFormat::Text => builder.try_init(),
        LogFormat::Json => builder.json().try_init(),
    };
}

/// Opens and migrates the store and builds the application around it.
/// Creates the data dir (0700), opens the database and applies pending migrations.
async fn open_store(config: &Config) -> anyhow::Result<Store> {
    // The data dir holds the database and the operator token: only its owner may read it.
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(&config.data_dir)
        .with_context(|| format!("cannot create the data dir {}", config.data_dir.display()))?;
    let store = Store::connect(
        &config.database,
        &StoreOptions {
            max_connections: config.database_max_connections,
            ..StoreOptions::default()
        },
    )
    .await?;
    if let Err(e) = store.migrate().await {
        // A runtime role on PostgreSQL may not create or alter tables (README, "A runtime role
        // for PostgreSQL"): it runs on a schema the owner migrated with `control migrate`.
        if !e.is_permission_denied() || !store.is_migrated().await.unwrap_or(false) {
            return Err(anyhow::Error::new(e).context(
                "the database schema is not current and this role cannot migrate it; run `control migrate` as the schema's owner",
            ));
        }
        info!(error = %e, "this database role cannot run migrations; the schema is current, so control goes on");
    }
    Ok(store)
}

/// The application for the one-shot commands, which never call a provider.
pub async fn open(config: &Config) -> anyhow::Result<App> {
    let store = open_store(config).await?;
    let clock: Arc<dyn Clock> = Arc::new(SystemClock);
    let providers = providers(config, &Arc::new(LocalProvider::in_memory()))?;
    Ok(App::new(store, clock, providers, config.settings.clone()))
}

/// Where `serve` listens: the API (with TLS when `[tls]` is set) and, apart from it unless
/// it is the same address, `/metrics`.
struct Listeners {
    api: TcpListener,
    /// The API's address as bound (the port chosen when 0 was asked for).
    address: std::net::SocketAddr,
    tls: Option<Arc<tls::ServerCert>>,
    metrics: Option<TcpListener>,
}

impl Listeners {
    /// Reads the certificate first, so a bad one is refused before anything listens.
    async fn bind(config: &Config) -> anyhow::Result<Self> {
        let tls = config.tls.as_ref().map(tls::ServerCert::load).transpose()?;
        let api = TcpListener::bind(config.listen)
            .await
            .with_context(|| format!("cannot listen on {}", config.listen))?;
        let metrics = if config.metrics_listen == config.listen {
            None
        } else {
            Some(
                TcpListener::bind(config.metrics_listen)
                    .await
                    .with_context(|| {
                        format!(
                            "cannot listen for /metrics on {} (metrics_listen)",
                            config.metrics_listen
                        )
                    })?,
            )
        };
        Ok(Self {
            address: api.local_addr()?,
            api,
            tls,
            metrics,
        })
    }

    /// The URL local VMs report to unless told otherwise: this replica, over loopback when
    /// it listens on every address.
    fn local_url(&self) -> String {
        let reachable = if self.address.ip().is_unspecified() {
            std::net::SocketAddr::from(([127, 0, 0, 1], self.address.port()))
        } else {
            self.address
        };
        let scheme = if self.tls.is_some() { "https" } else { "http" };
        format!("{scheme}://{reachable}")
    }

    /// Serves `app` until `stopped`, then lets requests in flight finish.
    async fn serve(self, app: App, stopped: &watch::Receiver<bool>) -> anyhow::Result<()> {
        let until = |stopped: &watch::Receiver<bool>| {
            let mut stopped = stopped.clone();
            async move {
                let _ = stopped.wait_for(|stop| *stop).await;
            }
        };
        let metrics = match self.metrics {
            Some(listener) => {
                let router = http::metrics_router(app.clone());
                let serving = axum::serve(listener, router).with_graceful_shutdown(until(stopped));
                Some(tokio::spawn(async move { serving.await }))
            }
            None => None,
        };
        let router = if metrics.is_some() {
            http::router(app)
        } else {
            http::router_with_metrics(app)
        };
        match self.tls {
            Some(cert) => {
                let listener = tls::TlsListener::new(self.api, cert.acceptor()?);
                axum::serve(listener, router)
                    .with_graceful_shutdown(until(stopped))
                    .await?;
            }
            None => {
                axum::serve(self.api, router)
                    .with_graceful_shutdown(until(stopped))
                    .await?;
            }
        }
        if let Some(metrics) = metrics {
            metrics.await??;
        }
        Ok(())
    }
}

/// Before listening, so that whoever sees the port open finds them written: the operator
/// token (on a first start) and the key audit checkpoints are signed with.
async fn secrets(store: &Store, config: &Config) -> anyhow::Result<Arc<audit::checkpoint::Signer>> {
    if let Some(path) =
        accounts::ensure_operator_token(store, SystemClock.now(), &config.data_dir).await?
    {
        info!(path = %absolute(&path).display(), "first start: wrote an operator token (mode 0600) to this file");
    }
    Ok(Arc::new(audit::checkpoint::Signer::load_or_create(
        &config.audit_signing_key,
    )?))
}

pub async fn serve(config: &Config) -> anyhow::Result<()> {
    let store = open_store(config).await?;
    let signer = secrets(&store, config).await?;
    // Also before listening: a first start may build them, which takes a minute.
    // In qemu mode both are in the image the VMs boot.
    let qemu = config.local.qemu_config(&absolute(&config.data_dir));
    let (vm_agent, cloudflared) = if qemu.is_some() {
        ("vm-agent".into(), "cloudflared".into())
    } else {
        let config = config.clone();
        tokio::task::spawn_blocking(move || programs::local_binaries(&config)).await??
    };
    let listeners = Listeners::bind(config).await?;
    // Local VMs report to this replica unless told otherwise.
    let control_urls = if config.local.control_urls.is_empty() {
        vec![listeners.local_url()]
    } else {
        config.local.control_urls.clone()
    };
    // Absolute: the VMs' own configuration names files in it.
    let local_dir = absolute(&config.data_dir.join("local-vms"));
    let local = Arc::new(
        LocalProvider::with_processes(
            &local_dir,
            LocalVmConfig {
                vm_agent,
                cloudflared,
                control_urls,
                control_ca_file: config.local.control_ca_file.as_deref().map(absolute),
                heartbeat_interval: config.settings.ingest.interval,
                qemu,
            },
        )
        .with_context(|| {
            format!(
                "cannot open the local provider's VMs in {}",
                local_dir.display()
            )
        })?,
    );
    let clock: Arc<dyn Clock> = Arc::new(SystemClock);
    let app = App::new(
        store,
        clock,
        providers(config, &local)?,
        config.settings.clone(),
    );
    log_serving(config, &listeners, &app);
    // Before the job runner starts: the jobs of a dead predecessor are due at once. Kept until
    // the process ends.
    let _lock = crate::predecessor::take_over(&config.data_dir, &app).await;
    let (stop, stopped) = watch::channel(false);
    let mut tasks = background::spawn(
        &app,
        background::Intervals {
            job_poll: config.job_poll_interval,
            rollup: config.rollup_interval,
            reconcile: config.reconcile_interval,
            reconcile_budget_fraction: config.reconcile_budget_fraction,
            sweep: config.sweep_interval,
        },
        &stopped,
    );
    tasks.push({
        let (local, stopped) = (local.clone(), stopped.clone());
        tokio::spawn(async move { local.supervise(stopped).await })
    });
    tasks.push(tokio::spawn(background::checkpoints(
        app.clone(),
        signer,
        config.audit_checkpoint_interval,
        stopped.clone(),
    )));
    tasks.push(tokio::spawn(tls::reload_on_hangup(
        listeners.tls.clone(),
        stopped.clone(),
    )));
    tokio::spawn(async move {
        shutdown_signal().await;
        info!("shutting down: finishing requests in flight");
        let _ = stop.send(true);
    });
    listeners.serve(app.clone(), &stopped).await?;
    let drained = tokio::time::timeout(Duration::from_secs(30), async {
        for task in tasks {
            let _ = task.await;
        }
    })
    .await;
    if drained.is_err() {
        error!("background tasks did not stop within 30 s; exiting anyway");
    }
    app.store.close().await;
    info!("control stopped; local VMs keep running, as VMs do");
    Ok(())
}

/// The line an operator looks for: where the API and `/metrics` are, over what, on which store.
fn log_serving(config: &Config, listeners: &Listeners, app: &App) {
    let metrics = listeners
        .metrics
        .as_ref()
        .and_then(|l| l.local_addr().ok())
        .unwrap_or(listeners.address);
    info!(
        listen = %listeners.address,
        tls = listeners.tls.is_some(),
        metrics = %metrics,
        database = %redact_url(&config.database),
        data_dir = %absolute(&config.data_dir).display(),
        replica = %app.replica_id,
        "control is serving"
    );
    if let Some(cert) = &listeners.tls {
        info!(
            cert_file = %cert.cert_file().display(),
            fingerprint = %cert.fingerprint(),
            "serving HTTPS with this certificate; SIGHUP reads it and its key again"
        );
    }
}

fn absolute(path: &Path) -> PathBuf {
    std::path::absolute(path).unwrap_or_else(|_| path.to_owned())
}

async fn shutdown_signal() {
    let interrupt = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut terminate =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(signal) => signal,
                Err(e) => {
                    error!(error = %e, "cannot listen for SIGTERM; only Ctrl-C stops control");
                    let _ = interrupt.await;
                    return;
                }
            };
        tokio::select! {
            _ = interrupt => {}
            _ = terminate.recv() => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_token_comes_from_its_file_else_from_the_environment_and_is_never_shown() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("token");
        std::fs::write(&file, "  s3cret-token\n").unwrap();
        let env = Secret("env-token\n".to_owned());
        let token = read_token(
            Some(&file),
            "hetzner.token_file",
            "HCLOUD_TOKEN",
            Some(&env),
        )
        .unwrap();
        assert_eq!(token.0, "s3cret-token", "the file wins");
        assert_eq!(format!("{token:?}"), "[redacted]");
        let token = read_token(None, "hetzner.token_file", "HCLOUD_TOKEN", Some(&env)).unwrap();
        assert_eq!(token.0, "env-token");
        let missing = read_token(
            None,
            "fly.token_file",
            "CONTROL_TEST_NO_SUCH_VARIABLE",
            None,
        )
        .unwrap_err()
        .to_string();
        assert!(
            missing.contains("fly.token_file") && missing.contains("CONTROL_TEST_NO_SUCH_VARIABLE"),
            "{missing}"
        );
        std::fs::write(&file, "\n").unwrap();
        let empty = read_token(Some(&file), "k", "V", None)
            .unwrap_err()
            .to_string();
        assert!(empty.contains("empty"), "{empty}");
    }
}
