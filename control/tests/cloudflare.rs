//! control's Cloudflare client against the Cloudflare fake (`tests/provider-fakes`): a tunnel
//! per name, its token, ingress and DNS record, deletion past live connections, Cloudflare's
//! errors as the caller sees them — and an Agent's whole life on the Hetzner fake with its
//! tunnel on the Cloudflare fake, nothing left in either at the end.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::too_many_lines)] // a failed unwrap is a failed test

mod common;

use std::sync::Arc;
use std::time::Duration;

use control::clock::SystemClock;
use control::providers::cloudflare::{Cloudflare, CloudflareConfig};
use control::providers::http::RetryPolicy;
use control::providers::{ErrorKind, Secret, Tunnels};
use provider_fakes::cloudflare::{self as cf, CloudflareFake};
use provider_fakes::hetzner::{self as hz, HetznerFake};
use serde_json::json;
use test_support::TestDb;

fn policy() -> RetryPolicy {
    RetryPolicy {
        attempts: 3,
        base: Duration::from_millis(10),
        cap: Duration::from_millis(50),
        max_wait: Duration::from_secs(1),
        timeout: Duration::from_secs(5),
    }
}

fn client(fake: &CloudflareFake, token: &str) -> Cloudflare {
    Cloudflare::new(
        CloudflareConfig {
            base_url: fake.url(),
            token: Secret(token.to_owned()),
            account_id: fake.account_id().to_owned(),
            zone_id: fake.zone_id().to_owned(),
            retry: policy(),
        },
        Arc::new(SystemClock),
    )
    .unwrap()
}

#[tokio::test]
async fn a_tunnel_is_made_routed_and_removed_with_its_record() {
    let fake = CloudflareFake::start(cf::Options::default()).await.unwrap();
    let c = client(&fake, fake.token());
    let control = fake.control();
    let tunnel = c.create_tunnel("agt-01abc").await.unwrap();
    let again = c.create_tunnel("agt-01abc").await.unwrap_err();
    assert_eq!(
        (again.kind, again.code.as_deref()),
        (ErrorKind::Conflict, Some("1013")),
        "{again}"
    );
    assert_eq!(
        c.find_tunnel("agt-01abc").await.unwrap(),
        Some(tunnel.clone())
    );
    assert_eq!(c.find_tunnel("agt-other").await.unwrap(), None);
    let token = c.tunnel_token(&tunnel.id).await.unwrap();
    assert!(!token.0.is_empty());
    assert_eq!(
        control.tunnel_token(&tunnel.id).as_deref(),
        Some(token.0.as_str())
    );

    let hostname = format!("agt-01abc.{}", fake.zone_name());
    c.route(&tunnel.id, &hostname, "http://localhost:8080")
        .await
        .unwrap();
    // Routing again (a repeated step) adopts the record that is there.
    c.route(&tunnel.id, &hostname, "http://localhost:8080")
        .await
        .unwrap();
    let seen = &control.live_tunnels()[0];
    let ingress = seen.ingress.as_ref().unwrap();
    assert_eq!(ingress[0].hostname.as_deref(), Some(hostname.as_str()));
    assert_eq!(ingress.last().unwrap().hostname, None, "a catch-all last");
    let records = control.dns_records();
    assert_eq!(records.len(), 1);
    assert_eq!(
        (
            records[0].kind.as_str(),
            records[0].content.clone(),
            records[0].proxied
        ),
        ("CNAME", format!("{}.cfargotunnel.com", tunnel.id), true)
    );

    // A cloudflared still connected: its connections are ended, then the tunnel goes.
    control.connect(&tunnel.id, 4).unwrap();
    c.delete_tunnel("agt-01abc", &hostname).await.unwrap();
    assert!(control.live_tunnels().is_empty());
    assert!(control.dns_records().is_empty());
    c.delete_tunnel("agt-01abc", &hostname).await.unwrap(); // a repeated delete is done
    cf::assert_answers_enveloped(control);
}

#[tokio::test]
async fn cloudflares_errors_reach_the_caller_clearly() {
    let fake = CloudflareFake::start(cf::Options::default()).await.unwrap();
    let denied = client(&fake, "not-the-token")
        .create_tunnel("agt-x")
        .await
        .unwrap_err();
    assert_eq!(
        (denied.kind, denied.code.as_deref()),
        (ErrorKind::Permanent, Some("10000")),
        "{denied}"
    );
    assert!(denied.message.starts_with("cloudflare: "), "{denied}");

    let c = client(&fake, fake.token());
    let tunnel = c.create_tunnel("agt-y").await.unwrap();
    // Someone else's record on the hostname is not ours to take.
    let hostname = format!("taken.{}", fake.zone_name());
    let other = c.create_tunnel("agt-z").await.unwrap();
    c.route(&other.id, &hostname, "http://localhost:8080")
        .await
        .unwrap();
    let refused = c
        .route(&tunnel.id, &hostname, "http://localhost:8080")
        .await
        .unwrap_err();
    assert_eq!(refused.kind, ErrorKind::Permanent, "{refused}");
    assert!(refused.message.contains("pointing elsewhere"), "{refused}");

    fake.control().set_rate_limit(1, Duration::from_mins(5));
    let mut limited = None;
    for _ in 0..3 {
        if let Err(e) = c.find_tunnel("agt-y").await {
            limited = Some(e);
            break;
        }
    }
    let limited = limited.expect("the budget ran out");
    assert_eq!(limited.kind, ErrorKind::RateLimited, "{limited}");
    assert!(limited.retry_after.is_some(), "{limited:?}");
}

/// An Agent on the Hetzner fake with its tunnel on the Cloudflare fake: provisioned (tunnel,
/// route and record; firewall; volume; server with the tunnel's token), destroyed, and
/// nothing left in either.
#[tokio::test]
async fn an_agent_with_its_tunnel_leaves_nothing_behind_in_either_cloud() {
    let hetzner_fake = HetznerFake::start(hz::Options {
        action_delay: Duration::from_millis(20),
        ..hz::Options::default()
    })
    .await
    .unwrap();
    let cloudflare_fake = CloudflareFake::start(cf::Options::default()).await.unwrap();
    let providers = common::fake_clouds(&hetzner_fake, &cloudflare_fake, policy());
    // Agents' hostnames live in the zone their records are made in.
    let settings = control::app::Settings {
        agent_domain: cloudflare_fake.zone_name().to_owned(),
        ..control::app::Settings::default()
    };
    let h = common::Harness::with_providers(TestDb::sqlite(), |_| providers, settings).await;
    h.release_with("2026.12.0", json!({"hetzner": "114690387"}))
        .await;
    let (_, token) = h.account("Acme").await;
    let provisioned = h.post("/api/agents", &token, json!({"name": "dev"})).await;
    assert_eq!(provisioned.status, 202, "{:#}", provisioned.body);
    let agent = provisioned.body["id"].as_str().unwrap().to_owned();
    h.run_jobs_until(&agent, "running").await;
    let cloudflare = cloudflare_fake.control();
    let tunnels = cloudflare.live_tunnels();
    assert_eq!(tunnels.len(), 1);
    let name = agent.replace('_', "-").to_ascii_lowercase();
    assert_eq!(tunnels[0].name, name);
    assert_eq!(
        cloudflare.dns_records()[0].name,
        format!("{name}.{}", cloudflare_fake.zone_name())
    );
    let servers = hetzner_fake.control().servers();
    let user_data = servers[0].user_data.clone().unwrap();
    assert!(
        user_data.contains("/etc/vm-agent/tunnel-token")
            && user_data.contains(&cloudflare.tunnel_token(&tunnels[0].id).unwrap()),
        "the server receives its tunnel's token"
    );

    let destroy = h.delete(&format!("/api/agents/{agent}"), &token).await;
    assert_eq!(destroy.status, 202, "{:#}", destroy.body);
    h.run_jobs_until(&agent, "destroyed").await;
    assert!(cloudflare.live_tunnels().is_empty());
    assert!(cloudflare.dns_records().is_empty());
    let hetzner = hetzner_fake.control();
    assert!(hetzner.servers().is_empty() && hetzner.volumes().is_empty());
    assert!(hetzner.firewalls().is_empty());
    cf::assert_answers_enveloped(cloudflare);
    hz::schema::assert_answers_match_spec(hetzner);
}

/// A Cloudflare that refuses control's token, or fails, is answered at `POST /api/agents` as
/// problem+json naming the cause, before anything is recorded or made anywhere.
#[tokio::test]
async fn a_cloudflare_that_refuses_or_fails_is_answered_at_once_with_the_cause() {
    let hetzner_fake = HetznerFake::start(hz::Options::default()).await.unwrap();
    let cloudflare_fake = CloudflareFake::start(cf::Options::default()).await.unwrap();
    let settings = || control::app::Settings {
        agent_domain: cloudflare_fake.zone_name().to_owned(),
        ..control::app::Settings::default()
    };
    let wrong = common::fake_clouds(&hetzner_fake, &cloudflare_fake, policy())
        .with_tunnels(Arc::new(client(&cloudflare_fake, "not-the-token")));
    let h = common::Harness::with_providers(TestDb::sqlite(), |_| wrong, settings()).await;
    h.release_with("2026.12.0", json!({"hetzner": "114690387"}))
        .await;
    let (_, token) = h.account("Acme").await;
    let before = h.snapshot().await;
    let refused = h.post("/api/agents", &token, json!({"name": "dev"})).await;
    assert_eq!(refused.status, 502, "{:#}", refused.body);
    let detail = refused.body["detail"].as_str().unwrap();
    assert!(
        detail.contains("cloudflare") && detail.contains("nothing was recorded"),
        "{detail}"
    );
    assert_eq!(h.snapshot().await, before, "nothing recorded");

    let right = common::fake_clouds(&hetzner_fake, &cloudflare_fake, policy());
    let h = common::Harness::with_providers(TestDb::sqlite(), |_| right, settings()).await;
    h.release_with("2026.12.0", json!({"hetzner": "114690387"}))
        .await;
    let (_, token) = h.account("Acme").await;
    let control = cloudflare_fake.control();
    control.fail_next(
        &cf::Method::GET,
        "/client/v4/accounts/{account_id}/cfd_tunnel",
        10,
        503,
        1000,
    );
    let before = h.snapshot().await;
    let storm = h.post("/api/agents", &token, json!({"name": "dev"})).await;
    assert_eq!(storm.status, 503, "{:#}", storm.body);
    assert!(storm.header("retry-after").is_some());
    assert_eq!(h.snapshot().await, before, "nothing recorded");
    control.clear_faults();
    let made = h.post("/api/agents", &token, json!({"name": "dev"})).await;
    assert_eq!(made.status, 202, "{:#}", made.body);
    assert!(
        control.live_tunnels().is_empty(),
        "made by the job, not the request"
    );
    let hetzner = hetzner_fake.control();
    assert!(hetzner.servers().is_empty() && hetzner.firewalls().is_empty());
    cf::assert_answers_enveloped(control);
    hz::schema::assert_answers_match_spec(hetzner);
}
