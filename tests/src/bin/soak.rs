//! The kill -9 soak as a program (README, "Kill -9 soak"): `soak [--backend sqlite|postgres|both]
//! [--kills N] [--clients N] [--seed S]`. PostgreSQL is the server `CONTROL_TEST_POSTGRES_URL`
//! names (as for the tests). Prints its figures; exits 1 on any violation.

use std::process::ExitCode;

use e2e::soak::{Options, run};

fn usage() -> ExitCode {
    eprintln!("usage: soak [--backend sqlite|postgres|both] [--kills N] [--clients N] [--seed S]");
    ExitCode::from(2)
}

#[tokio::main]
async fn main() -> ExitCode {
    let mut backends = vec![false, true];
    let mut options = Options {
        postgres: false,
        kills: 10,
        clients: 3,
        seed: fastrand::u64(..),
    };
    let args: Vec<String> = std::env::args().skip(1).collect();
    for pair in args.chunks(2) {
        let [flag, value] = pair else {
            return usage();
        };
        let parsed = value.parse::<u64>().ok();
        match (flag.as_str(), value.as_str(), parsed) {
            ("--backend", "sqlite", _) => backends = vec![false],
            ("--backend", "postgres", _) => backends = vec![true],
            ("--backend", "both", _) => backends = vec![false, true],
            ("--kills", _, Some(n)) => options.kills = usize::try_from(n).unwrap_or(usize::MAX),
            ("--clients", _, Some(n)) if n > 0 => {
                options.clients = usize::try_from(n).unwrap_or(1);
            }
            ("--seed", _, Some(n)) => options.seed = n,
            _ => return usage(),
        }
    }
    let mut failed = false;
    for postgres in backends {
        let options = Options {
            postgres,
            ..options.clone()
        };
        match run(&options).await {
            Some(figures) => {
                println!("{figures}");
                failed |= !figures.violations.is_empty();
            }
            None => println!("soak on PostgreSQL skipped: no server (CONTROL_TEST_POSTGRES_URL)"),
        }
    }
    if failed {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    }
}
