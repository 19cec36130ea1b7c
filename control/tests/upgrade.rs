//! A database an earlier release wrote upgrades in place, on SQLite and on PostgreSQL: its
//! state periods, usage rows and audit chain are the same rows afterwards, `audit verify`
//! passes, every answer the API gave before is given again, and the upgraded ledger keeps
//! working.
//!
//! Each `fixtures/schema-NNNN/` directory was written by `write_fixture` below, run on the last
//! release whose newest migration is NNNN, through that release's own API:
//!
//! ```text
//! UPGRADE_FIXTURE_DIR=$PWD/control/tests/fixtures/schema-NNNN \
//!     cargo test -p control --test upgrade -- --ignored write_fixture
//! ```
//!
//! It holds `rows.sql` (every row that release left in its database, as INSERT statements
//! both backends take) and `answers.json` (the clock's final instant, the tokens, and what the
//! API answered to a set of reads at that instant). `schema-0002` comes from commit 73660dc (the
//! release before jobs became steps), `schema-0003` from commit 620ecf1.
//! Before the next schema change, run it on the release before the change to add a fixture.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::too_many_lines)] // a failed unwrap is a failed test

mod common;

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use axum::http::Method;
use common::Harness;
use control::clock::Clock;
use serde_json::{Value, json};
use sqlx::postgres::PgConnection;
use sqlx::sqlite::SqliteConnection;
use sqlx::{Connection, Row};
use test_support::{Backend, TestDb};

/// A plain connection to a test database of either backend, outside control's store.
enum Conn {
    Sqlite(SqliteConnection),
    Postgres(PgConnection),
}

impl Conn {
    async fn open(db: &TestDb) -> Self {
        match db.backend {
            Backend::Sqlite => Self::Sqlite(SqliteConnection::connect(&db.url).await.unwrap()),
            Backend::Postgres => Self::Postgres(PgConnection::connect(&db.url).await.unwrap()),
        }
    }

    async fn execute(&mut self, sql: &str) -> Result<(), sqlx::Error> {
        match self {
            Self::Sqlite(conn) => sqlx::query(sqlx::AssertSqlSafe(sql.to_owned()))
                .execute(conn)
                .await
                .map(drop),
            Self::Postgres(conn) => sqlx::query(sqlx::AssertSqlSafe(sql.to_owned()))
                .execute(conn)
                .await
                .map(drop),
        }
    }

    /// The first column of every row `sql` selects, as text.
    async fn strings(&mut self, sql: &str) -> Vec<String> {
        match self {
            Self::Sqlite(conn) => sqlx::query(sqlx::AssertSqlSafe(sql.to_owned()))
                .fetch_all(conn)
                .await
                .unwrap()
                .iter()
                .map(|row| row.get::<String, _>(0))
                .collect(),
            Self::Postgres(conn) => sqlx::query(sqlx::AssertSqlSafe(sql.to_owned()))
                .fetch_all(conn)
                .await
                .unwrap()
                .iter()
                .map(|row| row.get::<String, _>(0))
                .collect(),
        }
    }

    async fn close(self) {
        match self {
            Self::Sqlite(conn) => conn.close().await.ok(),
            Self::Postgres(conn) => conn.close().await.ok(),
        };
    }
}

/// The tables an old release's rows are loaded into, parents first.
const TABLES: &[&str] = &[
    "accounts",
    "api_tokens",
    "images",
    "current_image",
    "agents",
    "state_periods",
    "usage_daily",
    "usage_rollup",
    "audit_events",
    "audit_head",
    "jobs",
    "idempotency_keys",
    "agent_bootstrap",
    "agent_credentials",
    "agent_liveness",
    "replicas",
    "leases",
];

/// Tables a fresh database already holds a row of; the fixture's row replaces it.
const SEEDED: &[&str] = &["usage_rollup", "audit_head"];

fn fixture_dir(schema: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(schema)
}

/// The reads whose answers must survive an upgrade: `(token name, path)`.
fn reads(agents: &[String], accounts: &[String], days: (&str, &str)) -> Vec<(String, String)> {
    let (from, to) = days;
    let mut reads = vec![
        ("operator".to_owned(), "/api/agents".to_owned()),
        ("operator".to_owned(), "/api/images".to_owned()),
        ("operator".to_owned(), "/api/audit?limit=500".to_owned()),
        ("operator".to_owned(), "/api/audit/verify".to_owned()),
        (
            "operator".to_owned(),
            format!("/api/usage?from={from}&to={to}"),
        ),
    ];
    for (n, account) in accounts.iter().enumerate() {
        let token = format!("account{n}");
        reads.push((token.clone(), "/api/agents".to_owned()));
        reads.push((token, format!("/api/usage?from={from}&to={to}")));
        reads.push((
            "operator".to_owned(),
            format!("/api/usage?from={from}&to={to}&account_id={account}"),
        ));
    }
    for agent in agents {
        reads.push(("operator".to_owned(), format!("/api/agents/{agent}")));
        reads.push((
            "operator".to_owned(),
            format!("/api/agents/{agent}/timeline"),
        ));
        reads.push((
            "operator".to_owned(),
            format!("/api/audit?resource_id={agent}"),
        ));
    }
    reads
}

/// What the release under test answers to `reads`, keyed by `"token path"`.
async fn answers(
    harness: &Harness,
    tokens: &BTreeMap<String, String>,
    reads: &[(String, String)],
) -> BTreeMap<String, Value> {
    let mut answers = BTreeMap::new();
    for (token, path) in reads {
        let reply = harness
            .call(Method::GET, path, Some(&tokens[token]), None)
            .await;
        answers.insert(
            format!("{token} {path}"),
            json!({"status": reply.status.as_u16(), "body": reply.body}),
        );
    }
    answers
}

/// Posts `body` to `path` and runs the job it queued.
async fn act(h: &Harness, path: String, token: &str, body: Value) {
    let reply = h.post(&path, token, body).await;
    assert!(reply.status.is_success(), "{path}: {:#}", reply.body);
    h.run_jobs().await;
}

/// Drives a release through its API across four UTC days and writes what it left behind.
/// Ignored: it writes a fixture, it checks nothing.
#[tokio::test]
#[ignore = "writes an upgrade fixture; run by hand on a release (see the top of this file)"]
async fn write_fixture() {
    let dir = PathBuf::from(
        std::env::var_os("UPGRADE_FIXTURE_DIR").expect("set UPGRADE_FIXTURE_DIR to write into"),
    );
    let h = Harness::new(TestDb::sqlite()).await;
    h.release("2026.11.1").await;
    let (alpha, alpha_token) = h.account("alpha").await;
    let (beta, beta_token) = h.account("beta").await;
    let build = h.agent(&alpha_token, "build-box").await;
    let notebook = h.agent(&alpha_token, "notebook").await;
    let runner = h.agent(&beta_token, "ci-runner").await;
    let hour = 3_600_000;

    h.advance(2 * hour + 1_234);
    act(
        &h,
        format!("/api/agents/{build}/stop"),
        &alpha_token,
        json!({}),
    )
    .await;
    h.advance(20 * hour + 567);
    control::ledger::rollup(&h.app.store, h.now())
        .await
        .unwrap();
    act(
        &h,
        format!("/api/agents/{build}/start"),
        &alpha_token,
        json!({}),
    )
    .await;
    h.advance(hour);
    act(
        &h,
        format!("/api/agents/{notebook}/transfer"),
        &h.operator,
        json!({"to_account": beta}),
    )
    .await;
    h.advance(26 * hour + 89);
    let destroyed = h
        .delete(&format!("/api/agents/{runner}"), &beta_token)
        .await;
    assert_eq!(destroyed.status, 202, "{:#}", destroyed.body);
    h.run_jobs().await;
    control::ledger::rollup(&h.app.store, h.now())
        .await
        .unwrap();
    h.advance(9 * hour);
    act(
        &h,
        format!("/api/agents/{notebook}/stop"),
        &beta_token,
        json!({}),
    )
    .await;
    // A late release, and an Agent provisioned on it, with an idempotency key.
    h.release("2026.11.2").await;
    let late = h
        .raw(
            Method::POST,
            "/api/agents",
            Some(&alpha_token),
            &[
                ("content-type", "application/json".to_owned()),
                ("idempotency-key", "fixture-late-agent".to_owned()),
            ],
            json!({"name": "late"}).to_string().into_bytes(),
        )
        .await;
    assert_eq!(late.status, 202, "{:#}", late.body);
    let late = late.body["id"].as_str().unwrap().to_owned();
    h.run_jobs().await;
    h.advance(3 * hour + 321);
    control::ledger::rollup(&h.app.store, h.now())
        .await
        .unwrap();

    let agents = vec![build, notebook, runner, late];
    let accounts = vec![alpha, beta];
    let tokens = BTreeMap::from([
        ("operator".to_owned(), h.operator.clone()),
        ("account0".to_owned(), alpha_token),
        ("account1".to_owned(), beta_token),
    ]);
    let days = (
        common::START[..10].to_owned(),
        h.now().day().next().to_string(),
    );
    let reads = reads(&agents, &accounts, (&days.0, &days.1));
    let answers = answers(&h, &tokens, &reads).await;
    let fixture = json!({
        "now": h.now(),
        "tokens": tokens,
        "agents": agents,
        "accounts": accounts,
        "days": [days.0, days.1],
        "answers": answers,
    });
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(
        dir.join("answers.json"),
        serde_json::to_string_pretty(&fixture).unwrap() + "\n",
    )
    .unwrap();
    std::fs::write(dir.join("rows.sql"), dump_rows(&h.db).await).unwrap();
}

/// Every row of [`TABLES`] as INSERT statements, one a line, rendered by SQLite's `quote()`
/// (integers bare, text single-quoted with quotes doubled, NULL), which PostgreSQL reads too.
async fn dump_rows(db: &TestDb) -> String {
    let mut conn = Conn::open(db).await;
    let mut out = String::from("-- Rows an earlier release left behind; see tests/upgrade.rs.\n");
    for table in SEEDED {
        writeln!(out, "DELETE FROM {table};").unwrap();
    }
    for table in TABLES {
        let columns = conn
            .strings(&format!(
                "SELECT name FROM pragma_table_info('{table}') ORDER BY cid"
            ))
            .await;
        let values = columns
            .iter()
            .map(|c| format!("quote({c})"))
            .collect::<Vec<_>>()
            .join(" || ', ' || ");
        let lines = conn
            .strings(&format!(
                "SELECT 'INSERT INTO {table} ({}) VALUES (' || {values} || ');'
                 FROM {table} ORDER BY rowid",
                columns.join(", ")
            ))
            .await;
        for line in lines {
            out.push_str(&line);
            out.push('\n');
        }
    }
    conn.close().await;
    out
}

/// The ledger's rows in a form both schemas give: periods as (id, kind, resource, account,
/// state, start, end), usage rows and audit events whole.
async fn ledger_rows(db: &TestDb, periods_by: &str) -> Vec<String> {
    let mut conn = Conn::open(db).await;
    let mut rows = Vec::new();
    let queries = [
        format!(
            "SELECT 'period ' || id || ' ' || {periods_by} || ' ' || account_id || ' ' || state
                    || ' ' || CAST(started_at AS TEXT) || ' '
                    || COALESCE(CAST(ended_at AS TEXT), 'open')
             FROM state_periods ORDER BY id"
        ),
        "SELECT 'usage ' || day || ' ' || resource_kind || ' ' || resource_id || ' '
                || account_id || ' ' || CAST(running_s AS TEXT) || ' ' || CAST(paused_s AS TEXT)
         FROM usage_daily ORDER BY day, resource_id, account_id"
            .to_owned(),
        "SELECT 'audit ' || CAST(seq AS TEXT) || ' ' || id || ' ' || action || ' '
                || resource_kind || ' ' || resource_id || ' ' || account_id || ' '
                || COALESCE(to_account_id, '-') || ' ' || details || ' ' || prev_hash
                || ' ' || hash
         FROM audit_events ORDER BY seq"
            .to_owned(),
        "SELECT 'head ' || CAST(seq AS TEXT) || ' ' || hash FROM audit_head".to_owned(),
        "SELECT 'rollup ' || COALESCE(final_through, '-') || ' '
                || COALESCE(CAST(ran_at AS TEXT), '-')
         FROM usage_rollup"
            .to_owned(),
    ];
    for query in queries {
        rows.extend(conn.strings(&query).await);
    }
    conn.close().await;
    rows
}

/// Loads `schema`'s fixture into a database migrated as far as that release did, upgrades it,
/// and checks that nothing the old release wrote or answered changed.
async fn upgrades_in_place(backend: Backend, schema: &str, version: i64) {
    let Some(db) = TestDb::new(backend).await else {
        return test_support::skip("the PostgreSQL upgrade test");
    };
    let dir = fixture_dir(schema);
    let fixture: Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("answers.json")).unwrap()).unwrap();
    let rows = std::fs::read_to_string(dir.join("rows.sql")).unwrap();

    // The database as the old release left it.
    let old = common::connect_unmigrated(&db).await;
    old.migrate_to(version).await.unwrap();
    old.close().await;
    let mut conn = Conn::open(&db).await;
    let mut loaded = 0;
    for statement in rows
        .lines()
        .filter(|l| !l.starts_with("--") && !l.is_empty())
    {
        conn.execute(statement)
            .await
            .unwrap_or_else(|e| panic!("loading `{statement}`: {e}"));
        loaded += 1;
    }
    conn.close().await;
    assert!(loaded > 50, "the fixture holds only {loaded} rows");
    let before = ledger_rows(&db, "'agent' || ' ' || agent_id").await;
    assert!(before.iter().any(|r| r.starts_with("period ")));
    assert!(before.iter().any(|r| r.starts_with("usage ")));
    assert!(before.iter().any(|r| r.starts_with("audit ")));

    // The upgrade: what `control serve` does at start.
    let h = Harness::new(db).await;
    let after = ledger_rows(&h.db, "resource_kind || ' ' || resource_id").await;
    let lost: Vec<_> = before.iter().filter(|r| !after.contains(r)).collect();
    let gained: Vec<_> = after.iter().filter(|r| !before.contains(r)).collect();
    assert!(
        lost.is_empty() && gained.is_empty(),
        "the upgrade changed the ledger's rows:\nlost {lost:#?}\ngained {gained:#?}"
    );
    assert_eq!(before, after, "the upgrade reordered the ledger's rows");
    let verified = control::audit::verify(&h.app.store).await.unwrap();
    assert!(verified.ok, "{verified:?}");

    // The API answers as the old release did, at the same instant.
    h.clock
        .set(serde_json::from_value(fixture["now"].clone()).unwrap());
    let tokens: BTreeMap<String, String> =
        serde_json::from_value(fixture["tokens"].clone()).unwrap();
    let strings =
        |key: &str| -> Vec<String> { serde_json::from_value(fixture[key].clone()).unwrap() };
    let (agents, accounts, days) = (strings("agents"), strings("accounts"), strings("days"));
    let reads = reads(&agents, &accounts, (&days[0], &days[1]));
    let now = answers(&h, &tokens, &reads).await;
    let then: BTreeMap<String, Value> = serde_json::from_value(fixture["answers"].clone()).unwrap();
    assert_eq!(then.len(), reads.len(), "the fixture answers other reads");
    for (read, answer) in &then {
        assert_eq!(
            &now[read], answer,
            "GET {read} answers differently after the upgrade"
        );
    }

    // The upgraded ledger keeps working: an old open period splits at a transfer, a new Agent
    // gets its periods, and the rollup still conserves.
    let build = &agents[0];
    let moved = h
        .post(
            &format!("/api/agents/{build}/transfer"),
            &h.operator,
            json!({"to_account": accounts[1]}),
        )
        .await;
    assert_eq!(moved.status, 200, "{:#}", moved.body);
    let fresh = h.agent(&tokens["account1"], "after-upgrade").await;
    h.advance(3_600_000);
    control::ledger::rollup(&h.app.store, h.clock.now())
        .await
        .unwrap();
    let timeline = h
        .get(&format!("/api/agents/{build}/timeline"), &h.operator)
        .await;
    let periods = timeline.body["periods"].as_array().unwrap();
    assert_eq!(periods.last().unwrap()["account_id"], accounts[1].as_str());
    let timeline = h
        .get(&format!("/api/agents/{fresh}/timeline"), &h.operator)
        .await;
    assert_eq!(timeline.status, 200, "{:#}", timeline.body);
    assert!(!timeline.body["periods"].as_array().unwrap().is_empty());
    let verified = control::audit::verify(&h.app.store).await.unwrap();
    assert!(verified.ok, "{verified:?}");
}

#[tokio::test]
async fn a_schema_0003_database_upgrades_in_place_on_sqlite() {
    upgrades_in_place(Backend::Sqlite, "schema-0003", 3).await;
}

#[tokio::test]
async fn a_schema_0003_database_upgrades_in_place_on_postgres() {
    upgrades_in_place(Backend::Postgres, "schema-0003", 3).await;
}

#[tokio::test]
async fn a_schema_0002_database_upgrades_in_place_on_sqlite() {
    upgrades_in_place(Backend::Sqlite, "schema-0002", 2).await;
}

#[tokio::test]
async fn a_schema_0002_database_upgrades_in_place_on_postgres() {
    upgrades_in_place(Backend::Postgres, "schema-0002", 2).await;
}
