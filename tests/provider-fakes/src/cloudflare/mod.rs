//! A loopback fake of the Cloudflare API v4, the part control uses: remotely managed tunnels
//! (`/accounts/{account_id}/cfd_tunnel…`) and DNS records of one zone (`/zones/{zone_id}/
//! dns_records…`), with Cloudflare's `{success, errors, messages, result}` envelope, `result_info`
//! pagination, status codes and error codes, and its 1,200-requests-per-5-minutes limit. Tests start
//! it with [`CloudflareFake::start`], point the client at [`CloudflareFake::url`], and steer it
//! (faults, stalls, crashes, a cloudflared that is connected) through [`Control`]. It listens on
//! loopback only and must never forward anything anywhere.

mod check;
mod control;
mod dns;
mod envelope;
mod gate;
mod state;
mod tunnels;

use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use axum::Router;
use axum::routing::get;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tokio::time::Instant;

pub use axum::http::Method;
pub use check::assert_answers_enveloped;
pub use control::{Answer, Control, CrashMode, DnsRecordView, Fault, IngressRuleView, TunnelView};

use envelope::ApiError;
use gate::Gate;
use state::State;

/// The path prefix of every route: the base URL is `http://ADDR/client/v4`.
pub const PREFIX: &str = "/client/v4";

/// Every route the fake serves, as (method, path template): the keys of call counts and faults.
pub const ROUTES: &[(&str, &str)] = &[
    ("GET", "/client/v4/accounts/{account_id}/cfd_tunnel"),
    ("POST", "/client/v4/accounts/{account_id}/cfd_tunnel"),
    (
        "GET",
        "/client/v4/accounts/{account_id}/cfd_tunnel/{tunnel_id}",
    ),
    (
        "DELETE",
        "/client/v4/accounts/{account_id}/cfd_tunnel/{tunnel_id}",
    ),
    (
        "GET",
        "/client/v4/accounts/{account_id}/cfd_tunnel/{tunnel_id}/token",
    ),
    (
        "GET",
        "/client/v4/accounts/{account_id}/cfd_tunnel/{tunnel_id}/configurations",
    ),
    (
        "PUT",
        "/client/v4/accounts/{account_id}/cfd_tunnel/{tunnel_id}/configurations",
    ),
    (
        "GET",
        "/client/v4/accounts/{account_id}/cfd_tunnel/{tunnel_id}/connections",
    ),
    (
        "DELETE",
        "/client/v4/accounts/{account_id}/cfd_tunnel/{tunnel_id}/connections",
    ),
    ("GET", "/client/v4/zones/{zone_id}/dns_records"),
    ("POST", "/client/v4/zones/{zone_id}/dns_records"),
    (
        "GET",
        "/client/v4/zones/{zone_id}/dns_records/{dns_record_id}",
    ),
    (
        "DELETE",
        "/client/v4/zones/{zone_id}/dns_records/{dns_record_id}",
    ),
];

/// How a fake starts. `Options::default()` is Cloudflare's own limit, one account and one zone.
#[derive(Clone, Debug)]
pub struct Options {
    /// The API token the fake accepts as `Authorization: Bearer …`; any other gets 401 with code
    /// 10000 `Authentication error`.
    pub token: String,
    /// The account the tunnels live in (32 hex digits, as Cloudflare's account tags).
    pub account_id: String,
    /// The one zone whose DNS records the fake keeps (32 hex digits).
    pub zone_id: String,
    /// That zone's name: relative record names are completed with it.
    pub zone_name: String,
    /// Requests per window for the token; Cloudflare's is 1,200.
    pub rate_limit: u32,
    /// The window of the limit, and how long the token is refused once it went over; Cloudflare's
    /// is five minutes.
    pub rate_window: Duration,
    /// Keep the answers (the latest 20,000, or 64 mebibytes of bodies) for [`Control::answers`];
    /// turn off for long runs.
    pub record_answers: bool,
}

impl Default for Options {
    fn default() -> Options {
        Options {
            token: "cloudflare-fake-token".to_owned(),
            account_id: "0f1e2d3c4b5a69788796a5b4c3d2e1f0".to_owned(),
            zone_id: "9a8b7c6d5e4f30211203f4e5d6c7b8a9".to_owned(),
            zone_name: "agents.example.test".to_owned(),
            rate_limit: 1200,
            rate_window: Duration::from_mins(5),
            record_answers: true,
        }
    }
}

pub(crate) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// What the handlers and the control handle share.
pub(crate) struct Shared {
    token: String,
    account_id: String,
    zone_id: String,
    zone_name: String,
    state: Mutex<State>,
    gate: Mutex<Gate>,
}

impl Shared {
    pub(crate) fn with<R>(&self, f: impl FnOnce(&mut State, Instant) -> R) -> R {
        let now = Instant::now();
        let mut state = lock(&self.state);
        f(&mut state, now)
    }

    /// The account in the path must be the fake's: a token sees no other account.
    pub(crate) fn account(&self, account_id: &str, path: &str) -> Result<(), ApiError> {
        check_tag(account_id, &self.account_id, path)
    }

    /// The zone in the path must be the fake's.
    pub(crate) fn zone(&self, zone_id: &str, path: &str) -> Result<(), ApiError> {
        check_tag(zone_id, &self.zone_id, path)
    }
}

/// A malformed tag cannot be routed (7003); a well-formed one the token has no access to is 403
/// `Authentication error`, which is what Cloudflare answers for another's account or zone.
fn check_tag(given: &str, ours: &str, path: &str) -> Result<(), ApiError> {
    let path = path.strip_prefix(PREFIX).unwrap_or(path);
    if given == ours {
        Ok(())
    } else if given.len() == 32 && given.bytes().all(|b| b.is_ascii_hexdigit()) {
        Err(ApiError::forbidden())
    } else {
        Err(ApiError::no_route(path))
    }
}

/// A running fake. Dropping it stops the server.
pub struct CloudflareFake {
    addr: SocketAddr,
    options: Options,
    control: Control,
    stop: Option<oneshot::Sender<()>>,
    task: JoinHandle<()>,
}

impl CloudflareFake {
    /// Serves on 127.0.0.1 on a free port.
    pub async fn start(options: Options) -> std::io::Result<CloudflareFake> {
        CloudflareFake::bind(SocketAddr::from(([127, 0, 0, 1], 0)), options).await
    }

    /// Serves on `addr` (the standalone binary's `--listen`).
    pub async fn bind(addr: SocketAddr, mut options: Options) -> std::io::Result<CloudflareFake> {
        options.zone_name = options.zone_name.trim_end_matches('.').to_ascii_lowercase();
        let shared = Arc::new(Shared {
            token: options.token.clone(),
            account_id: options.account_id.clone(),
            zone_id: options.zone_id.clone(),
            zone_name: options.zone_name.clone(),
            state: Mutex::new(State::new()),
            gate: Mutex::new(Gate::new(
                options.rate_limit,
                options.rate_window,
                options.record_answers,
            )),
        });
        let listener = tokio::net::TcpListener::bind(addr).await?;
        let addr = listener.local_addr()?;
        let app = router(Arc::clone(&shared));
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(async move {
            let serve = axum::serve(listener, app).with_graceful_shutdown(async move {
                let _ = stopped.await;
            });
            if let Err(e) = serve.await {
                eprintln!("cloudflare fake: server ended: {e}");
            }
        });
        Ok(CloudflareFake {
            addr,
            options,
            control: Control::new(shared),
            stop: Some(stop),
            task,
        })
    }

    /// The base URL to use in place of `https://api.cloudflare.com/client/v4`.
    pub fn url(&self) -> String {
        format!("http://{}{PREFIX}", self.addr)
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The API token the fake accepts.
    pub fn token(&self) -> &str {
        &self.options.token
    }

    pub fn account_id(&self) -> &str {
        &self.options.account_id
    }

    pub fn zone_id(&self) -> &str {
        &self.options.zone_id
    }

    pub fn zone_name(&self) -> &str {
        &self.options.zone_name
    }

    /// Inspection, fault injection and the simulated cloudflared.
    pub fn control(&self) -> &Control {
        &self.control
    }

    /// Stops serving and waits for the server task to end.
    pub async fn stop(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        let task = std::mem::replace(&mut self.task, tokio::spawn(async {}));
        let _ = tokio::time::timeout(Duration::from_secs(5), task).await;
    }
}

impl Drop for CloudflareFake {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn router(shared: Arc<Shared>) -> Router {
    let tunnel = "/client/v4/accounts/{account_id}/cfd_tunnel";
    let records = "/client/v4/zones/{zone_id}/dns_records";
    Router::new()
        .route(tunnel, get(tunnels::list).post(tunnels::create))
        .route(
            &format!("{tunnel}/{{tunnel_id}}"),
            get(tunnels::get_one).delete(tunnels::delete),
        )
        .route(
            &format!("{tunnel}/{{tunnel_id}}/token"),
            get(tunnels::get_token),
        )
        .route(
            &format!("{tunnel}/{{tunnel_id}}/configurations"),
            get(tunnels::get_config).put(tunnels::put_config),
        )
        .route(
            &format!("{tunnel}/{{tunnel_id}}/connections"),
            get(tunnels::connections).delete(tunnels::cleanup_connections),
        )
        .route(records, get(dns::list).post(dns::create))
        .route(
            &format!("{records}/{{dns_record_id}}"),
            get(dns::get_one).delete(dns::delete),
        )
        .route_layer(axum::middleware::from_fn_with_state(
            Arc::clone(&shared),
            gate::gate,
        ))
        .fallback(gate::unknown_route)
        .with_state(shared)
}
