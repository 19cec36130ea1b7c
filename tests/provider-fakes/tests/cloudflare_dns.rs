//! The Cloudflare fake's DNS records: the CNAME to a tunnel, the name conflict (81053), lookup by
//! name and type, delete, and a deleted tunnel's record left alone.

mod cloudflare_common;

use cloudflare_common::{Api, assert_answers_enveloped};
use serde_json::{Value, json};

#[tokio::test]
async fn a_cname_to_the_tunnel_is_created_found_by_name_and_deleted() {
    let fake = cloudflare_common::start().await;
    let api = Api::new(&fake);
    let tunnel = api.tunnel("agent-dns").await;
    let created = api.cname("agent-1.agents.example.test", &tunnel).await;
    assert_eq!(created.status, 200, "{:?}", created.body);
    let r = created.result();
    assert_eq!(r["type"], "CNAME");
    assert_eq!(r["name"], "agent-1.agents.example.test");
    assert_eq!(r["content"], format!("{tunnel}.cfargotunnel.com"));
    assert_eq!(
        (r["proxied"].clone(), r["proxiable"].clone()),
        (json!(true), json!(true))
    );
    assert_eq!(r["ttl"], 1);
    let id = r["id"].as_str().unwrap().to_owned();
    assert_eq!(id.len(), 32);

    let found = api
        .get(&api.records("?name=agent-1.agents.example.test&type=CNAME"))
        .await;
    assert_eq!(found.status, 200);
    assert_eq!(found.result().as_array().unwrap().len(), 1);
    assert_eq!(found.result()[0]["id"], id.as_str());
    assert_eq!(found.body["result_info"]["total_count"], 1);
    let other_type = api
        .get(&api.records("?name=agent-1.agents.example.test&type=A"))
        .await;
    assert_eq!(other_type.result(), &json!([]));
    let nothing = api
        .get(&api.records("?name=agent-2.agents.example.test"))
        .await;
    assert_eq!(nothing.result(), &json!([]));
    assert_eq!(api.get(&api.records(&format!("/{id}"))).await.status, 200);

    // Deleting the tunnel does not delete its record.
    api.delete(&api.tunnels(&format!("/{tunnel}"))).await;
    assert_eq!(fake.control().dns_records().len(), 1);

    let deleted = api.delete(&api.records(&format!("/{id}"))).await;
    assert_eq!(deleted.status, 200);
    assert_eq!(deleted.result(), &json!({"id": id}));
    let again = api.delete(&api.records(&format!("/{id}"))).await;
    assert_eq!(
        (again.status, again.code()),
        (404, 81044),
        "{:?}",
        again.body
    );
    assert_eq!(api.get(&api.records(&format!("/{id}"))).await.code(), 81044);
    assert!(fake.control().dns_records().is_empty());
    assert_answers_enveloped(fake.control());
}

#[tokio::test]
async fn a_second_record_on_the_same_host_is_81053() {
    let fake = cloudflare_common::start().await;
    let api = Api::new(&fake);
    let first = api.cname("agent-x.agents.example.test", "t1").await;
    assert_eq!(first.status, 200);
    let conflict = api.cname("agent-x.agents.example.test", "t2").await;
    assert_eq!(
        (conflict.status, conflict.code()),
        (400, 81053),
        "{:?}",
        conflict.body
    );
    assert_eq!(
        conflict.message(),
        "An A, AAAA, or CNAME record with that host already exists."
    );
    assert_eq!(conflict.body["success"], false);
    assert_eq!(conflict.result(), &Value::Null);
    // A relative name is completed with the zone, so it meets the same host.
    let relative = api.cname("agent-x", "t3").await;
    assert_eq!(relative.code(), 81053);
    let a_record = api
        .post(
            &api.records(""),
            json!({"type": "A", "name": "agent-x", "content": "192.0.2.1"}),
        )
        .await;
    assert_eq!(a_record.code(), 81054);
    let relative_ok = api.cname("agent-y", "t4").await;
    assert_eq!(relative_ok.result()["name"], "agent-y.agents.example.test");
    assert_eq!(fake.control().dns_records().len(), 2);
    assert_answers_enveloped(fake.control());
}

#[tokio::test]
async fn invalid_records_are_dns_validation_errors() {
    let fake = cloudflare_common::start().await;
    let api = Api::new(&fake);
    for body in [
        json!({"type": "CNAME", "name": "x", "content": ""}),
        json!({"type": "BOGUS", "name": "x", "content": "y.example"}),
        json!({"type": "CNAME", "name": "", "content": "y.example"}),
        json!({"type": "A", "name": "x", "content": "not-an-ip"}),
        json!({"type": "TXT", "name": "x", "content": "hi", "proxied": true}),
        json!({"type": "CNAME", "name": "x", "content": "y.example", "ttl": 5}),
    ] {
        let refused = api.post(&api.records(""), body.clone()).await;
        assert_eq!(
            (refused.status, refused.code()),
            (400, 1004),
            "{body}: {:?}",
            refused.body
        );
        assert!(refused.body["errors"][0]["error_chain"][0]["code"].is_u64());
    }
    let not_json = api
        .send(reqwest::Method::POST, &api.records(""), None)
        .await
        .unwrap();
    assert_eq!(not_json.status, 400);
    assert!(fake.control().dns_records().is_empty());
    assert_answers_enveloped(fake.control());
}
