//! `provider-fakes hetzner|cloudflare|fly --listen ADDR [--token T]`: runs a fake standalone so
//! anyone can point control at it by hand. It prints the base URL and the token (and Cloudflare's
//! account and zone, Fly's organization), then serves until Ctrl-C.

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::Context;
use clap::{Parser, Subcommand};
use provider_fakes::cloudflare::{self, CloudflareFake};
use provider_fakes::fly::{self, FlyFake};
use provider_fakes::hetzner::{HetznerFake, Options, schema};

#[derive(Parser)]
#[command(about = "Loopback fakes of the cloud providers' APIs")]
struct Cli {
    #[command(subcommand)]
    provider: Provider,
}

#[derive(Subcommand)]
enum Provider {
    /// The Hetzner Cloud API v1.
    Hetzner {
        /// Address to listen on, e.g. 127.0.0.1:8088.
        #[arg(long, default_value = "127.0.0.1:0")]
        listen: SocketAddr,
        /// The bearer token to accept.
        #[arg(long, default_value = "hetzner-fake-token")]
        token: String,
        /// Requests per hour before 429 `rate_limit_exceeded`.
        #[arg(long, default_value_t = 3600)]
        rate_limit: u32,
        /// Milliseconds one step of an action runs.
        #[arg(long, default_value_t = 200)]
        action_delay_ms: u64,
        /// Keep every answer, and when stopped (Ctrl-C or SIGTERM) check them all against
        /// Hetzner's OpenAPI schemas: exit 1, naming each mismatch, if one does not match.
        #[arg(long)]
        check_answers: bool,
    },
    /// The Cloudflare API v4 (tunnels and DNS records of one zone).
    Cloudflare {
        /// Address to listen on, e.g. 127.0.0.1:8089.
        #[arg(long, default_value = "127.0.0.1:0")]
        listen: SocketAddr,
        /// The API token to accept.
        #[arg(long, default_value = "cloudflare-fake-token")]
        token: String,
        /// The zone whose DNS records the fake keeps.
        #[arg(long, default_value = "agents.example.test")]
        zone_name: String,
        /// Requests per five minutes before 429 (and five minutes blocked).
        #[arg(long, default_value_t = 1200)]
        rate_limit: u32,
    },
    /// The Fly Machines API v1 (apps, machines and volumes of one organization).
    Fly {
        /// Address to listen on, e.g. 127.0.0.1:8090.
        #[arg(long, default_value = "127.0.0.1:0")]
        listen: SocketAddr,
        /// The token to accept (as `Bearer` or `FlyV1`).
        #[arg(long, default_value = "fly-fake-token")]
        token: String,
        /// The organization whose apps the token sees.
        #[arg(long, default_value = "legacy-agents")]
        org_slug: String,
        /// Milliseconds a machine spends starting, stopping, suspending or destroying.
        #[arg(long, default_value_t = 200)]
        transition_delay_ms: u64,
    },
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    match Cli::parse().provider {
        Provider::Hetzner {
            listen,
            token,
            rate_limit,
            action_delay_ms,
            check_answers,
        } => {
            let options = Options {
                token,
                rate_limit,
                refill_per_second: None,
                action_delay: Duration::from_millis(action_delay_ms),
                // A standalone fake runs for long: keep no answers unless asked to check them.
                record_answers: check_answers,
            };
            let fake = HetznerFake::bind(listen, options)
                .await
                .with_context(|| format!("listening on {listen}"))?;
            println!("Hetzner Cloud API fake");
            println!("url:   {}", fake.url());
            println!("token: {}", fake.token());
            stopped().await?;
            let answers = fake.control().answers();
            fake.stop().await;
            if check_answers {
                match schema::check_answers(&answers) {
                    Ok(checked) => eprintln!("{checked} answers match Hetzner's OpenAPI schemas"),
                    Err(report) => {
                        eprintln!("{report}");
                        std::process::exit(1);
                    }
                }
            }
        }
        Provider::Cloudflare {
            listen,
            token,
            zone_name,
            rate_limit,
        } => {
            let options = cloudflare::Options {
                token,
                zone_name,
                rate_limit,
                // A standalone fake runs for long: keep no answers.
                record_answers: false,
                ..cloudflare::Options::default()
            };
            let fake = CloudflareFake::bind(listen, options)
                .await
                .with_context(|| format!("listening on {listen}"))?;
            println!("Cloudflare API v4 fake");
            println!("url:        {}", fake.url());
            println!("token:      {}", fake.token());
            println!("account_id: {}", fake.account_id());
            println!("zone_id:    {}", fake.zone_id());
            println!("zone_name:  {}", fake.zone_name());
            stopped().await?;
            fake.stop().await;
        }
        Provider::Fly {
            listen,
            token,
            org_slug,
            transition_delay_ms,
        } => {
            let options = fly::Options {
                token,
                org_slug,
                transition_delay: Duration::from_millis(transition_delay_ms),
                // A standalone fake runs for long: keep no answers.
                record_answers: false,
                ..fly::Options::default()
            };
            let fake = FlyFake::bind(listen, options)
                .await
                .with_context(|| format!("listening on {listen}"))?;
            println!("Fly Machines API fake");
            println!("url:      {}", fake.url());
            println!("token:    {}", fake.token());
            println!("org_slug: {}", fake.org_slug());
            stopped().await?;
            fake.stop().await;
        }
    }
    Ok(())
}

/// Waits for Ctrl-C or SIGTERM.
async fn stopped() -> anyhow::Result<()> {
    let mut terminate = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .context("listening for SIGTERM")?;
    tokio::select! {
        interrupted = tokio::signal::ctrl_c() => interrupted.context("waiting for Ctrl-C")?,
        _ = terminate.recv() => {}
    }
    Ok(())
}
