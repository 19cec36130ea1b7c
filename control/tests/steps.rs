//! Step tests in the manner of Omicron's saga tests, on the Hetzner and Cloudflare fakes:
//!
//! - every job kind (provision, stop, start, destroy) with each step run twice in a row (as if
//!   control had died before recording it) ends where it would have, the second run changing
//!   nothing, with exactly the Agent's resources in the fakes;
//! - a transient failure injected at each provider call a provisioning or destroy step makes,
//!   in turn, is retried until the job converges on exactly those resources (or none);
//! - a permanent failure injected at each of those calls, in turn, ends a provisioning with
//!   the Agent paused, the provider's words in `last_error`, and nothing left in either fake
//!   (its undo released what the earlier steps made); a destroy with the Agent kept as it was
//!   and a second destroy finishing the job.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::too_many_lines)] // a failed unwrap is a failed test

mod common;

use std::time::Duration;

use axum::http::Method;
use control::app::Settings;
use control::providers::http::RetryPolicy;
use provider_fakes::cloudflare::{self as cf, CloudflareFake};
use provider_fakes::hetzner::{self as hz, HetznerFake};
use serde_json::{Value, json};
use test_support::TestDb;

/// Which fake a call goes to.
#[derive(Clone, Copy, Debug)]
enum Fake {
    Hetzner,
    Cloudflare,
}

const TUNNELS: &str = "/client/v4/accounts/{account_id}/cfd_tunnel";
const INGRESS: &str = "/client/v4/accounts/{account_id}/cfd_tunnel/{tunnel_id}/configurations";
const RECORDS: &str = "/client/v4/zones/{zone_id}/dns_records";
const RECORD: &str = "/client/v4/zones/{zone_id}/dns_records/{dns_record_id}";
const TUNNEL: &str = "/client/v4/accounts/{account_id}/cfd_tunnel/{tunnel_id}";

/// The calls the provisioning steps make that change something (or, for `running`, read what
/// the provider says), with the step each belongs to.
const PROVISION_CALLS: &[(&str, Fake, &str, &str)] = &[
    ("tunnel", Fake::Cloudflare, "POST", TUNNELS),
    ("tunnel", Fake::Cloudflare, "PUT", INGRESS),
    ("tunnel", Fake::Cloudflare, "POST", RECORDS),
    ("firewall", Fake::Hetzner, "POST", "/v1/firewalls"),
    ("volume", Fake::Hetzner, "POST", "/v1/volumes"),
    ("server", Fake::Hetzner, "POST", "/v1/servers"),
    ("running", Fake::Hetzner, "GET", "/v1/servers/{id}"),
];

/// The calls the destroy steps make that delete something.
const DESTROY_CALLS: &[(&str, Fake, &str, &str)] = &[
    ("delete_server", Fake::Hetzner, "DELETE", "/v1/servers/{id}"),
    ("delete_volume", Fake::Hetzner, "DELETE", "/v1/volumes/{id}"),
    (
        "delete_firewall",
        Fake::Hetzner,
        "DELETE",
        "/v1/firewalls/{id}",
    ),
    ("delete_tunnel", Fake::Cloudflare, "DELETE", TUNNEL),
    ("delete_tunnel", Fake::Cloudflare, "DELETE", RECORD),
];

struct Rig {
    hetzner: HetznerFake,
    cloudflare: CloudflareFake,
    h: common::Harness,
    token: String,
}

fn policy() -> RetryPolicy {
    RetryPolicy {
        attempts: 2,
        base: Duration::from_millis(5),
        cap: Duration::from_millis(20),
        max_wait: Duration::from_secs(1),
        timeout: Duration::from_secs(5),
    }
}

async fn rig(replay_steps: bool) -> Rig {
    let hetzner_fake = HetznerFake::start(hz::Options {
        action_delay: Duration::from_millis(10),
        ..hz::Options::default()
    })
    .await
    .unwrap();
    let cloudflare_fake = CloudflareFake::start(cf::Options::default()).await.unwrap();
    let providers = common::fake_clouds(&hetzner_fake, &cloudflare_fake, policy());
    let settings = Settings {
        agent_domain: cloudflare_fake.zone_name().to_owned(),
        replay_steps,
        ..Settings::default()
    };
    let h = common::Harness::with_providers(TestDb::sqlite(), |_| providers, settings).await;
    h.release_with("2026.12.0", json!({"hetzner": "114690387"}))
        .await;
    let (_, token) = h.account("Acme").await;
    Rig {
        hetzner: hetzner_fake,
        cloudflare: cloudflare_fake,
        h,
        token,
    }
}

impl Rig {
    async fn provision(&self) -> String {
        let made = self
            .h
            .post("/api/agents", &self.token, json!({"name": "dev"}))
            .await;
        assert_eq!(made.status, 202, "{:#}", made.body);
        made.body["id"].as_str().unwrap().to_owned()
    }

    async fn call(&self, method: Method, agent: &str, action: &str) {
        let path = if action.is_empty() {
            format!("/api/agents/{agent}")
        } else {
            format!("/api/agents/{agent}/{action}")
        };
        let reply = self.h.call(method, &path, Some(&self.token), None).await;
        assert_eq!(reply.status, 202, "{path}: {:#}", reply.body);
    }

    async fn view(&self, agent: &str) -> Value {
        self.h
            .get(&format!("/api/agents/{agent}"), &self.token)
            .await
            .body
    }

    fn fail_next(&self, fake: Fake, method: &str, route: &str, times: u32, permanent: bool) {
        let method = Method::from_bytes(method.as_bytes()).unwrap();
        match (fake, permanent) {
            (Fake::Hetzner, false) => {
                self.hetzner
                    .control()
                    .fail_next(&method, route, times, 503, "unavailable");
            }
            (Fake::Hetzner, true) => {
                self.hetzner
                    .control()
                    .fail_next(&method, route, times, 422, "invalid_input");
            }
            (Fake::Cloudflare, false) => {
                self.cloudflare
                    .control()
                    .fail_next(&method, route, times, 503, 1000);
            }
            (Fake::Cloudflare, true) => {
                self.cloudflare
                    .control()
                    .fail_next(&method, route, times, 400, 1001);
            }
        }
    }

    /// What exists in the fakes, as counts: servers, firewalls, volumes, live tunnels, DNS
    /// records.
    fn inventory(&self) -> [usize; 5] {
        let hetzner = self.hetzner.control();
        let cloudflare = self.cloudflare.control();
        [
            hetzner.servers().len(),
            hetzner.firewalls().len(),
            hetzner.volumes().len(),
            cloudflare.live_tunnels().len(),
            cloudflare.dns_records().len(),
        ]
    }

    /// Exactly the resources of one running Agent `agent`, wired together, and nothing else.
    fn assert_exactly_one_agent(&self, agent: &str) {
        assert_eq!(self.inventory(), [1, 1, 1, 1, 1], "{agent}");
        let hetzner = self.hetzner.control();
        let server = &hetzner.servers()[0];
        assert_eq!(server.labels["control/id"], agent);
        let firewall = &hetzner.firewalls()[0];
        assert_eq!(firewall.labels["control/id"], agent);
        assert!(firewall.rules.is_empty(), "an Agent has no inbound rule");
        let volume = &hetzner.volumes()[0];
        assert_eq!(volume.labels["control/id"], agent);
        assert_eq!(volume.server, Some(server.id));
        let cloudflare = self.cloudflare.control();
        let tunnel = &cloudflare.live_tunnels()[0];
        let name = agent.replace('_', "-").to_ascii_lowercase();
        assert_eq!(tunnel.name, name);
        let record = &cloudflare.dns_records()[0];
        assert_eq!(record.content, format!("{}.cfargotunnel.com", tunnel.id));
    }

    fn assert_nothing_left(&self, why: &str) {
        assert_eq!(self.inventory(), [0; 5], "{why}");
    }

    /// The fakes answered as the real APIs would throughout.
    fn assert_faithful(&self) {
        hz::schema::assert_answers_match_spec(self.hetzner.control());
        cf::assert_answers_enveloped(self.cloudflare.control());
    }
}

#[tokio::test]
async fn every_step_run_twice_changes_nothing_the_first_run_did_not() {
    let rig = rig(true).await;
    let agent = rig.provision().await;
    rig.h.run_jobs_until(&agent, "running").await;
    rig.assert_exactly_one_agent(&agent);
    let hetzner = rig.hetzner.control();
    assert_eq!(hetzner.calls(&Method::POST, "/v1/servers"), 1);
    assert_eq!(hetzner.calls(&Method::POST, "/v1/firewalls"), 1);
    assert_eq!(hetzner.calls(&Method::POST, "/v1/volumes"), 1);
    assert_eq!(rig.cloudflare.control().calls(&Method::POST, TUNNELS), 1);
    assert_eq!(rig.view(&agent).await["last_error"], Value::Null);

    rig.call(Method::POST, &agent, "stop").await;
    rig.h.run_jobs_until(&agent, "paused").await;
    assert_eq!(rig.hetzner.control().servers()[0].status, "off");
    rig.call(Method::POST, &agent, "start").await;
    rig.h.run_jobs_until(&agent, "running").await;
    assert_eq!(rig.hetzner.control().servers()[0].status, "running");
    rig.assert_exactly_one_agent(&agent);

    rig.call(Method::DELETE, &agent, "").await;
    rig.h.run_jobs_until(&agent, "destroyed").await;
    rig.assert_nothing_left("destroy run twice per step");
    assert_eq!(rig.view(&agent).await["last_error"], Value::Null);
    rig.assert_faithful();
}

#[tokio::test]
async fn a_transient_failure_at_any_provisioning_step_is_retried_to_exactly_one_agent() {
    for (at, &(step, fake, method, route)) in PROVISION_CALLS.iter().enumerate() {
        let rig = rig(false).await;
        // More failures than the client retries a call itself: the job sees the failure.
        rig.fail_next(fake, method, route, 3, false);
        let agent = rig.provision().await;
        rig.h.run_jobs_until(&agent, "running").await;
        rig.assert_exactly_one_agent(&agent);
        let view = rig.view(&agent).await;
        assert_eq!(view["last_error"], Value::Null, "#{at} {step}: {view:#}");
        rig.call(Method::DELETE, &agent, "").await;
        rig.h.run_jobs_until(&agent, "destroyed").await;
        rig.assert_nothing_left(step);
        rig.assert_faithful();
    }
}

#[tokio::test]
async fn a_permanent_failure_at_any_provisioning_step_leaves_nothing_behind() {
    for (at, &(step, fake, method, route)) in PROVISION_CALLS.iter().enumerate() {
        let rig = rig(false).await;
        rig.fail_next(fake, method, route, 1, true);
        let agent = rig.provision().await;
        rig.h.run_jobs_until(&agent, "paused").await;
        let view = rig.view(&agent).await;
        let cause = view["last_error"].as_str().unwrap_or_default();
        assert!(
            cause.contains("injected") || cause.contains("(1001)"),
            "#{at} {step}: the provider's words reach the dashboard: {view:#}"
        );
        assert!(cause.contains("what it had made is released"), "{cause}");
        rig.assert_nothing_left(&format!("#{at} {step} {method} {route}"));
        // The Agent is paused and owns nothing; destroying it finds nothing to delete.
        rig.call(Method::DELETE, &agent, "").await;
        rig.h.run_jobs_until(&agent, "destroyed").await;
        rig.assert_nothing_left(step);
        rig.assert_faithful();
    }
}

#[tokio::test]
async fn a_failure_at_any_destroy_step_ends_with_nothing_left() {
    for (at, &(step, fake, method, route)) in DESTROY_CALLS.iter().enumerate() {
        // Transient: retried until everything is gone.
        let rig = rig(false).await;
        let agent = rig.provision().await;
        rig.h.run_jobs_until(&agent, "running").await;
        rig.fail_next(fake, method, route, 3, false);
        rig.call(Method::DELETE, &agent, "").await;
        rig.h.run_jobs_until(&agent, "destroyed").await;
        rig.assert_nothing_left(&format!("#{at} {step}, transient"));

        // Permanent: the destroy fails with the cause, the Agent keeps its state, and a
        // second destroy finishes what the first began.
        let agent = rig.provision().await;
        rig.h.run_jobs_until(&agent, "running").await;
        rig.fail_next(fake, method, route, 1, true);
        rig.call(Method::DELETE, &agent, "").await;
        rig.h.run_jobs_until(&agent, "running").await;
        let view = rig.view(&agent).await;
        let cause = view["last_error"].as_str().unwrap_or_default();
        assert!(
            cause.contains("injected") || cause.contains("(1001)"),
            "#{at} {step}: {view:#}"
        );
        rig.call(Method::DELETE, &agent, "").await;
        rig.h.run_jobs_until(&agent, "destroyed").await;
        rig.assert_nothing_left(&format!("#{at} {step}, permanent"));
        rig.assert_faithful();
    }
}
