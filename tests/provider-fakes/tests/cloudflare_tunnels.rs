//! The Cloudflare fake's tunnels: the real shapes, names unique among live tunnels, the token as a
//! bare string, ingress validation, and delete refused with 1022 until the connections are gone.

mod cloudflare_common;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use cloudflare_common::{Api, assert_answers_enveloped};
use provider_fakes::cloudflare::IngressRuleView;
use serde_json::{Value, json};

#[tokio::test]
async fn a_created_tunnel_has_cloudflares_shape() {
    let fake = cloudflare_common::start().await;
    let api = Api::new(&fake);
    let reply = api.create_tunnel("agent-01hz").await;
    assert_eq!(reply.status, 200, "{:?}", reply.body);
    assert_eq!(reply.body["success"], true);
    assert_eq!(reply.body["errors"], json!([]));
    assert_eq!(reply.body["messages"], json!([]));
    let t = reply.result();
    let id = t["id"].as_str().unwrap();
    assert_eq!(id.len(), 36, "a UUID: {id}");
    assert_eq!(&id[14..15], "4", "a version 4 UUID: {id}");
    assert_eq!(t["name"], "agent-01hz");
    assert_eq!(t["status"], "inactive");
    assert_eq!(t["deleted_at"], Value::Null);
    assert_eq!(t["connections"], json!([]));
    assert_eq!(t["config_src"], "cloudflare");
    assert_eq!(t["remote_config"], true);
    assert_eq!(t["tun_type"], "cfd_tunnel");
    assert_eq!(t["account_tag"], fake.account_id());
    assert!(t["created_at"].as_str().unwrap().ends_with('Z'));
    assert_eq!(t["credentials_file"]["TunnelID"], id);
    assert!(t["token"].is_string());

    let got = api.get(&api.tunnels(&format!("/{id}"))).await;
    assert_eq!(got.status, 200);
    assert!(
        got.result().get("token").is_none(),
        "only creation returns secrets"
    );
    let views = fake.control().tunnels();
    assert_eq!((views.len(), views[0].id.as_str()), (1, id));
    assert_eq!(assert_answers_enveloped(fake.control()), 2);
}

#[tokio::test]
async fn names_are_unique_among_live_tunnels_only() {
    let fake = cloudflare_common::start().await;
    let api = Api::new(&fake);
    let first = api.tunnel("agent-a").await;
    let again = api.create_tunnel("agent-a").await;
    assert_eq!(
        (again.status, again.code()),
        (409, 1013),
        "{:?}",
        again.body
    );
    assert_eq!(again.message(), "You already have a tunnel with this name");
    assert_eq!(again.body["success"], false);
    assert_eq!(again.result(), &Value::Null);

    // What a careful client does after a conflict: look the name up among live tunnels.
    let found = api
        .get(&api.tunnels("?name=agent-a&is_deleted=false"))
        .await;
    assert_eq!(found.status, 200);
    assert_eq!(found.result().as_array().unwrap().len(), 1);
    assert_eq!(found.result()[0]["id"], first.as_str());
    assert_eq!(found.body["result_info"]["total_count"], 1);

    // Once deleted, the name is free, and the deleted tunnel is still listed as deleted.
    assert_eq!(
        api.delete(&api.tunnels(&format!("/{first}"))).await.status,
        200
    );
    let second = api.tunnel("agent-a").await;
    assert_ne!(first, second);
    let live = api
        .get(&api.tunnels("?name=agent-a&is_deleted=false"))
        .await;
    assert_eq!(live.result()[0]["id"], second.as_str());
    assert_eq!(live.result().as_array().unwrap().len(), 1);
    let deleted = api.get(&api.tunnels("?name=agent-a&is_deleted=true")).await;
    assert_eq!(deleted.result()[0]["id"], first.as_str());
    assert!(deleted.result()[0]["deleted_at"].is_string());
    let all = api.get(&api.tunnels("?name=agent-a")).await;
    assert_eq!(all.result().as_array().unwrap().len(), 2);
    assert_eq!(assert_answers_enveloped(fake.control()), 8);
}

#[tokio::test]
async fn lists_are_paginated_with_result_info() {
    let fake = cloudflare_common::start().await;
    let api = Api::new(&fake);
    for i in 0..5 {
        api.tunnel(&format!("t-{i}")).await;
    }
    let page = api.get(&api.tunnels("?per_page=2&page=3")).await;
    assert_eq!(page.status, 200);
    assert_eq!(
        page.body["result_info"],
        json!({"page": 3, "per_page": 2, "count": 1, "total_count": 5, "total_pages": 3})
    );
    assert_eq!(page.result()[0]["name"], "t-4");
    let bad = api.get(&api.tunnels("?per_page=0")).await;
    assert_eq!(bad.status, 400);
    assert_answers_enveloped(fake.control());
}

#[tokio::test]
async fn the_token_is_a_bare_string_cloudflared_can_read() {
    let fake = cloudflare_common::start().await;
    let api = Api::new(&fake);
    let id = api.tunnel("agent-token").await;
    let reply = api.get(&api.tunnels(&format!("/{id}/token"))).await;
    assert_eq!(reply.status, 200);
    let token = reply.result().as_str().expect("result is a bare string");
    let inner: Value = serde_json::from_slice(&STANDARD.decode(token).unwrap()).unwrap();
    assert_eq!(inner["a"], fake.account_id());
    assert_eq!(inner["t"], id.as_str());
    assert_eq!(
        STANDARD.decode(inner["s"].as_str().unwrap()).unwrap().len(),
        32
    );
    assert_eq!(fake.control().tunnel_token(&id).as_deref(), Some(token));
    assert_eq!(assert_answers_enveloped(fake.control()), 2);
}

#[tokio::test]
async fn ingress_must_end_with_a_catch_all() {
    let fake = cloudflare_common::start().await;
    let api = Api::new(&fake);
    let id = api.tunnel("agent-ingress").await;
    let path = api.tunnels(&format!("/{id}/configurations"));

    let unset = api.get(&path).await;
    assert_eq!(unset.status, 200);
    assert_eq!(unset.result()["config"], Value::Null);
    assert_eq!(unset.result()["version"], 0);

    let no_catch_all = json!({"config": {"ingress": [
        {"hostname": "a.agents.example.test", "service": "http://localhost:8080"}
    ]}});
    let early_catch_all = json!({"config": {"ingress": [
        {"service": "http_status:404"},
        {"hostname": "a.agents.example.test", "service": "http://localhost:8080"}
    ]}});
    let bad_service = json!({"config": {"ingress": [
        {"hostname": "a.agents.example.test", "service": "localhost:8080"},
        {"service": "http_status:404"}
    ]}});
    for (body, why) in [
        (no_catch_all, "must match all URLs"),
        (early_catch_all, "not the last rule"),
        (bad_service, "not a valid service"),
        (json!({"config": {"ingress": []}}), "any ingress rules"),
        (json!({}), "config is required"),
    ] {
        let refused = api.put(&path, body).await;
        assert_eq!(refused.status, 400, "{:?}", refused.body);
        assert!(refused.message().contains(why), "{:?}", refused.body);
    }
    assert_eq!(
        fake.control().tunnels()[0].ingress,
        None,
        "nothing was kept"
    );

    let good = json!({"config": {"ingress": [
        {"hostname": "a.agents.example.test", "service": "http://localhost:8080"},
        {"service": "http_status:404"}
    ]}});
    let put = api.put(&path, good.clone()).await;
    assert_eq!(put.status, 200, "{:?}", put.body);
    assert_eq!(put.result()["version"], 1);
    assert_eq!(put.result()["tunnel_id"], id.as_str());
    assert_eq!(put.result()["config"], good["config"]);
    let got = api.get(&path).await;
    assert_eq!(got.result()["config"], good["config"]);
    assert_eq!(
        fake.control().tunnels()[0].ingress,
        Some(vec![
            IngressRuleView {
                hostname: Some("a.agents.example.test".to_owned()),
                path: None,
                service: "http://localhost:8080".to_owned(),
            },
            IngressRuleView {
                hostname: None,
                path: None,
                service: "http_status:404".to_owned(),
            },
        ])
    );
    assert_eq!(api.put(&path, good).await.result()["version"], 2);
    assert_answers_enveloped(fake.control());
}

#[tokio::test]
async fn a_connected_tunnel_cannot_be_deleted_until_its_connections_are_cleaned_up() {
    let fake = cloudflare_common::start().await;
    let api = Api::new(&fake);
    let control = fake.control();
    let id = api.tunnel("agent-live").await;
    let client = control.connect(&id, 4).expect("a live tunnel");
    let one = api.get(&api.tunnels(&format!("/{id}"))).await;
    assert_eq!(one.result()["status"], "healthy");
    assert_eq!(one.result()["connections"].as_array().unwrap().len(), 4);
    assert_eq!(one.result()["connections"][0]["client_id"], client.as_str());
    let clients = api.get(&api.tunnels(&format!("/{id}/connections"))).await;
    assert_eq!(clients.result()[0]["id"], client.as_str());
    assert_eq!(clients.result()[0]["conns"].as_array().unwrap().len(), 4);

    for _ in 0..2 {
        let refused = api.delete(&api.tunnels(&format!("/{id}"))).await;
        assert_eq!(
            (refused.status, refused.code()),
            (400, 1022),
            "{:?}",
            refused.body
        );
        assert_eq!(refused.body["success"], false);
    }
    assert!(!control.tunnels()[0].deleted);

    let cleaned = api
        .delete(&api.tunnels(&format!("/{id}/connections")))
        .await;
    assert_eq!(cleaned.status, 200, "{:?}", cleaned.body);
    assert_eq!(cleaned.result(), &Value::Null);
    assert_eq!(control.tunnels()[0].status, "down");

    let deleted = api.delete(&api.tunnels(&format!("/{id}"))).await;
    assert_eq!(deleted.status, 200, "{:?}", deleted.body);
    assert!(deleted.result()["deleted_at"].is_string());
    let view = &control.tunnels()[0];
    assert!(view.deleted);
    assert!(control.live_tunnels().is_empty());
    // Soft delete: still readable, but gone for everything else.
    let read = api.get(&api.tunnels(&format!("/{id}"))).await;
    assert_eq!(read.status, 200);
    assert!(read.result()["deleted_at"].is_string());
    for path in [format!("/{id}/token"), format!("/{id}/configurations")] {
        let gone = api.get(&api.tunnels(&path)).await;
        assert_eq!(gone.status, 404, "{path}");
    }
    let twice = api.delete(&api.tunnels(&format!("/{id}"))).await;
    assert_eq!(twice.status, 404);
    assert_eq!(
        control.connect(&id, 4),
        None,
        "a deleted tunnel takes no connection"
    );
    assert_answers_enveloped(control);
}

#[tokio::test]
async fn cascade_and_a_stopped_cloudflared_also_let_delete_through() {
    let fake = cloudflare_common::start().await;
    let api = Api::new(&fake);
    let control = fake.control();
    let a = api.tunnel("agent-cascade").await;
    control.connect(&a, 2);
    assert_eq!(control.tunnels()[0].status, "degraded");
    let deleted = api
        .delete(&api.tunnels(&format!("/{a}?cascade=true")))
        .await;
    assert_eq!(deleted.status, 200, "{:?}", deleted.body);

    let b = api.tunnel("agent-stopped").await;
    control.connect(&b, 4);
    assert_eq!(control.disconnect(&b), 1);
    assert_eq!(api.delete(&api.tunnels(&format!("/{b}"))).await.status, 200);

    // Cleaning up one connector leaves the others.
    let c = api.tunnel("agent-two-connectors").await;
    let first = control.connect(&c, 4).unwrap();
    control.connect(&c, 4).unwrap();
    let one = api
        .delete(&api.tunnels(&format!("/{c}/connections?client_id={first}")))
        .await;
    assert_eq!(one.status, 200);
    assert_eq!(control.tunnels()[2].connections, 4);
    assert_eq!(
        api.delete(&api.tunnels(&format!("/{c}"))).await.code(),
        1022
    );
    assert_answers_enveloped(control);
}
