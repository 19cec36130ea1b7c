//! A loopback fake of the Fly Machines API v1 (`https://api.machines.dev/v1`), the part control
//! uses for the legacy cohort of Agents that runs on Fly: apps of one organization, their
//! machines (create, get, list, start, stop, suspend, `wait`, destroy, metadata) and volumes,
//! with Fly's JSON shapes, its status codes and its error body `{"error": "…", "status": "…"}`.
//! A machine's transient states (`starting`, `stopping`, `suspending`, `destroying`) turn into
//! their persistent ones after [`Options::transition_delay`]; `wait` blocks until the state is
//! reached or answers 408. Tests start it with [`FlyFake::start`], plant the legacy Agents that
//! already exist ([`Control::plant`]), point the client at [`FlyFake::url`], and steer it (faults,
//! stalls, crashes, a rate limit) through [`Control`]. It listens on loopback only and never
//! forwards anything anywhere.

mod api;
mod control;
mod gate;
mod state;

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::routing::{get, post};

pub use crate::common::faults::CrashMode;
pub use crate::common::gate::Answer;
pub use axum::http::Method;
pub use control::{AppView, Control, Fault, MachineView, Planted, VolumeView};
pub use state::MachineState;

use crate::common::gate::{self as common_gate, Gate};
pub(crate) use crate::common::lock;
use crate::common::serving::Server;
use gate::Bucket;
pub(crate) use gate::Shared;
use state::State;

/// The path prefix of every route: the base URL is `http://ADDR/v1`.
pub const PREFIX: &str = "/v1";

/// Every route the fake serves, as (method, path template): the keys of call counts and faults.
pub const ROUTES: &[(&str, &str)] = &[
    ("GET", "/v1/apps"),
    ("POST", "/v1/apps"),
    ("GET", "/v1/apps/{app}"),
    ("DELETE", "/v1/apps/{app}"),
    ("GET", "/v1/apps/{app}/machines"),
    ("POST", "/v1/apps/{app}/machines"),
    ("GET", "/v1/apps/{app}/machines/{machine}"),
    ("DELETE", "/v1/apps/{app}/machines/{machine}"),
    ("POST", "/v1/apps/{app}/machines/{machine}/start"),
    ("POST", "/v1/apps/{app}/machines/{machine}/stop"),
    ("POST", "/v1/apps/{app}/machines/{machine}/suspend"),
    ("GET", "/v1/apps/{app}/machines/{machine}/wait"),
    ("GET", "/v1/apps/{app}/machines/{machine}/metadata"),
    ("POST", "/v1/apps/{app}/machines/{machine}/metadata/{key}"),
    ("DELETE", "/v1/apps/{app}/machines/{machine}/metadata/{key}"),
    ("GET", "/v1/apps/{app}/volumes"),
    ("POST", "/v1/apps/{app}/volumes"),
    ("GET", "/v1/apps/{app}/volumes/{volume}"),
    ("DELETE", "/v1/apps/{app}/volumes/{volume}"),
];

/// How a fake starts. `Options::default()` has no rate limit and a short transition delay.
#[derive(Clone, Debug)]
pub struct Options {
    /// The token the fake accepts as `Authorization: Bearer …` or `FlyV1 …`; any other gets
    /// 401 `{"error": "unauthorized"}`.
    pub token: String,
    /// The one organization the token sees; `GET /v1/apps?org_slug=` of another is refused.
    pub org_slug: String,
    /// How long `starting`, `stopping`, `suspending` and `destroying` last.
    pub transition_delay: Duration,
    /// `(per second, burst)` of a token bucket over every call, standing for Fly's limits per
    /// action (about 1/s with bursts of 3); `None` (the default) is no limit.
    pub rate_limit: Option<(u32, u32)>,
    /// Keep the answers (the latest 20,000, or 64 mebibytes of bodies) for `Control::answers`;
    /// turn off for long runs.
    pub record_answers: bool,
}

impl Default for Options {
    fn default() -> Options {
        Options {
            token: "fly-fake-token".to_owned(),
            org_slug: "legacy-agents".to_owned(),
            transition_delay: Duration::from_millis(200),
            rate_limit: None,
            record_answers: true,
        }
    }
}

/// A running fake. Dropping it stops the server.
pub struct FlyFake {
    server: Server,
    options: Options,
    control: Control,
}

impl FlyFake {
    /// Serves on 127.0.0.1 on a free port.
    pub async fn start(options: Options) -> std::io::Result<FlyFake> {
        FlyFake::bind(SocketAddr::from(([127, 0, 0, 1], 0)), options).await
    }

    /// Serves on `addr` (the standalone binary's `--listen`).
    pub async fn bind(addr: SocketAddr, options: Options) -> std::io::Result<FlyFake> {
        let shared = Arc::new(Shared {
            token: options.token.clone(),
            org_slug: options.org_slug.clone(),
            state: Mutex::new(State::new(options.transition_delay)),
            gate: Mutex::new(Gate::new(
                Bucket::new(options.rate_limit),
                options.record_answers,
            )),
        });
        let server = Server::bind(addr, router(Arc::clone(&shared)), "fly").await?;
        Ok(FlyFake {
            server,
            options,
            control: Control::new(shared),
        })
    }

    /// The base URL to use in place of `https://api.machines.dev/v1`.
    pub fn url(&self) -> String {
        format!("http://{}{PREFIX}", self.server.addr())
    }

    pub fn addr(&self) -> SocketAddr {
        self.server.addr()
    }

    /// The token the fake accepts.
    pub fn token(&self) -> &str {
        &self.options.token
    }

    pub fn org_slug(&self) -> &str {
        &self.options.org_slug
    }

    /// Inspection, fault injection and planting what exists already.
    pub fn control(&self) -> &Control {
        &self.control
    }

    /// Stops serving and waits for the server task to end.
    pub async fn stop(self) {
        self.server.stop().await;
    }
}

fn router(shared: Arc<Shared>) -> Router {
    let machine = "/v1/apps/{app}/machines/{machine}";
    Router::new()
        .route("/v1/apps", get(api::list_apps).post(api::create_app))
        .route("/v1/apps/{app}", get(api::get_app).delete(api::delete_app))
        .route(
            "/v1/apps/{app}/machines",
            get(api::list_machines).post(api::create_machine),
        )
        .route(machine, get(api::get_machine).delete(api::destroy_machine))
        .route(&format!("{machine}/start"), post(api::start))
        .route(&format!("{machine}/stop"), post(api::stop))
        .route(&format!("{machine}/suspend"), post(api::suspend))
        .route(&format!("{machine}/wait"), get(api::wait))
        .route(&format!("{machine}/metadata"), get(api::get_metadata))
        .route(
            &format!("{machine}/metadata/{{key}}"),
            post(api::set_metadata).delete(api::delete_metadata),
        )
        .route(
            "/v1/apps/{app}/volumes",
            get(api::list_volumes).post(api::create_volume),
        )
        .route(
            "/v1/apps/{app}/volumes/{volume}",
            get(api::get_volume).delete(api::delete_volume),
        )
        .route_layer(axum::middleware::from_fn_with_state(
            Arc::clone(&shared),
            common_gate::gate::<Shared>,
        ))
        .fallback(common_gate::unknown_route::<Shared>)
        .with_state(shared)
}
