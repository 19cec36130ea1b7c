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
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::routing::get;

pub use crate::common::faults::CrashMode;
pub use crate::common::gate::Answer;
pub use axum::http::Method;
pub use check::assert_answers_enveloped;
pub use control::{Control, DnsRecordView, Fault, IngressRuleView, TunnelView};

use crate::common::gate::{self as common_gate, Gate};
pub(crate) use crate::common::lock;
use crate::common::serving::Server;
use envelope::ApiError;
pub(crate) use gate::Shared;
use gate::Window;
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
    /// Keep the answers (the latest 20,000, or 64 mebibytes of bodies) for `Control::answers`;
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
    server: Server,
    options: Options,
    control: Control,
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
                Window::new(options.rate_limit, options.rate_window),
                options.record_answers,
            )),
        });
        let server = Server::bind(addr, router(Arc::clone(&shared)), "cloudflare").await?;
        Ok(CloudflareFake {
            server,
            options,
            control: Control::new(shared),
        })
    }

    /// The base URL to use in place of `https://api.cloudflare.com/client/v4`.
    pub fn url(&self) -> String {
        format!("http://{}{PREFIX}", self.server.addr())
    }

    pub fn addr(&self) -> SocketAddr {
        self.server.addr()
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
    pub async fn stop(self) {
        self.server.stop().await;
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
            common_gate::gate::<Shared>,
        ))
        .fallback(common_gate::unknown_route::<Shared>)
        .with_state(shared)
}
