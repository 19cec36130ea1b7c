//! The Hetzner fake's firewalls and volumes: rule validation, `set_rules`, apply and remove,
//! refusals while in use, sizes, locations, attach and detach.

mod common;

use std::time::Duration;

use common::{Api, assert_answers_match_spec, id};
use serde_json::json;

#[tokio::test]
async fn firewall_rules_are_validated_and_replaced_whole() {
    let fake = common::start(Duration::ZERO).await;
    let api = Api::new(&fake);
    let bad_rules = [
        json!({"direction": "sideways", "protocol": "tcp", "port": "80", "source_ips": ["0.0.0.0/0"]}),
        json!({"direction": "in", "protocol": "sctp", "source_ips": ["0.0.0.0/0"]}),
        json!({"direction": "in", "protocol": "tcp", "source_ips": ["0.0.0.0/0"]}),
        json!({"direction": "in", "protocol": "icmp", "port": "80", "source_ips": ["0.0.0.0/0"]}),
        json!({"direction": "in", "protocol": "tcp", "port": "90-80", "source_ips": ["0.0.0.0/0"]}),
        json!({"direction": "in", "protocol": "tcp", "port": "80"}),
        json!({"direction": "out", "protocol": "tcp", "port": "80", "source_ips": ["0.0.0.0/0"]}),
        json!({"direction": "out", "protocol": "udp", "port": "53", "destination_ips": ["10.0.0.1"]}),
        json!({"direction": "out", "protocol": "udp", "port": "53", "destination_ips": ["10.0.0.0/33"]}),
        json!({"direction": "out", "protocol": "gre", "destination_ips": ["::/0"], "description": "x".repeat(256)}),
    ];
    for rule in bad_rules {
        let reply = api
            .post("/firewalls", json!({"name": "f", "rules": [rule]}))
            .await;
        assert_eq!(
            (reply.status, reply.code()),
            (422, "invalid_input"),
            "{rule}: {}",
            reply.body
        );
    }
    let fifty_one: Vec<_> = (0..51)
        .map(|_| json!({"direction": "out", "protocol": "esp", "destination_ips": ["::/0"]}))
        .collect();
    assert_eq!(
        api.post("/firewalls", json!({"name": "f", "rules": fifty_one}))
            .await
            .status,
        422
    );
    assert!(fake.control().firewalls().is_empty());

    let created = api
        .post(
            "/firewalls",
            json!({"name": "agent-fw", "labels": {"agent": "a1"}, "rules": [
                {"direction": "out", "protocol": "tcp", "port": "any", "destination_ips": ["2001:0db8:0000::/48"]},
                {"direction": "out", "protocol": "udp", "port": "1000-2000", "destination_ips": ["0.0.0.0/0"]}
            ]}),
        )
        .await;
    assert_eq!(created.status, 201, "{}", created.body);
    assert_eq!(created.body["actions"], json!([]));
    let rules = &created.body["firewall"]["rules"];
    assert_eq!(
        rules[0]["destination_ips"],
        json!(["2001:db8::/48"]),
        "IPv6 comes back canonical"
    );
    assert_eq!(
        (
            rules[0]["source_ips"].clone(),
            rules[0]["description"].clone()
        ),
        (json!([]), json!(null))
    );
    let fw = id(&created.body["firewall"]);
    assert_eq!(
        api.post("/firewalls", json!({"name": "agent-fw"}))
            .await
            .code(),
        "uniqueness_error"
    );
    assert_eq!(
        api.post(
            &format!("/firewalls/{fw}/actions/set_rules"),
            json!({"rules": null})
        )
        .await
        .code(),
        "invalid_input"
    );
    let cleared = api
        .post(
            &format!("/firewalls/{fw}/actions/set_rules"),
            json!({"rules": []}),
        )
        .await;
    assert_eq!(cleared.body["actions"][0]["command"], "set_firewall_rules");
    assert_eq!(
        api.get(&format!("/firewalls/{fw}")).await.body["firewall"]["rules"],
        json!([])
    );
    let listed = api.get("/firewalls?label_selector=agent%3Da1").await;
    assert_eq!(listed.body["firewalls"].as_array().unwrap().len(), 1);
    assert_eq!(
        api.get("/firewalls?name=other").await.body["firewalls"],
        json!([])
    );
    assert_answers_match_spec(fake.control());
}

#[tokio::test]
async fn firewalls_apply_and_remove_and_refuse_deletion_while_applied() {
    let fake = common::start(Duration::ZERO).await;
    let api = Api::new(&fake);
    let server = id(&api.create_server("web-1", json!({})).await.body["server"]);
    let created = api
        .post(
            "/firewalls",
            json!({"name": "fw", "apply_to": [{"type": "server", "server": {"id": server}}]}),
        )
        .await;
    assert_eq!(created.status, 201, "{}", created.body);
    assert_eq!(created.body["actions"][0]["command"], "apply_firewall");
    let fw = id(&created.body["firewall"]);
    assert_eq!(
        created.body["firewall"]["applied_to"],
        json!([{"type": "server", "server": {"id": server}}])
    );
    let target = json!([{"type": "server", "server": {"id": server}}]);
    let again = api
        .post(
            &format!("/firewalls/{fw}/actions/apply_to_resources"),
            json!({"apply_to": target}),
        )
        .await;
    assert_eq!(
        (again.status, again.code()),
        (422, "firewall_already_applied")
    );
    let busy = api.delete(&format!("/firewalls/{fw}")).await;
    assert_eq!((busy.status, busy.code()), (422, "resource_in_use"));
    let removed = api
        .post(
            &format!("/firewalls/{fw}/actions/remove_from_resources"),
            json!({"remove_from": target}),
        )
        .await;
    assert_eq!(
        (
            removed.status,
            removed.body["actions"][0]["command"].as_str()
        ),
        (201, Some("remove_firewall"))
    );
    let twice = api
        .post(
            &format!("/firewalls/{fw}/actions/remove_from_resources"),
            json!({"remove_from": target}),
        )
        .await;
    assert_eq!(twice.code(), "firewall_already_removed");
    assert_eq!(
        api.get(&format!("/servers/{server}")).await.body["server"]["public_net"]["firewalls"],
        json!([])
    );
    let selector = json!([{"type": "label_selector", "label_selector": {"selector": "a=b"}}]);
    assert_eq!(
        api.post(
            &format!("/firewalls/{fw}/actions/apply_to_resources"),
            json!({"apply_to": selector})
        )
        .await
        .status,
        422
    );
    let missing = json!([{"type": "server", "server": {"id": 1}}]);
    assert_eq!(
        api.post(
            &format!("/firewalls/{fw}/actions/apply_to_resources"),
            json!({"apply_to": missing})
        )
        .await
        .status,
        404
    );
    assert_eq!(api.delete(&format!("/firewalls/{fw}")).await.status, 204);
    assert_eq!(api.get(&format!("/firewalls/{fw}")).await.status, 404);
    assert_answers_match_spec(fake.control());
}

#[tokio::test]
async fn volumes_are_sized_placed_attached_and_detached() {
    let fake = common::start(Duration::from_millis(10)).await;
    let api = Api::new(&fake);
    let cases = [
        json!({"name": "v", "size": 9, "location": "fsn1"}),
        json!({"name": "v", "size": 10_241, "location": "fsn1"}),
        json!({"name": "v", "size": 10}),
        json!({"name": "v", "size": 10, "location": "fsn1", "server": 1}),
        json!({"name": "v", "size": 10, "location": "fsn1", "format": "btrfs"}),
        json!({"name": "v", "size": 10, "location": "fsn1", "automount": true}),
        json!({"name": "v", "size": 10, "location": "moon"}),
        json!({"name": "v", "size": 10, "location": "fsn1", "labels": {"": "x"}}),
        json!({"size": 10, "location": "fsn1"}),
    ];
    for body in cases {
        let reply = api.post("/volumes", body.clone()).await;
        assert_eq!(
            (reply.status, reply.code()),
            (422, "invalid_input"),
            "{body}: {}",
            reply.body
        );
    }
    let server = id(&api.create_server("host-1", json!({})).await.body["server"]);
    let other = id(&api.post("/servers", json!({"name": "far-1", "server_type": "cpx11", "image": "debian-12", "location": "ash"})).await.body["server"]);
    let with_server = api.post("/volumes", json!({"name": "home-a1", "size": 10, "server": server, "automount": false, "format": "ext4", "labels": {"agent": "a1"}})).await;
    assert_eq!(with_server.status, 201, "{}", with_server.body);
    let vol = id(&with_server.body["volume"]);
    assert_eq!(
        with_server.body["next_actions"][0]["command"],
        "attach_volume"
    );
    assert_eq!(
        with_server.body["volume"]["linux_device"],
        format!("/dev/disk/by-id/scsi-0HC_Volume_{vol}")
    );
    assert_eq!(
        (
            with_server.body["volume"]["server"].as_u64(),
            with_server.body["volume"]["format"].as_str()
        ),
        (Some(server), Some("ext4"))
    );
    assert_eq!(
        api.post(
            "/volumes",
            json!({"name": "home-a1", "size": 10, "location": "fsn1"})
        )
        .await
        .code(),
        "uniqueness_error"
    );
    api.wait_action(id(&with_server.body["next_actions"][0]))
        .await;
    api.wait_status(server, "running").await;
    let in_use = api.delete(&format!("/volumes/{vol}")).await;
    assert_eq!(in_use.status, 422, "a volume is not deleted while attached");
    let attached = api
        .post(
            &format!("/volumes/{vol}/actions/attach"),
            json!({"server": server}),
        )
        .await;
    assert_eq!(attached.code(), "volume_already_attached");
    let detached = api
        .post(&format!("/volumes/{vol}/actions/detach"), json!({}))
        .await;
    assert_eq!(detached.status, 201, "{}", detached.body);
    let busy = api
        .post(
            &format!("/volumes/{vol}/actions/attach"),
            json!({"server": server}),
        )
        .await;
    assert_eq!(busy.code(), "locked", "the detach is still running");
    api.wait_action(id(&detached.body["action"])).await;
    let elsewhere = api
        .post(
            &format!("/volumes/{vol}/actions/attach"),
            json!({"server": other}),
        )
        .await;
    assert_eq!(elsewhere.code(), "invalid_input", "same location only");
    let plain = api
        .post(
            "/volumes",
            json!({"name": "plain", "size": 20, "location": "nbg1"}),
        )
        .await;
    assert!(plain.body["next_actions"].as_array().unwrap().is_empty());
    assert!(plain.body["volume"]["format"].is_null());
    let listed = api.get("/volumes?label_selector=agent").await;
    assert_eq!(listed.body["volumes"].as_array().unwrap().len(), 1);
    assert_eq!(api.delete(&format!("/volumes/{vol}")).await.status, 204);
    assert_eq!(
        api.get(&format!("/volumes/{vol}")).await.code(),
        "not_found"
    );
    assert_answers_match_spec(fake.control());
}

#[tokio::test]
async fn put_renames_and_relabels_only() {
    let fake = common::start(Duration::ZERO).await;
    let api = Api::new(&fake);
    let server = id(&api
        .create_server("old-name", json!({"a": "1", "b": "2"}))
        .await
        .body["server"]);
    api.create_server("taken", json!({})).await;
    let path = format!("/servers/{server}");
    let put = |body| api.send(reqwest::Method::PUT, &path, Some(body));
    let renamed = put(json!({"name": "new-name", "labels": {"c": "3"}}))
        .await
        .unwrap();
    assert_eq!(renamed.status, 200, "{}", renamed.body);
    assert_eq!(
        (
            renamed.body["server"]["name"].as_str(),
            renamed.body["server"]["labels"].clone()
        ),
        (Some("new-name"), json!({"c": "3"}))
    );
    assert_eq!(
        put(json!({"name": "taken"})).await.unwrap().code(),
        "uniqueness_error"
    );
    assert_eq!(
        put(json!({"labels": {"-bad": "x"}})).await.unwrap().code(),
        "invalid_input"
    );
    assert_eq!(
        put(json!({"name": "bad_name"})).await.unwrap().code(),
        "invalid_input"
    );
    let fw = api
        .send(
            reqwest::Method::PUT,
            "/firewalls/1",
            Some(json!({"name": "x"})),
        )
        .await
        .unwrap();
    assert_eq!(fw.code(), "not_found");
    assert_answers_match_spec(fake.control());
}
