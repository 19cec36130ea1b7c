//! The harness control's integration tests share: an `App` on a test database with a manual
//! clock and the in-memory local provider, an operator token, and requests sent through the
//! real router (every layer included) without a socket.

#![allow(dead_code, unreachable_pub)] // each test file uses its own part of the harness
#![allow(clippy::unwrap_used, clippy::expect_used)] // a failed unwrap is a failed test

use std::sync::Arc;

use axum::Router;
use axum::body::Body;
use axum::http::{HeaderMap, Method, Request, StatusCode};
use control::app::{App, Settings};
use control::clock::{Clock, ManualClock};
use control::providers::Providers;
use control::providers::local::LocalProvider;
use control::store::{Store, StoreOptions};
use control_api::Timestamp;
use control_api::accounts::CreateToken;
use serde_json::{Value, json};
use test_support::TestDb;
use test_support::ledger::{
    self as checker, Day, Lifetime, Period, Resource, RolledUp, Snapshot, Usage,
};
use tower::ServiceExt;

/// Where every test's clock starts: a Friday morning, UTC.
pub const START: &str = "2026-11-20T09:00:00Z";

pub const DIGEST: &str = "sha256:1111111111111111111111111111111111111111111111111111111111111111";

pub struct Harness {
    pub app: App,
    pub clock: Arc<ManualClock>,
    pub local: Arc<LocalProvider>,
    pub operator: String,
    router: Router,
    pub db: TestDb,
}

/// An answer: status, headers and the body parsed as JSON (`Value::Null` when empty).
#[derive(Debug)]
pub struct Reply {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Value,
}

impl Reply {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    /// Asserts a problem+json answer with `status` naming `field` first, and returns it.
    #[track_caller]
    pub fn problem(&self, status: u16, field: Option<&str>) -> &Value {
        assert_eq!(
            self.status.as_u16(),
            status,
            "unexpected answer: {:#}",
            self.body
        );
        assert_eq!(
            self.header("content-type"),
            Some("application/problem+json"),
            "{:#}",
            self.body
        );
        assert_eq!(self.body["status"], status);
        assert!(
            self.body["title"].is_string() && self.body["detail"].is_string(),
            "{:#}",
            self.body
        );
        assert_eq!(
            self.body["request_id"].as_str(),
            self.header("x-request-id")
        );
        if let Some(field) = field {
            assert_eq!(self.body["errors"][0]["field"], field, "{:#}", self.body);
        }
        &self.body
    }
}

pub async fn connect(db: &TestDb) -> Store {
    let store = connect_unmigrated(db).await;
    store.migrate().await.expect("migrating");
    store
}

/// The store of `db` as it is, no migration applied.
pub async fn connect_unmigrated(db: &TestDb) -> Store {
    Store::connect(&db.url, &StoreOptions::default())
        .await
        .expect("connecting")
}

impl Harness {
    pub async fn new(db: TestDb) -> Self {
        Self::with_providers(
            db,
            |local| Providers::new(control::providers::local::cloud(local.clone())),
            Settings::default(),
        )
        .await
    }

    /// A harness whose control plane reaches the providers `providers` builds around the
    /// in-memory local provider (which `local` is, for tests that look at it).
    pub async fn with_providers(
        db: TestDb,
        providers: impl FnOnce(&Arc<LocalProvider>) -> Providers,
        settings: Settings,
    ) -> Self {
        let store = connect(&db).await;
        Self::on_store(db, store, providers, settings).await
    }

    /// A harness on `store`, an already migrated connection to `db` (as another role, say).
    pub async fn on_store(
        db: TestDb,
        store: Store,
        providers: impl FnOnce(&Arc<LocalProvider>) -> Providers,
        settings: Settings,
    ) -> Self {
        let clock = Arc::new(ManualClock::new(Timestamp::parse(START).unwrap()));
        let local = Arc::new(LocalProvider::in_memory());
        let providers = providers(&local);
        let app = App::new(store, clock.clone(), providers, settings);
        let operator = control::accounts::create_token(&app, None, &CreateToken::default(), None)
            .await
            .expect("creating an operator token")
            .token;
        Self {
            router: control::http::router(app.clone()),
            app,
            clock,
            local,
            operator,
            db,
        }
    }

    pub fn now(&self) -> Timestamp {
        self.clock.now()
    }

    pub fn advance(&self, ms: i64) {
        self.clock.advance_ms(ms);
    }

    /// Sends a request with optional bearer token and JSON body.
    pub async fn call(
        &self,
        method: Method,
        path: &str,
        token: Option<&str>,
        body: Option<Value>,
    ) -> Reply {
        let mut headers = Vec::new();
        if body.is_some() {
            headers.push(("content-type", "application/json".to_owned()));
        }
        let bytes = body.map(|b| b.to_string().into_bytes()).unwrap_or_default();
        self.raw(method, path, token, &headers, bytes).await
    }

    /// Sends a request exactly as given.
    pub async fn raw(
        &self,
        method: Method,
        path: &str,
        token: Option<&str>,
        headers: &[(&str, String)],
        body: Vec<u8>,
    ) -> Reply {
        let mut request = Request::builder().method(method).uri(path);
        if let Some(token) = token {
            request = request.header("authorization", format!("Bearer {token}"));
        }
        for (name, value) in headers {
            request = request.header(*name, value);
        }
        let response = self
            .router
            .clone()
            .oneshot(request.body(Body::from(body)).unwrap())
            .await
            .unwrap();
        let status = response.status();
        let headers = response.headers().clone();
        let bytes = axum::body::to_bytes(response.into_body(), usize::MAX)
            .await
            .unwrap();
        let body = if bytes.is_empty() {
            Value::Null
        } else {
            serde_json::from_slice(&bytes)
                .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&bytes).into_owned()))
        };
        Reply {
            status,
            headers,
            body,
        }
    }

    pub async fn get(&self, path: &str, token: &str) -> Reply {
        self.call(Method::GET, path, Some(token), None).await
    }

    pub async fn delete(&self, path: &str, token: &str) -> Reply {
        self.call(Method::DELETE, path, Some(token), None).await
    }

    pub async fn post(&self, path: &str, token: &str, body: Value) -> Reply {
        self.call(Method::POST, path, Some(token), Some(body)).await
    }

    /// Runs the jobs due now, as the background runner would.
    pub async fn run_jobs(&self) -> usize {
        control::jobs::run_due(&self.app)
            .await
            .expect("running jobs")
    }

    /// Runs the due jobs, letting the provider's time pass between runs, until Agent `id` is
    /// `state` with no operation under way; panics after 100 runs.
    pub async fn run_jobs_until(&self, id: &str, state: &str) {
        for _ in 0..100 {
            self.run_jobs().await;
            let view = self
                .get(&format!("/api/agents/{id}"), &self.operator)
                .await
                .body;
            if view["state"] == state && view["operation"].is_null() {
                return;
            }
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
            self.advance(6_000);
        }
        panic!("agent {id} never became {state}");
    }

    /// Registers release `version` with a local image and makes it current.
    pub async fn release(&self, version: &str) -> String {
        self.release_with(version, json!({"local": format!("local-{version}")}))
            .await
    }

    /// Registers release `version` with the provider references `refs` and makes it current.
    pub async fn release_with(&self, version: &str, refs: Value) -> String {
        let image = self
            .post(
                "/api/images",
                &self.operator,
                json!({
                    "version": version,
                    "agent_version": "0.1.0",
                    "manifest_digest": DIGEST,
                    "refs": refs,
                    "env": {"PLATFORM_RELEASE": version},
                }),
            )
            .await;
        assert_eq!(image.status, 201, "{:#}", image.body);
        let id = image.body["id"].as_str().unwrap().to_owned();
        let current = self
            .call(
                Method::PUT,
                "/api/images/current",
                Some(&self.operator),
                Some(json!({"image_id": id})),
            )
            .await;
        assert_eq!(current.status, 200, "{:#}", current.body);
        id
    }

    /// Creates an account and a token for it; returns `(account id, bearer)`.
    pub async fn account(&self, name: &str) -> (String, String) {
        let account = self
            .post("/api/accounts", &self.operator, json!({"name": name}))
            .await;
        assert_eq!(account.status, 201, "{:#}", account.body);
        let id = account.body["id"].as_str().unwrap().to_owned();
        let token = self
            .post(
                &format!("/api/accounts/{id}/tokens"),
                &self.operator,
                json!({}),
            )
            .await;
        assert_eq!(token.status, 201, "{:#}", token.body);
        (id, token.body["token"].as_str().unwrap().to_owned())
    }

    /// Provisions an Agent with `token` and runs its job; returns its id.
    pub async fn agent(&self, token: &str, name: &str) -> String {
        let agent = self.post("/api/agents", token, json!({"name": name})).await;
        assert_eq!(agent.status, 202, "{:#}", agent.body);
        self.run_jobs().await;
        agent.body["id"].as_str().unwrap().to_owned()
    }

    /// Rolls up, reads the whole ledger and checks the invariants on it.
    pub async fn ledger_holds(&self, context: &str) {
        control::ledger::rollup(&self.app.store, self.now())
            .await
            .unwrap();
        let mut tx = self.app.store.read().await.unwrap();
        let lifetimes = tx
            .agents(None, None, true, 10_000)
            .await
            .unwrap()
            .into_iter()
            .map(|a| Lifetime {
                resource: Resource::agent(&a.id),
                provisioned_at: a.provisioned_at,
                destroyed_at: a.destroyed_at,
            })
            .collect();
        let periods = tx
            .periods_overlapping(i64::MIN, i64::MAX)
            .await
            .unwrap()
            .into_iter()
            .map(|p| Period {
                resource: Resource::new(p.resource_kind.into(), &p.resource_id),
                account: p.account_id,
                state: p.state.into(),
                started_at: p.started_at,
                ended_at: p.ended_at,
            })
            .collect();
        let usage = tx
            .usage(None, "0000-01-01", "9999-12-31")
            .await
            .unwrap()
            .into_iter()
            .map(|r| Usage {
                day: Day::parse(&r.day).unwrap(),
                resource: Resource::new(r.resource_kind.into(), &r.resource_id),
                account: r.account_id,
                running_s: r.running_s,
                paused_s: r.paused_s,
            })
            .collect();
        let rolled_up = tx.rollup_state().await.unwrap().ran_at.map(RolledUp::at);
        let snapshot = Snapshot {
            lifetimes,
            periods,
            usage,
            transfers: Vec::new(),
            rolled_up,
            settled: Some(self.now().as_millis()),
        };
        checker::assert_none(&checker::check(&snapshot, None), context);
    }

    pub async fn snapshot(&self) -> String {
        self.app.store.snapshot().await.expect("snapshot")
    }
}

/// Control's clients of the Hetzner and Cloudflare fakes: new Agents on that Hetzner project
/// (actions looked at every 10 ms), each with its own tunnel in that Cloudflare account, both
/// retrying by `retry`.
pub fn fake_clouds(
    hetzner: &provider_fakes::hetzner::HetznerFake,
    cloudflare: &provider_fakes::cloudflare::CloudflareFake,
    retry: control::providers::http::RetryPolicy,
) -> Providers {
    use control::providers::Secret;
    use control::providers::cloudflare::{Cloudflare, CloudflareConfig};
    use control::providers::hetzner::{self, Hetzner, HetznerConfig};
    let clock = Arc::new(control::clock::SystemClock);
    let mut config = HetznerConfig::new(Secret(hetzner.token().to_owned()));
    config.base_url = hetzner.url();
    config.action_poll = std::time::Duration::from_millis(10);
    config.retry = retry;
    let project = Hetzner::new(config, clock.clone()).expect("a Hetzner client");
    let tunnels = Cloudflare::new(
        CloudflareConfig {
            base_url: cloudflare.url(),
            token: Secret(cloudflare.token().to_owned()),
            account_id: cloudflare.account_id().to_owned(),
            zone_id: cloudflare.zone_id().to_owned(),
            retry,
        },
        clock,
    )
    .expect("a Cloudflare client");
    Providers::new(hetzner::cloud(Arc::new(project))).with_tunnels(Arc::new(tunnels))
}

/// Audit event number `n` of a test chain.
pub fn audit_event(n: i64) -> control::audit::NewEvent<'static> {
    control::audit::NewEvent {
        at: Timestamp::from_millis(1_790_000_000_000 + n),
        actor: "token:tok_test".to_owned(),
        action: control_api::audit::AuditAction::AgentStart,
        resource_kind: control_api::usage::ResourceKind::Agent,
        resource_id: "agt_test",
        account_id: "acc_test",
        to_account_id: None,
        request_id: None,
        caller_request_id: None,
        details: json!({ "n": n }),
    }
}

/// Appends audit event number `n` in a transaction of its own.
pub async fn append_event(store: &Store, n: i64) {
    let mut tx = store.write().await.unwrap();
    control::audit::append(&mut tx, audit_event(n))
        .await
        .unwrap();
    tx.commit().await.unwrap();
}

/// Runs one statement outside the store's API, as an intruder with database access would.
pub async fn execute_raw(
    store: &Store,
    sql: &'static str,
) -> Result<(), control::store::StoreError> {
    let mut tx = store.write().await?;
    tx.execute_raw(sql).await?;
    tx.commit().await
}

/// Each of `edits` (and, on PostgreSQL, `truncate`) is refused by the database, and the
/// database is as it was.
pub async fn all_refused(
    db: &TestDb,
    store: &Store,
    edits: &[&'static str],
    truncate: &'static str,
) {
    let before = store.snapshot().await.unwrap();
    let postgres_only: &[&'static str] = if db.backend == test_support::Backend::Postgres {
        &[truncate]
    } else {
        &[]
    };
    for sql in edits.iter().chain(postgres_only) {
        let refused = execute_raw(store, sql).await;
        assert!(
            matches!(refused, Err(control::store::StoreError::Refused(_))),
            "{sql}: {refused:?}"
        );
    }
    assert_eq!(store.snapshot().await.unwrap(), before);
}
