//! A loopback fake of the Hetzner Cloud API v1: servers, firewalls, volumes and actions, with
//! Hetzner's paths, JSON shapes, status codes, error envelope, label selectors, pagination and
//! hourly request budget. Tests start it with [`HetznerFake::start`], point the client at
//! [`HetznerFake::url`], and steer it (faults, stalls, crashes, action outcomes) through
//! [`Control`]. It listens on loopback only and must never forward anything anywhere.

mod actions;
mod catalog;
mod catalogue;
mod control;
mod error;
mod firewalls;
mod labels;
mod list;
mod middleware;
mod render;
mod reply;
pub mod schema;
mod servers;
mod state;
mod update;
mod volumes;

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::routing::{get, post};

pub use crate::common::faults::CrashMode;
pub use crate::common::gate::Answer;
pub use axum::http::Method;
pub use control::{ActionView, Control, Fault, FirewallView, ServerView, VolumeView};
pub use state::Rule;

use crate::common::gate::{self as common_gate, Gate};
pub(crate) use crate::common::lock;
use crate::common::serving::Server;
use middleware::Bucket;
pub(crate) use middleware::Shared;
use state::{Action, Firewall, State, Volume};

/// Every route the fake serves, as (method, path template): the keys of call counts and faults.
pub const ROUTES: &[(&str, &str)] = &[
    ("GET", "/v1/servers"),
    ("POST", "/v1/servers"),
    ("GET", "/v1/servers/{id}"),
    ("PUT", "/v1/servers/{id}"),
    ("DELETE", "/v1/servers/{id}"),
    ("POST", "/v1/servers/{id}/actions/poweron"),
    ("POST", "/v1/servers/{id}/actions/poweroff"),
    ("POST", "/v1/servers/{id}/actions/shutdown"),
    ("GET", "/v1/server_types"),
    ("GET", "/v1/locations"),
    ("GET", "/v1/images"),
    ("GET", "/v1/images/{id}"),
    ("GET", "/v1/actions"),
    ("GET", "/v1/actions/{id}"),
    ("GET", "/v1/firewalls"),
    ("POST", "/v1/firewalls"),
    ("GET", "/v1/firewalls/{id}"),
    ("PUT", "/v1/firewalls/{id}"),
    ("DELETE", "/v1/firewalls/{id}"),
    ("POST", "/v1/firewalls/{id}/actions/set_rules"),
    ("POST", "/v1/firewalls/{id}/actions/apply_to_resources"),
    ("POST", "/v1/firewalls/{id}/actions/remove_from_resources"),
    ("GET", "/v1/volumes"),
    ("POST", "/v1/volumes"),
    ("GET", "/v1/volumes/{id}"),
    ("PUT", "/v1/volumes/{id}"),
    ("DELETE", "/v1/volumes/{id}"),
    ("POST", "/v1/volumes/{id}/actions/attach"),
    ("POST", "/v1/volumes/{id}/actions/detach"),
];

/// How a fake starts. `Options::default()` is Hetzner's own budget and a short action delay.
#[derive(Clone, Debug)]
pub struct Options {
    /// The bearer token the fake accepts; any other gets 401 `unauthorized`.
    pub token: String,
    /// Requests per hour (`RateLimit-Limit`); Hetzner's is 3600.
    pub rate_limit: u32,
    /// Requests returned to the budget per second; `None` is Hetzner's `rate_limit / 3600`.
    pub refill_per_second: Option<f64>,
    /// How long one step of an action runs before it ends (`0` finishes actions at the next call).
    pub action_delay: Duration,
    /// Keep the answers (the latest 20,000, or 64 mebibytes of bodies) for `Control::answers`; turn
    /// off for long runs.
    pub record_answers: bool,
}

impl Default for Options {
    fn default() -> Options {
        Options {
            token: "hetzner-fake-token".to_owned(),
            rate_limit: 3600,
            refill_per_second: None,
            action_delay: Duration::from_millis(200),
            record_answers: true,
        }
    }
}

/// A running fake. Dropping it stops the server.
pub struct HetznerFake {
    server: Server,
    token: String,
    control: Control,
}

impl HetznerFake {
    /// Serves on 127.0.0.1 on a free port.
    pub async fn start(options: Options) -> std::io::Result<HetznerFake> {
        HetznerFake::bind(SocketAddr::from(([127, 0, 0, 1], 0)), options).await
    }

    /// Serves on `addr` (the standalone binary's `--listen`).
    pub async fn bind(addr: SocketAddr, options: Options) -> std::io::Result<HetznerFake> {
        let refill = options
            .refill_per_second
            .unwrap_or(f64::from(options.rate_limit) / 3600.0);
        let shared = Arc::new(Shared {
            token: options.token.clone(),
            state: Mutex::new(State::new(options.action_delay)),
            gate: Mutex::new(Gate::new(
                Bucket::new(options.rate_limit, refill),
                options.record_answers,
            )),
        });
        let server = Server::bind(addr, router(Arc::clone(&shared)), "hetzner").await?;
        Ok(HetznerFake {
            server,
            token: options.token,
            control: Control::new(shared),
        })
    }

    /// The base URL to use in place of `https://api.hetzner.cloud/v1`.
    pub fn url(&self) -> String {
        format!("http://{}/v1", self.server.addr())
    }

    pub fn addr(&self) -> SocketAddr {
        self.server.addr()
    }

    /// The bearer token the fake accepts.
    pub fn token(&self) -> &str {
        &self.token
    }

    /// Inspection and fault injection.
    pub fn control(&self) -> &Control {
        &self.control
    }

    /// Stops serving and waits for the server task to end.
    pub async fn stop(self) {
        self.server.stop().await;
    }
}

fn router(shared: Arc<Shared>) -> Router {
    Router::new()
        .route(
            "/v1/servers",
            get(reply::list::<state::Server>).post(servers::create),
        )
        .route(
            "/v1/servers/{id}",
            get(reply::get_one::<state::Server>)
                .put(update::update::<state::Server>)
                .delete(servers::delete),
        )
        .route("/v1/servers/{id}/actions/poweron", post(servers::poweron))
        .route("/v1/servers/{id}/actions/poweroff", post(servers::poweroff))
        .route("/v1/servers/{id}/actions/shutdown", post(servers::shutdown))
        .route("/v1/server_types", get(catalogue::server_types))
        .route("/v1/locations", get(catalogue::locations))
        .route("/v1/images", get(catalogue::images))
        .route("/v1/images/{id}", get(catalogue::image))
        .route("/v1/actions", get(actions::list))
        .route("/v1/actions/{id}", get(reply::get_one::<Action>))
        .route(
            "/v1/firewalls",
            get(reply::list::<Firewall>).post(firewalls::create),
        )
        .route(
            "/v1/firewalls/{id}",
            get(reply::get_one::<Firewall>)
                .put(update::update::<Firewall>)
                .delete(firewalls::delete),
        )
        .route(
            "/v1/firewalls/{id}/actions/set_rules",
            post(firewalls::set_rules),
        )
        .route(
            "/v1/firewalls/{id}/actions/apply_to_resources",
            post(firewalls::apply_to),
        )
        .route(
            "/v1/firewalls/{id}/actions/remove_from_resources",
            post(firewalls::remove_from),
        )
        .route(
            "/v1/volumes",
            get(reply::list::<Volume>).post(volumes::create),
        )
        .route(
            "/v1/volumes/{id}",
            get(reply::get_one::<Volume>)
                .put(update::update::<Volume>)
                .delete(volumes::delete),
        )
        .route("/v1/volumes/{id}/actions/attach", post(volumes::attach))
        .route("/v1/volumes/{id}/actions/detach", post(volumes::detach))
        .route_layer(axum::middleware::from_fn_with_state(
            Arc::clone(&shared),
            common_gate::gate::<Shared>,
        ))
        .fallback(common_gate::unknown_route::<Shared>)
        .with_state(shared)
}

/// A path id: Hetzner ids are positive integers.
pub(crate) fn parse_id(raw: &str) -> Result<u64, error::ApiError> {
    raw.parse::<u64>()
        .map_err(|_| error::ApiError::invalid_field("id", format!("'{raw}' is not an id")))
}
