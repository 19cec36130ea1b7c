//! The kill -9 soak (`e2e::soak`), bounded: three kills on each backend, with a printed seed
//! so a failure can be run again with `cargo run -p e2e --bin soak -- --seed S`.

#![allow(clippy::unwrap_used, clippy::expect_used)] // a failed unwrap is a failed test

use e2e::soak::{Options, run};

async fn soak(postgres: bool) {
    let options = Options {
        postgres,
        kills: 3,
        clients: 3,
        seed: fastrand::u64(..),
    };
    let Some(figures) = run(&options).await else {
        test_support::skip("the PostgreSQL soak");
        return;
    };
    println!("{figures}");
    assert!(figures.violations.is_empty(), "{figures}");
    assert_eq!(figures.kills, 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn soak_on_sqlite() {
    soak(false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn soak_on_postgres() {
    soak(true).await;
}
