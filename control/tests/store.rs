//! The storage layer on SQLite and PostgreSQL: migrations, the immutable audit chain, and
//! what the database itself refuses.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::too_many_lines)] // a failed unwrap is a failed test

mod common;

use std::process::Command;

use control::audit;
use control::store::{Backend, IdempotencyClaim, Store, StoreOptions};
use control_api::Timestamp;
use test_support::{TestDb, dual_backend_tests, have_program};

dual_backend_tests!(
    migrations_apply_once_and_are_checked,
    the_database_refuses_to_edit_audit_events,
    the_database_keeps_every_state_period,
    an_unhealthy_mark_is_cleared_only_by_a_newer_heartbeat,
    sql_shells_cannot_edit_audit_events,
    verify_names_the_first_tampered_event,
    concurrent_appends_form_one_chain,
    idempotency_claims_stranded_past_their_lease_are_purged,
    changes_in_one_millisecond_are_all_followed_across_pages,
    a_page_of_changes_starts_at_its_position_in_the_index,
);

async fn migrations_apply_once_and_are_checked(db: TestDb) {
    let store = common::connect(&db).await;
    assert!(store.is_migrated().await.unwrap());
    let before = store.snapshot().await.unwrap();
    store.migrate().await.unwrap();
    assert_eq!(
        store.snapshot().await.unwrap(),
        before,
        "a second run changes nothing"
    );
    let expected = match db.backend {
        test_support::Backend::Sqlite => Backend::Sqlite,
        test_support::Backend::Postgres => Backend::Postgres,
    };
    assert_eq!(store.backend(), expected);
}

async fn the_database_refuses_to_edit_audit_events(db: TestDb) {
    let store = common::connect(&db).await;
    for n in 1..=3 {
        common::append_event(&store, n).await;
    }
    let edits: &[&'static str] = &[
        "UPDATE audit_events SET actor = 'someone else' WHERE seq = 2",
        "UPDATE audit_events SET details = '{}'",
        "DELETE FROM audit_events WHERE seq = 3",
        "DELETE FROM audit_events",
    ];
    common::all_refused(&db, &store, edits, "TRUNCATE audit_events").await;
    assert!(audit::verify(&store).await.unwrap().ok);
}

/// Ledger invariant 4 (survival) holds in the database too: no period is ever deleted, a closed
/// one never changes, while the open one still closes.
async fn the_database_keeps_every_state_period(db: TestDb) {
    let store = common::connect(&db).await;
    common::execute_raw(
        &store,
        "INSERT INTO accounts (id, name, created_at) VALUES ('acc_t', 't', 0)",
    )
    .await
    .unwrap();
    common::execute_raw(
        &store,
        "INSERT INTO state_periods
             (id, resource_kind, resource_id, account_id, state, started_at, ended_at)
         VALUES ('per_closed', 'plain_vm', 'pvm_t', 'acc_t', 'running', 0, 1000),
                ('per_open', 'plain_vm', 'pvm_t', 'acc_t', 'paused', 1000, NULL)",
    )
    .await
    .unwrap();
    let edits: &[&'static str] = &[
        "DELETE FROM state_periods WHERE id = 'per_closed'",
        "DELETE FROM state_periods WHERE id = 'per_open'",
        "DELETE FROM state_periods",
        "UPDATE state_periods SET ended_at = 2000 WHERE id = 'per_closed'",
        "UPDATE state_periods SET account_id = 'acc_t', state = 'paused' WHERE ended_at IS NOT NULL",
    ];
    common::all_refused(&db, &store, edits, "TRUNCATE state_periods").await;
    common::execute_raw(
        &store,
        "UPDATE state_periods SET ended_at = 3000 WHERE id = 'per_open'",
    )
    .await
    .expect("the open period still closes");
}

async fn an_unhealthy_mark_is_cleared_only_by_a_newer_heartbeat(db: TestDb) {
    use control::store::LivenessRow;
    let store = common::connect(&db).await;
    account_and_image(&store).await;
    common::execute_raw(
        &store,
        "INSERT INTO agents (id, account_id, name, provider, image_id, image_ref, env, state,
                             provisioned_at, updated_at)
         VALUES ('agt_t', 'acc_t', 'dev', 'local', 'img_t', 'local-v1', '{}', 'running', 0, 0)",
    )
    .await
    .unwrap();
    let row = |last_seen_at| LivenessRow {
        agent_id: "agt_t".to_owned(),
        custodian: "rep_a".to_owned(),
        last_seen_at,
        boot_id: "boot-1".to_owned(),
        sequence: 1,
        agent_version: "0.1.0".to_owned(),
        tunnel_state: "ready".to_owned(),
        slice_state: "mounted".to_owned(),
        report: "{}".to_owned(),
        unhealthy_since: None,
    };
    let write = |rows: Vec<LivenessRow>| {
        let store = store.clone();
        async move {
            let mut tx = store.write().await.unwrap();
            tx.write_liveness(&rows).await.unwrap();
            tx.commit().await.unwrap();
        }
    };
    let unhealthy_since = || {
        let store = store.clone();
        async move {
            let mut tx = store.read().await.unwrap();
            tx.liveness("agt_t").await.unwrap().unwrap().unhealthy_since
        }
    };
    write(vec![row(1_000)]).await;
    let mut tx = store.write().await.unwrap();
    assert!(
        tx.mark_unhealthy("agt_t", "rep_a", 100_000, 100_000)
            .await
            .unwrap()
    );
    tx.commit().await.unwrap();
    assert_eq!(unhealthy_since().await, Some(100_000));
    // The same heartbeat written behind again (a flush, a handoff): still unhealthy.
    write(vec![row(1_000)]).await;
    assert_eq!(unhealthy_since().await, Some(100_000));
    // A newer one: heard from again.
    write(vec![row(2_000)]).await;
    assert_eq!(unhealthy_since().await, None);
}

async fn sql_shells_cannot_edit_audit_events(db: TestDb) {
    let store = common::connect(&db).await;
    common::append_event(&store, 1).await;
    common::append_event(&store, 2).await;
    let before = store.snapshot().await.unwrap();
    let statements = [
        "UPDATE audit_events SET actor = 'x' WHERE seq = 1;",
        "DELETE FROM audit_events WHERE seq = 2;",
        "DELETE FROM audit_events;",
    ];
    for sql in statements {
        let output = match db.backend {
            test_support::Backend::Sqlite => {
                if !have_program("sqlite3") {
                    return;
                }
                Command::new("sqlite3")
                    .arg(db.sqlite_path.as_ref().unwrap())
                    .arg(sql)
                    .output()
                    .unwrap()
            }
            test_support::Backend::Postgres => {
                if !have_program("psql") {
                    return;
                }
                Command::new("psql")
                    .args([db.url.as_str(), "-v", "ON_ERROR_STOP=1", "-c", sql])
                    .output()
                    .unwrap()
            }
        };
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(!output.status.success(), "{sql} succeeded in the shell");
        assert!(stderr.contains("append-only"), "{sql}: {stderr}");
    }
    if db.backend == test_support::Backend::Postgres {
        let output = Command::new("psql")
            .args([
                db.url.as_str(),
                "-v",
                "ON_ERROR_STOP=1",
                "-c",
                "TRUNCATE audit_events;",
            ])
            .output()
            .unwrap();
        assert!(
            !output.status.success()
                && String::from_utf8_lossy(&output.stderr).contains("append-only")
        );
    }
    assert_eq!(store.snapshot().await.unwrap(), before);
}

/// Where a tamper is made, and which event verification must name.
struct Tamper {
    what: &'static str,
    sql: &'static [&'static str],
    first_bad: i64,
    names_event: bool,
}

async fn verify_names_the_first_tampered_event(db: TestDb) {
    let drop_triggers: &[&'static str] = match db.backend {
        test_support::Backend::Sqlite => &[
            "DROP TRIGGER audit_events_no_update",
            "DROP TRIGGER audit_events_no_delete",
        ],
        test_support::Backend::Postgres => &[
            "DROP TRIGGER audit_events_no_update ON audit_events",
            "DROP TRIGGER audit_events_no_delete ON audit_events",
        ],
    };
    let tampers = [
        Tamper {
            what: "an edited event",
            sql: &["UPDATE audit_events SET actor = 'token:tok_intruder' WHERE seq = 4"],
            first_bad: 4,
            names_event: true,
        },
        Tamper {
            what: "a deleted event",
            sql: &["DELETE FROM audit_events WHERE seq = 3"],
            first_bad: 3,
            names_event: false,
        },
        Tamper {
            what: "a deleted last event",
            sql: &["DELETE FROM audit_events WHERE seq = 6"],
            first_bad: 6,
            names_event: false,
        },
        Tamper {
            what: "two swapped events",
            sql: &[
                "UPDATE audit_events SET seq = -2 WHERE seq = 2",
                "UPDATE audit_events SET seq = 2 WHERE seq = 5",
                "UPDATE audit_events SET seq = 5 WHERE seq = -2",
            ],
            first_bad: 2,
            names_event: true,
        },
    ];
    let control = env!("CARGO_BIN_EXE_control");
    for tamper in tampers {
        let db = match db.backend {
            test_support::Backend::Sqlite => TestDb::sqlite(),
            test_support::Backend::Postgres => TestDb::postgres().await.unwrap(),
        };
        let store = common::connect(&db).await;
        for n in 1..=6 {
            common::append_event(&store, n).await;
        }
        let intact = Command::new(control)
            .args(["--database", &db.url, "audit", "verify"])
            .output()
            .unwrap();
        assert!(
            intact.status.success(),
            "{}",
            String::from_utf8_lossy(&intact.stderr)
        );
        assert!(String::from_utf8_lossy(&intact.stdout).starts_with("audit chain ok: 6 events"));

        for sql in drop_triggers.iter().chain(tamper.sql) {
            common::execute_raw(&store, sql)
                .await
                .unwrap_or_else(|e| panic!("{sql}: {e}"));
        }
        let verdict = audit::verify(&store).await.unwrap();
        assert!(!verdict.ok, "{} went unnoticed", tamper.what);
        let bad = verdict.first_bad.unwrap();
        assert_eq!(bad.seq, tamper.first_bad, "{}: {}", tamper.what, bad.reason);
        assert_eq!(
            bad.event_id.is_some(),
            tamper.names_event,
            "{}",
            tamper.what
        );

        let cli = Command::new(control)
            .args(["--database", &db.url, "audit", "verify"])
            .output()
            .unwrap();
        let stdout = String::from_utf8_lossy(&cli.stdout);
        assert_eq!(cli.status.code(), Some(1), "{}: {stdout}", tamper.what);
        assert!(
            stdout.contains(&format!("BROKEN at event {}", tamper.first_bad)),
            "{}: {stdout}",
            tamper.what
        );
        store.close().await;
    }
}

async fn concurrent_appends_form_one_chain(db: TestDb) {
    // On PostgreSQL two pools stand for two replicas sharing the database.
    let first = common::connect(&db).await;
    let second = match db.backend {
        test_support::Backend::Postgres => Store::connect(&db.url, &StoreOptions::default())
            .await
            .unwrap(),
        test_support::Backend::Sqlite => first.clone(),
    };
    let mut tasks = Vec::new();
    for task in 0..20_i64 {
        let store = if task % 2 == 0 {
            first.clone()
        } else {
            second.clone()
        };
        tasks.push(tokio::spawn(async move {
            for n in 0..50 {
                common::append_event(&store, task * 1_000 + n).await;
            }
        }));
    }
    for task in tasks {
        task.await.unwrap();
    }
    let verdict = audit::verify(&first).await.unwrap();
    assert!(verdict.ok, "{:?}", verdict.first_bad);
    assert_eq!(verdict.events_checked, 1_000);

    let cli = Command::new(env!("CARGO_BIN_EXE_control"))
        .args(["--database", &db.url, "audit", "verify"])
        .output()
        .unwrap();
    assert!(cli.status.success());
    assert!(String::from_utf8_lossy(&cli.stdout).starts_with("audit chain ok: 1000 events"));
}

/// A request whose claim could not be released (the database was unreachable, or control
/// died) leaves a claim with no answer. Once its lease has passed the sweep forgets it, as it
/// forgets answers past their retention; it never forgets a live claim nor an answer younger
/// than its retention.
async fn idempotency_claims_stranded_past_their_lease_are_purged(db: TestDb) {
    const HOUR: i64 = 3_600_000;
    const LEASE: i64 = 60_000;
    let store = common::connect(&db).await;
    let now = Timestamp::from_millis(1_790_000_000_000);
    let t = now.as_millis();
    // (key, claimed at, answered): claims hold a one-minute lease from when they were made.
    let keys = [
        ("answered-25h-ago", t - 25 * HOUR, true),
        ("answered-1h-ago", t - HOUR, true),
        ("stranded-2h-ago", t - 2 * HOUR, false),
        ("stranded-30h-ago", t - 30 * HOUR, false),
        ("live-claim", t - 10_000, false),
    ];
    for (key, at, answered) in keys {
        let mut tx = store.write().await.unwrap();
        let claim = tx
            .claim_idempotency_key("operator", key, "hash", key, at, at + LEASE)
            .await
            .unwrap();
        assert_eq!(claim, IdempotencyClaim::Claimed, "{key}");
        if answered {
            assert!(
                tx.complete_idempotency_key("operator", key, key, 200, "{}")
                    .await
                    .unwrap()
            );
        }
        tx.commit().await.unwrap();
    }

    let purged = control::idempotency::purge(&store, now).await.unwrap();

    // A key still stored refuses a different request; a forgotten one is free to claim.
    let mut kept = Vec::new();
    for (key, _, _) in keys {
        let mut tx = store.write().await.unwrap();
        let claim = tx
            .claim_idempotency_key("operator", key, "other", "probe", t, t + LEASE)
            .await
            .unwrap();
        drop(tx); // rolled back: the probe changes nothing
        if claim == IdempotencyClaim::Mismatch {
            kept.push(key);
        }
    }
    assert_eq!(
        (kept, purged),
        (vec!["answered-1h-ago", "live-claim"], 3),
        "kept: an answer within its retention and a claim within its lease"
    );
}

/// Many Agents changed in the same millisecond (an import, a bulk stop): paging the changes by
/// `updated_at` alone would skip those past the page's end. Paged by (`updated_at`, id), every
/// change is read once.
async fn changes_in_one_millisecond_are_all_followed_across_pages(db: TestDb) {
    let store = common::connect(&db).await;
    account_and_image(&store).await;
    for (n, updated_at) in [(1, 5), (2, 7), (3, 7), (4, 7), (5, 7), (6, 9)] {
        let insert = format!(
            "INSERT INTO agents (id, account_id, name, provider, image_id, image_ref, env,
                                 state, provisioned_at, updated_at)
             VALUES ('agt_{n}', 'acc_t', 'dev{n}', 'local', 'img_t', 'local-v1', '{{}}',
                     'running', 0, {updated_at})"
        );
        // The raw statement outlives the call; six small strings for the test's life.
        common::execute_raw(&store, insert.leak()).await.unwrap();
    }
    let mut after = (0, String::new());
    let mut seen = Vec::new();
    loop {
        let mut tx = store.read().await.unwrap();
        let page = tx
            .agents_changed_since((after.0, &after.1), 2)
            .await
            .unwrap();
        let Some(last) = page.last() else { break };
        after = (last.updated_at, last.id.clone());
        seen.extend(page.iter().map(|change| change.id.clone()));
    }
    assert_eq!(seen, ["agt_1", "agt_2", "agt_3", "agt_4", "agt_5", "agt_6"]);
}

/// Every replica reads a page of changes each second. With `updated_at` alone indexed, the
/// page read every row of its starting millisecond before the first one after its position:
/// after 100,000 Agents changed in one millisecond, each follow read all 100,000 again (tens of
/// milliseconds a second). Both columns of the position must bound the index search.
async fn a_page_of_changes_starts_at_its_position_in_the_index(db: TestDb) {
    let store = common::connect(&db).await;
    let mut tx = store.write().await.unwrap();
    let plan = tx.plan_of_agents_changed_since().await.unwrap().join("\n");
    drop(tx); // rolled back
    let bounded_by_both = match db.backend {
        // SEARCH agents USING INDEX agents_by_update_and_id ((updated_at,id)>(?,?))
        test_support::Backend::Sqlite => plan.contains("(updated_at,id)>(?,?)"),
        // Index Cond: (ROW(updated_at, id) > ROW($1, $2))
        test_support::Backend::Postgres => plan.contains("Index Cond: (ROW(updated_at, id) >"),
    };
    assert!(
        plan.contains("agents_by_update_and_id") && bounded_by_both,
        "the page is not searched by (updated_at, id):\n{plan}"
    );
}

/// The account `acc_t` and the image `img_t`, which an Agent row refers to.
async fn account_and_image(store: &Store) {
    common::execute_raw(
        store,
        "INSERT INTO accounts (id, name, created_at) VALUES ('acc_t', 't', 0)",
    )
    .await
    .unwrap();
    common::execute_raw(
        store,
        "INSERT INTO images (id, version, agent_version, manifest_digest, refs, env, created_at)
         VALUES ('img_t', 'v1', '0.1.0', 'sha256:00', '{}', '{}', 0)",
    )
    .await
    .unwrap();
}
