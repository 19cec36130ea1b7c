//! Every answer of every endpoint the Hetzner fake serves, errors included, checked against
//! Hetzner's OpenAPI schemas; and proof that the check catches a broken field.

mod common;

use std::time::Duration;

use common::{Api, assert_answers_match_spec, id};
use provider_fakes::hetzner::schema::check_answer;
use provider_fakes::hetzner::{Answer, CrashMode, Method};
use serde_json::{Value, json};

#[tokio::test]
#[expect(
    clippy::too_many_lines,
    reason = "one walk through every endpoint reads best as one story"
)]
async fn every_answer_of_every_endpoint_matches_the_openapi_schemas() {
    let fake = common::start(Duration::from_millis(20)).await;
    let api = Api::new(&fake);
    let snapshot = fake.control().add_snapshot(
        "agent image 1.0",
        "x86",
        [("release".to_owned(), "1.0".to_owned())].into(),
    );

    let fw = api
        .post(
            "/firewalls",
            json!({"name": "fw-1", "labels": {"agent": "a1"}, "rules": [
                {"direction": "out", "protocol": "tcp", "port": "443", "destination_ips": ["0.0.0.0/0", "::/0"], "description": "https"},
                {"direction": "out", "protocol": "icmp", "destination_ips": ["2001:0db8::/32"]}
            ]}),
        )
        .await;
    assert_eq!(fw.status, 201, "{}", fw.body);
    let fw_id = id(&fw.body["firewall"]);
    let vol = api.post("/volumes", json!({"name": "vol-1", "size": 10, "location": "fsn1", "format": "ext4", "labels": {"agent": "a1"}})).await;
    assert_eq!(vol.status, 201, "{}", vol.body);
    let vol_id = id(&vol.body["volume"]);
    let server = api
        .post(
            "/servers",
            json!({"name": "agent-a1", "server_type": "cx22", "image": snapshot.to_string(), "location": "fsn1",
                   "labels": {"agent": "a1"}, "user_data": "#cloud-config\n", "firewalls": [{"firewall": fw_id}],
                   "volumes": [vol_id], "automount": false, "ssh_keys": ["k"], "public_net": {"enable_ipv4": false}}),
        )
        .await;
    assert_eq!(server.status, 201, "{}", server.body);
    assert!(server.body["root_password"].is_null());
    let server_id = id(&server.body["server"]);
    for action in server.body["next_actions"].as_array().unwrap() {
        api.wait_action(id(action)).await;
    }
    api.wait_status(server_id, "running").await;
    // The catalogue: what a client checks before it asks for a server.
    let types = api.get("/server_types?name=cx22").await;
    assert_eq!(
        types.body["server_types"][0]["name"], "cx22",
        "{}",
        types.body
    );
    let none = api.get("/server_types?name=cx99").await;
    assert_eq!(none.body["server_types"], json!([]), "{}", none.body);
    let locations = api.get("/locations?name=fsn1&per_page=1").await;
    assert_eq!(
        locations.body["locations"][0]["name"], "fsn1",
        "{}",
        locations.body
    );
    assert_eq!(
        api.get("/locations").await.body["meta"]["pagination"]["total_entries"],
        4
    );
    let image = api.get(&format!("/images/{snapshot}")).await;
    assert_eq!(image.body["image"]["type"], "snapshot", "{}", image.body);
    assert_eq!(
        api.get("/images/114690387").await.body["image"]["name"],
        "debian-12"
    );
    assert_eq!(api.get("/images/999999999").await.status, 404);
    // By name, as a client resolves `debian-12`: one per architecture.
    let named = api.get("/images?name=debian-12").await;
    let architectures: Vec<&Value> = named.body["images"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| &i["architecture"])
        .collect();
    assert_eq!(
        architectures,
        [&json!("x86"), &json!("arm")],
        "{}",
        named.body
    );
    let x86 = api
        .get("/images?name=debian-12&architecture=x86&type=system&status=available")
        .await;
    assert_eq!(x86.body["images"][0]["id"], 114_690_387, "{}", x86.body);
    assert_eq!(x86.body["images"].as_array().unwrap().len(), 1);
    let none = api.get("/images?name=debian-13").await;
    assert_eq!(none.body["images"], json!([]), "{}", none.body);
    let snapshots = api
        .get("/images?type=snapshot&label_selector=release%3D1.0")
        .await;
    assert_eq!(
        snapshots.body["images"][0]["id"], snapshot,
        "{}",
        snapshots.body
    );
    assert_eq!(api.get("/images?type=kernel").await.status, 422);
    let plain = api.create_server("plain-1", json!({})).await;
    assert_eq!(plain.status, 201);
    let plain_id = id(&plain.body["server"]);
    api.wait_status(plain_id, "running").await;

    api.get("/servers?label_selector=agent%3Da1&per_page=1")
        .await;
    api.get("/servers?name=agent-a1").await;
    api.get(&format!("/servers/{server_id}")).await;
    api.get("/firewalls?label_selector=agent").await;
    api.get(&format!("/firewalls/{fw_id}")).await;
    api.get("/volumes?label_selector=agent%20in%20(a1,a2)")
        .await;
    api.get(&format!("/volumes/{vol_id}")).await;
    let action = id(&server.body["action"]);
    let put = |path: String, body| {
        let api = &api;
        async move {
            api.send(reqwest::Method::PUT, &path, Some(body))
                .await
                .unwrap()
        }
    };
    assert_eq!(
        put(
            format!("/servers/{plain_id}"),
            json!({"labels": {"x": "y"}})
        )
        .await
        .status,
        200
    );
    assert_eq!(
        put(format!("/firewalls/{fw_id}"), json!({"name": "fw-1b"}))
            .await
            .status,
        200
    );
    assert_eq!(
        put(
            format!("/volumes/{vol_id}"),
            json!({"name": "vol-1b", "labels": {}})
        )
        .await
        .status,
        200
    );
    assert_eq!(
        put(format!("/servers/{plain_id}"), json!({"name": "agent-a1"}))
            .await
            .status,
        409
    );
    api.get(&format!("/actions?id={action}&id=1")).await;

    let r = api
        .post(
            &format!("/firewalls/{fw_id}/actions/set_rules"),
            json!({"rules": []}),
        )
        .await;
    assert_eq!(r.status, 201, "{}", r.body);
    let r = api
        .post(
            &format!("/firewalls/{fw_id}/actions/apply_to_resources"),
            json!({"apply_to": [{"type": "server", "server": {"id": plain_id}}]}),
        )
        .await;
    assert_eq!(r.status, 201, "{}", r.body);
    let r = api
        .post(
            &format!("/firewalls/{fw_id}/actions/remove_from_resources"),
            json!({"remove_from": [{"type": "server", "server": {"id": plain_id}}]}),
        )
        .await;
    assert_eq!(r.status, 201, "{}", r.body);
    let r = api
        .post(&format!("/volumes/{vol_id}/actions/detach"), json!({}))
        .await;
    assert_eq!(r.status, 201, "{}", r.body);
    api.wait_action(id(&r.body["action"])).await;
    let r = api
        .post(
            &format!("/volumes/{vol_id}/actions/attach"),
            json!({"server": server_id, "automount": false}),
        )
        .await;
    assert_eq!(r.status, 201, "{}", r.body);
    api.wait_action(id(&r.body["action"])).await;

    for (path, expect) in [("shutdown", 201), ("poweroff", 423)] {
        let r = api
            .post(&format!("/servers/{server_id}/actions/{path}"), json!({}))
            .await;
        assert_eq!(r.status, expect, "{path}: {}", r.body);
    }
    api.wait_status(server_id, "off").await;
    let r = api
        .post(&format!("/servers/{server_id}/actions/poweron"), json!({}))
        .await;
    api.wait_action(id(&r.body["action"])).await;
    let r = api
        .post(&format!("/servers/{server_id}/actions/poweroff"), json!({}))
        .await;
    api.wait_action(id(&r.body["action"])).await;

    // Errors, one of each kind the fake gives.
    api.create_server("plain-1", json!({})).await; // 409
    api.post(
        "/servers",
        json!({"name": "x", "server_type": "cx99", "image": "debian-12"}),
    )
    .await; // 422
    api.send(reqwest::Method::POST, "/servers", None)
        .await
        .unwrap(); // 422, empty body
    api.get("/servers/999").await; // 404
    api.get("/servers/abc").await; // 422
    api.get("/actions").await; // 422
    api.get("/servers?label_selector=a%20b").await; // 422
    api.delete(&format!("/firewalls/{fw_id}")).await; // 422 resource_in_use
    api.delete(&format!("/volumes/{vol_id}")).await; // 422 attached
    Api::with_token(&fake, "wrong").get("/servers").await; // 401
    fake.control()
        .fail_next(&Method::GET, "/v1/servers", 1, 503, "unavailable");
    api.get("/servers").await; // 503
    fake.control()
        .crash_next(&Method::GET, "/v1/servers", 1, CrashMode::EmptyServerError);
    api.get("/servers").await; // bare 500: not a Hetzner answer, skipped

    // Deletions: server (its action), then the firewall and volume it let go.
    let r = api.delete(&format!("/servers/{server_id}")).await;
    assert_eq!(r.status, 200, "{}", r.body);
    api.wait_action(id(&r.body["action"])).await;
    assert_eq!(api.delete(&format!("/firewalls/{fw_id}")).await.status, 204);
    assert_eq!(api.delete(&format!("/volumes/{vol_id}")).await.status, 204);
    fake.control().set_rate_limit(1, 0.0);
    api.get("/servers").await;
    assert_eq!(api.get("/servers").await.status, 429);

    let checked = assert_answers_match_spec(fake.control());
    let routes: std::collections::BTreeSet<(String, String)> = fake
        .control()
        .answers()
        .into_iter()
        .map(|a| (a.method, a.template))
        .collect();
    for (method, template) in provider_fakes::hetzner::ROUTES {
        assert!(
            routes.contains(&((*method).to_owned(), (*template).to_owned())),
            "{method} {template} was never exercised"
        );
    }
    eprintln!(
        "{checked} answers over {} routes match the OpenAPI schemas",
        routes.len()
    );
}

/// A named way to break an answer.
type Breakage = (&'static str, fn(&mut Value));

/// Breaks one field at a time in a real answer and checks that the validation notices each.
#[tokio::test]
async fn the_schema_check_fails_loudly_on_a_broken_field() {
    let fake = common::start(Duration::ZERO).await;
    let api = Api::new(&fake);
    let created = api.create_server("breakable", json!({"k": "v"})).await;
    let server = api
        .get(&format!("/servers/{}", id(&created.body["server"])))
        .await;
    let answer = fake
        .control()
        .answers()
        .into_iter()
        .find(|a| a.template == "/v1/servers/{id}")
        .unwrap();
    check_answer(&answer).expect("the untouched answer matches");

    let breakages: Vec<Breakage> = vec![
        ("a required key removed", |v| {
            v["server"].as_object_mut().unwrap().remove("public_net");
        }),
        ("an id as a string", |v| v["server"]["id"] = json!("42")),
        ("a null where the spec allows none", |v| {
            v["server"]["name"] = Value::Null;
        }),
        ("a status outside the enum", |v| {
            v["server"]["status"] = json!("booting");
        }),
        ("a key the spec does not know", |v| {
            v["server"]["extra"] = json!(1);
        }),
        ("a timestamp that is not ISO 8601", |v| {
            v["server"]["created"] = json!("yesterday");
        }),
        ("a nested nullable made a number", |v| {
            v["server"]["public_net"]["ipv6"] = json!(6);
        }),
    ];
    for (what, break_it) in breakages {
        let mut body = server.body.clone();
        break_it(&mut body);
        let broken = Answer {
            body: serde_json::to_vec(&body).unwrap(),
            ..answer.clone()
        };
        let error = check_answer(&broken).expect_err(what);
        eprintln!("{what}: {error}");
    }
}

/// A crash that drops the connection leaves no answer the client could read, and is skipped.
#[tokio::test]
async fn a_dropped_answer_is_not_checked() {
    let fake = common::start(Duration::ZERO).await;
    let api = Api::new(&fake);
    fake.control()
        .crash_next(&Method::POST, "/v1/servers", 1, CrashMode::DropConnection);
    // Not even a status line arrives: `send` itself fails, as when the provider's edge dies.
    let sent = test_support::http_client()
        .post(format!("{}/servers", fake.url()))
        .bearer_auth(fake.token())
        .json(&json!({"name": "c", "server_type": "cx22", "image": "debian-12"}))
        .send()
        .await;
    assert!(
        sent.is_err(),
        "the client must get no answer, got {:?}",
        sent.map(|r| r.status())
    );
    assert_eq!(
        fake.control().servers().len(),
        1,
        "the server was created all the same"
    );
    api.get("/servers").await;
    assert_eq!(assert_answers_match_spec(fake.control()), 1);
}
