//! The audit chain against someone holding the database: its head only follows its events, a
//! replacing insert is refused, a head that disagrees with the events stops changes with a
//! clear 503 (and fails readiness), a signed checkpoint catches a tail cut off behind the
//! database's back, and on PostgreSQL a runtime role may only read and append the audit tables.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::too_many_lines)] // a failed unwrap is a failed test

mod common;

use std::process::Command;

use control::app::Settings;
use control::audit::{self, checkpoint};
use control::store::{Store, StoreError, StoreOptions};
use control_api::Timestamp;
use control_api::audit::AuditCheckpoint;
use serde_json::json;
use sqlx::Connection as _;
use test_support::{Backend, TestDb, dual_backend_tests};

use common::{Harness, append_event, execute_raw};

dual_backend_tests!(
    the_head_only_advances_to_the_newest_event,
    a_replacing_or_forged_insert_is_refused,
    a_head_that_disagrees_with_the_events_stops_changes_with_a_clear_503,
    a_checkpoint_catches_a_truncated_tail,
    checkpoints_are_listed_for_operators,
);

/// Drops the named trigger, as an intruder with the owner's access can.
async fn drop_trigger(db: &TestDb, store: &Store, trigger: &str) {
    let sql: &'static str = match (db.backend, trigger) {
        (Backend::Sqlite, "no_delete") => "DROP TRIGGER audit_events_no_delete",
        (Backend::Postgres, "no_delete") => "DROP TRIGGER audit_events_no_delete ON audit_events",
        (Backend::Sqlite, "head") => "DROP TRIGGER audit_head_only_advances",
        (Backend::Postgres, "head") => "DROP TRIGGER audit_head_only_advances ON audit_head",
        _ => unreachable!("{trigger}"),
    };
    execute_raw(store, sql).await.unwrap();
}

/// The head rewound onto event 4, as the survivor of a cut tail.
const REWIND_TO_4: &str =
    "UPDATE audit_head SET seq = 4, hash = (SELECT hash FROM audit_events WHERE seq = 4)";

async fn the_head_only_advances_to_the_newest_event(db: TestDb) {
    let store = common::connect(&db).await;
    for n in 1..=6 {
        append_event(&store, n).await;
    }
    let mut edits: Vec<&'static str> = vec![
        REWIND_TO_4,
        "UPDATE audit_head SET seq = 7",
        "UPDATE audit_head SET seq = 0, hash = '0000000000000000000000000000000000000000000000000000000000000000'",
        "UPDATE audit_head SET hash = (SELECT hash FROM audit_events WHERE seq = 5)",
        "DELETE FROM audit_head",
        "INSERT INTO audit_head (singleton, seq, hash) VALUES (2, 4, 'x')",
    ];
    if db.backend == Backend::Sqlite {
        edits.push("INSERT OR REPLACE INTO audit_head (singleton, seq, hash) VALUES (1, 4, 'x')");
        edits.push("REPLACE INTO audit_head (singleton, seq, hash) VALUES (1, 0, 'x')");
    }
    common::all_refused(&db, &store, &edits, "TRUNCATE audit_head").await;

    // With the DELETE trigger gone the tail can be cut, but the head still refuses to follow:
    // the cut is a broken chain, named at its first missing event.
    drop_trigger(&db, &store, "no_delete").await;
    execute_raw(&store, "DELETE FROM audit_events WHERE seq > 4")
        .await
        .unwrap();
    let refused = execute_raw(&store, REWIND_TO_4).await;
    assert!(
        matches!(&refused, Err(StoreError::Refused(m)) if m.contains("only advances")),
        "{refused:?}"
    );
    let verdict = audit::verify(&store).await.unwrap();
    let bad = verdict.first_bad.unwrap();
    assert_eq!((verdict.ok, bad.seq), (false, 5), "{}", bad.reason);
    assert!(
        bad.reason.contains("deleted from its end"),
        "{}",
        bad.reason
    );
}

async fn a_replacing_or_forged_insert_is_refused(db: TestDb) {
    let store = common::connect(&db).await;
    for n in 1..=4 {
        append_event(&store, n).await;
    }
    let mut edits: Vec<&'static str> = vec![
        // A copy of event 3 with another actor, at the end: it does not link to the head.
        "INSERT INTO audit_events
         SELECT 5, 'evt_forged', at, 'token:tok_intruder', action, resource_kind, resource_id,
                account_id, to_account_id, request_id, details, prev_hash, 'forged'
         FROM audit_events WHERE seq = 3",
        // Links to the head but skips a seq.
        "INSERT INTO audit_events
         SELECT 9, 'evt_forged', at, actor, action, resource_kind, resource_id, account_id,
                to_account_id, request_id, details, hash, 'forged'
         FROM audit_events WHERE seq = 4",
    ];
    match db.backend {
        Backend::Sqlite => {
            // The replacing insert deletes the stored event without firing its DELETE trigger.
            edits.push(
                "INSERT OR REPLACE INTO audit_events
                 SELECT seq, id, at, 'token:tok_intruder', action, resource_kind, resource_id,
                        account_id, to_account_id, request_id, details, prev_hash, hash
                 FROM audit_events WHERE seq = 3",
            );
            edits.push(
                "REPLACE INTO audit_events
                 SELECT 5, id, at, actor, action, resource_kind, resource_id, account_id,
                        to_account_id, request_id, details, (SELECT hash FROM audit_head), 'other'
                 FROM audit_events WHERE seq = 2",
            );
        }
        Backend::Postgres => {
            edits.push(
                "INSERT INTO audit_events
                 SELECT * FROM audit_events WHERE seq = 3
                 ON CONFLICT (seq) DO UPDATE SET actor = 'token:tok_intruder'",
            );
        }
    }
    common::all_refused(&db, &store, &edits, "TRUNCATE audit_events").await;
    let verdict = audit::verify(&store).await.unwrap();
    assert!(verdict.ok && verdict.events_checked == 4, "{verdict:?}");
    // The chain still grows as before.
    append_event(&store, 5).await;
    assert_eq!(audit::verify(&store).await.unwrap().events_checked, 5);
}

async fn a_head_that_disagrees_with_the_events_stops_changes_with_a_clear_503(db: TestDb) {
    let h = Harness::new(db).await;
    h.release("v1").await;
    let (_, token) = h.account("acme").await;
    for name in ["one", "two", "three"] {
        h.agent(&token, name).await;
    }
    let ready = h.call(axum::http::Method::GET, "/readyz", None, None).await;
    assert_eq!(ready.status, 200, "{:#}", ready.body);
    let head: i64 = audit::verify(&h.app.store).await.unwrap().events_checked;
    assert!(head >= 3);

    // The head rewound behind the database's back (its trigger dropped first).
    drop_trigger(&h.db, &h.app.store, "head").await;
    execute_raw(
        &h.app.store,
        "UPDATE audit_head SET seq = 1, hash = (SELECT hash FROM audit_events WHERE seq = 1)",
    )
    .await
    .unwrap();
    let before = h.snapshot().await;
    let provision = h.post("/api/agents", &token, json!({"name": "four"})).await;
    let problem = provision.problem(503, None);
    let detail = problem["detail"].as_str().unwrap();
    assert!(
        detail.contains("audit log is damaged")
            && detail.contains(&format!("the newest stored event is {head}"))
            && detail.contains("rewound"),
        "{detail}"
    );
    assert!(provision.header("retry-after").is_some());
    assert_eq!(h.snapshot().await, before, "nothing was provisioned");
    let ready = h.call(axum::http::Method::GET, "/readyz", None, None).await;
    let problem = ready.problem(503, None);
    assert!(
        problem["detail"]
            .as_str()
            .unwrap()
            .contains("the chain head records 1 events"),
        "{problem:#}"
    );
    // Reads still answer.
    assert_eq!(h.get("/api/agents", &token).await.status, 200);

    // The head put back: changes flow again.
    execute_raw(
        &h.app.store,
        "UPDATE audit_head SET seq = (SELECT MAX(seq) FROM audit_events),
                hash = (SELECT hash FROM audit_events ORDER BY seq DESC LIMIT 1)",
    )
    .await
    .unwrap();
    let provision = h.post("/api/agents", &token, json!({"name": "four"})).await;
    assert_eq!(provision.status, 202, "{:#}", provision.body);

    // Events cut from the end with the head left alone: also damage, also named.
    drop_trigger(&h.db, &h.app.store, "no_delete").await;
    execute_raw(
        &h.app.store,
        "DELETE FROM audit_events WHERE seq = (SELECT MAX(seq) FROM audit_events)",
    )
    .await
    .unwrap();
    let before = h.snapshot().await;
    let provision = h.post("/api/agents", &token, json!({"name": "five"})).await;
    let detail = provision.problem(503, None)["detail"]
        .as_str()
        .unwrap()
        .to_owned();
    assert!(
        detail.contains("events were removed from the end"),
        "{detail}"
    );
    assert_eq!(h.snapshot().await, before);
}

fn write_checkpoint(dir: &std::path::Path, name: &str, checkpoint: &AuditCheckpoint) -> String {
    let path = dir.join(name);
    std::fs::write(&path, serde_json::to_string(checkpoint).unwrap()).unwrap();
    path.display().to_string()
}

/// `control audit verify [ARGS]` on `db`: exit code and stdout.
fn verify_cli(db: &TestDb, args: &[&str]) -> (Option<i32>, String) {
    let output = Command::new(env!("CARGO_BIN_EXE_control"))
        .args(["--database", &db.url, "audit", "verify"])
        .args(args)
        .output()
        .unwrap();
    (
        output.status.code(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        ),
    )
}

async fn a_checkpoint_catches_a_truncated_tail(db: TestDb) {
    let store = common::connect(&db).await;
    let keys = tempfile::tempdir().unwrap();
    let signer = checkpoint::Signer::load_or_create(&keys.path().join("key")).unwrap();
    let now = Timestamp::parse("2026-12-01T10:00:00Z").unwrap();
    assert_eq!(
        checkpoint::make(&store, &signer, now).await.unwrap(),
        None,
        "an empty chain"
    );
    for n in 1..=6 {
        append_event(&store, n).await;
    }
    let at_6 = checkpoint::make(&store, &signer, now)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(at_6.seq, 6);
    assert_eq!(
        checkpoint::make(&store, &signer, now).await.unwrap(),
        None,
        "nothing new to sign"
    );
    append_event(&store, 7).await;
    let at_7 = checkpoint::make(&store, &signer, now)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(at_7.seq, 7);
    checkpoint::check_signature(&at_7, Some(signer.public_key())).unwrap();
    let mut forged = at_7.clone();
    forged.seq = 9;
    assert!(checkpoint::check_signature(&forged, None).is_err());
    // The key is kept: loading it again signs with the same public key.
    let again = checkpoint::Signer::load_or_create(&keys.path().join("key")).unwrap();
    assert_eq!(again.public_key(), signer.public_key());

    let file_6 = write_checkpoint(keys.path(), "6.json", &at_6);
    let file_7 = write_checkpoint(keys.path(), "7.json", &at_7);
    let forged_file = write_checkpoint(keys.path(), "forged.json", &forged);
    let (code, out) = verify_cli(&db, &["--checkpoint", &file_7]);
    assert_eq!(code, Some(0), "{out}");
    assert!(
        out.contains("audit chain ok: 7 events") && out.contains("checkpoint of event 7"),
        "{out}"
    );
    let (code, out) = verify_cli(&db, &["--checkpoint", &forged_file]);
    assert_eq!(code, Some(2), "a forged checkpoint is no evidence: {out}");
    assert!(out.contains("does not verify"), "{out}");
    let (code, out) = verify_cli(
        &db,
        &["--checkpoint", &file_7, "--public-key", &"ab".repeat(32)],
    );
    assert_eq!(code, Some(2), "{out}");

    // Events 6 and 7 cut off and the head rewound, every trigger in the way dropped first: on
    // its own the chain verifies clean; against the checkpoint, event 6 is named missing.
    drop_trigger(&db, &store, "no_delete").await;
    drop_trigger(&db, &store, "head").await;
    execute_raw(&store, "DELETE FROM audit_events WHERE seq > 5")
        .await
        .unwrap();
    execute_raw(
        &store,
        "UPDATE audit_head SET seq = 5, hash = (SELECT hash FROM audit_events WHERE seq = 5)",
    )
    .await
    .unwrap();
    let (code, out) = verify_cli(&db, &[]);
    assert_eq!(
        code,
        Some(0),
        "the cut is invisible without a checkpoint: {out}"
    );
    // The checkpoints in the database see it too (unless they were cut as well), and the
    // cut chain is not signed.
    let refused = checkpoint::make(&store, &signer, now).await;
    assert!(
        matches!(&refused, Err(StoreError::AuditChain(m)) if m.contains("records 5 events, but the checkpoint of event 7")),
        "{refused:?}"
    );
    let (code, out) = verify_cli(&db, &["--checkpoint", &file_7]);
    assert_eq!(code, Some(1), "{out}");
    assert!(
        out.contains("BROKEN at event 6") && out.contains("events 6..=7 were removed"),
        "{out}"
    );
    let verdict = audit::verify_to(&store, Some(&at_7)).await.unwrap();
    assert_eq!(verdict.first_bad.unwrap().seq, 6);
    assert_eq!(verdict.events_checked, 5);

    // New events appended over the cut: the checkpoint's event 6 is not the one stored there.
    append_event(&store, 60).await;
    let (code, out) = verify_cli(&db, &["--checkpoint", &file_6]);
    assert_eq!(code, Some(1), "{out}");
    assert!(
        out.contains("BROKEN at event 6 (evt_")
            && out.contains("not the event the checkpoint signed"),
        "{out}"
    );
    // And events edited behind the triggers since the newest checkpoint are reported, never
    // signed.
    let db = match db.backend {
        Backend::Sqlite => TestDb::sqlite(),
        Backend::Postgres => TestDb::postgres().await.unwrap(),
    };
    let store = common::connect(&db).await;
    for n in 1..=3 {
        append_event(&store, n).await;
    }
    checkpoint::make(&store, &signer, now)
        .await
        .unwrap()
        .unwrap();
    append_event(&store, 4).await;
    append_event(&store, 5).await;
    let edit = match db.backend {
        Backend::Sqlite => "DROP TRIGGER audit_events_no_update",
        Backend::Postgres => "DROP TRIGGER audit_events_no_update ON audit_events",
    };
    execute_raw(&store, edit).await.unwrap();
    execute_raw(&store, "UPDATE audit_events SET actor = 'x' WHERE seq = 4")
        .await
        .unwrap();
    let refused = checkpoint::make(&store, &signer, now).await;
    assert!(
        matches!(&refused, Err(StoreError::AuditChain(m)) if m.contains("event 4 (evt_") && m.contains("edited")),
        "{refused:?}"
    );
}

async fn checkpoints_are_listed_for_operators(db: TestDb) {
    let h = Harness::new(db).await;
    h.release("v1").await;
    let (_, token) = h.account("acme").await;
    let keys = tempfile::tempdir().unwrap();
    let signer = checkpoint::Signer::load_or_create(&keys.path().join("key")).unwrap();
    let mut made = Vec::new();
    for name in ["one", "two", "three"] {
        h.agent(&token, name).await;
        made.push(
            checkpoint::make(&h.app.store, &signer, h.now())
                .await
                .unwrap()
                .unwrap(),
        );
    }
    let page = h.get("/api/audit/checkpoints?limit=2", &h.operator).await;
    assert_eq!(page.status, 200, "{:#}", page.body);
    let items: Vec<AuditCheckpoint> = serde_json::from_value(page.body["items"].clone()).unwrap();
    assert_eq!(
        items,
        vec![made[2].clone(), made[1].clone()],
        "newest first"
    );
    let cursor = page.body["next_cursor"].as_str().unwrap();
    let rest = h
        .get(
            &format!("/api/audit/checkpoints?cursor={cursor}"),
            &h.operator,
        )
        .await;
    assert_eq!(rest.body["items"][0]["seq"], made[0].seq);
    assert!(rest.body["next_cursor"].is_null());
    for item in &items {
        checkpoint::check_signature(item, Some(signer.public_key())).unwrap();
    }
    h.get("/api/audit/checkpoints", &token)
        .await
        .problem(403, None);
    for bad in [
        "limit=0",
        "limit=501",
        "cursor=abc",
        "cursor=-1",
        "cursor=1234567890123456789",
        "other=1",
    ] {
        let reply = h
            .get(&format!("/api/audit/checkpoints?{bad}"), &h.operator)
            .await;
        assert_eq!(reply.status, 422, "{bad}: {:#}", reply.body);
    }
}

/// The documented runtime role (control/postgres-runtime-role.sql) runs control: Agents are
/// provisioned and audited, while every edit of the audit tables, and any migration, is
/// refused by PostgreSQL's privileges even with the triggers out of the picture.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_postgres_runtime_role_may_only_insert_and_select_the_audit_tables() {
    let Some(db) = TestDb::postgres().await else {
        return;
    };
    common::connect(&db).await.close().await;
    let role = format!("ctl_runtime_{}", std::process::id());
    let grants = include_str!("../postgres-runtime-role.sql").replace("control_runtime", &role);
    let mut owner = sqlx::PgConnection::connect(&db.url).await.unwrap();
    for sql in [
        format!("DROP ROLE IF EXISTS {role}"),
        format!("CREATE ROLE {role} LOGIN"),
        grants,
    ] {
        sqlx::raw_sql(sqlx::AssertSqlSafe(sql))
            .execute(&mut owner)
            .await
            .unwrap();
    }
    owner.close().await.unwrap();

    let mut url = url::Url::parse(&db.url).unwrap();
    url.set_username(&role).unwrap();
    let runtime = Store::connect(url.as_str(), &StoreOptions::default())
        .await
        .unwrap();
    let migrating = runtime.migrate().await.unwrap_err();
    assert!(migrating.is_permission_denied(), "{migrating:?}");
    assert!(runtime.is_migrated().await.unwrap());

    let h = Harness::on_store(
        db,
        runtime.clone(),
        |local| control::providers::Providers::new(control::providers::local::cloud(local.clone())),
        Settings::default(),
    )
    .await;
    h.release("v1").await;
    let (_, token) = h.account("acme").await;
    let agent = h.agent(&token, "one").await;
    h.run_jobs_until(&agent, "running").await;
    let stop = h
        .post(&format!("/api/agents/{agent}/stop"), &token, json!({}))
        .await;
    assert_eq!(stop.status, 202, "{:#}", stop.body);
    let keys = tempfile::tempdir().unwrap();
    let signer = checkpoint::Signer::load_or_create(&keys.path().join("key")).unwrap();
    checkpoint::make(&runtime, &signer, h.now())
        .await
        .unwrap()
        .unwrap();
    assert!(audit::verify(&runtime).await.unwrap().ok);

    let before = h.snapshot().await;
    for sql in [
        "UPDATE audit_events SET actor = 'x' WHERE seq = 1",
        "DELETE FROM audit_events",
        "TRUNCATE audit_events",
        "UPDATE audit_head SET seq = seq",
        "DELETE FROM audit_head",
        "UPDATE audit_checkpoints SET seq = seq",
        "DELETE FROM audit_checkpoints",
        "DROP TRIGGER audit_events_no_delete ON audit_events",
        "ALTER TABLE audit_events DISABLE TRIGGER ALL",
        "DELETE FROM _sqlx_migrations",
    ] {
        let refused = execute_raw(&runtime, sql).await;
        assert!(
            matches!(&refused, Err(e) if e.is_permission_denied() || format!("{e:?}").contains("must be owner")),
            "{sql}: {refused:?}"
        );
    }
    assert_eq!(h.snapshot().await, before);
    runtime.close().await;
    // The role goes once its privileges have gone with the test's database.
    let mut admin_url = url::Url::parse(&h.db.url).unwrap();
    admin_url.set_path("/postgres");
    drop(h);
    let mut admin = sqlx::PgConnection::connect(admin_url.as_str())
        .await
        .unwrap();
    sqlx::raw_sql(sqlx::AssertSqlSafe(format!("DROP ROLE {role}")))
        .execute(&mut admin)
        .await
        .unwrap();
}
