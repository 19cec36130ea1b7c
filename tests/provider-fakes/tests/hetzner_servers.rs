//! The Hetzner fake's servers: validation, uniqueness, label selectors, pagination, actions that
//! progress, 423 while busy, shutdown and its fallback, deletion. Every test ends by checking all
//! the answers it got against the OpenAPI schemas.

mod common;

use std::time::Duration;

use common::{Api, assert_answers_match_spec, id};
use serde_json::json;

fn field_names(reply: &common::Reply) -> Vec<String> {
    reply.body["error"]["details"]["fields"]
        .as_array()
        .map(|f| {
            f.iter()
                .filter_map(|x| x["name"].as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default()
}

#[tokio::test]
async fn calls_without_the_token_are_unauthorized() {
    let fake = common::start(Duration::ZERO).await;
    for token in ["", "wrong"] {
        let reply = Api::with_token(&fake, token).get("/servers").await;
        assert_eq!(
            (reply.status, reply.code()),
            (401, "unauthorized"),
            "{}",
            reply.body
        );
    }
    assert_eq!(Api::new(&fake).get("/servers").await.status, 200);
    assert_answers_match_spec(fake.control());
}

#[tokio::test]
async fn create_validates_against_the_catalogue_and_hetzners_rules() {
    let fake = common::start(Duration::ZERO).await;
    let api = Api::new(&fake);
    let base =
        json!({"name": "ok-1", "server_type": "cx22", "image": "debian-12", "location": "fsn1"});
    let cases = [
        (json!({}), vec!["name", "server_type", "image"]),
        (json!({"server_type": "cx99"}), vec!["server_type"]),
        (json!({"location": "mars1"}), vec!["location"]),
        (json!({"image": "windows-95"}), vec!["image"]),
        (json!({"image": "114690389"}), vec!["image"]), // the arm build of debian-12 on an x86 type
        (
            json!({"server_type": "cax11", "location": "ash"}),
            vec!["server_type"],
        ),
        (json!({"name": "not_a_hostname"}), vec!["name"]),
        (
            json!({"user_data": "x".repeat(32 * 1024 + 1)}),
            vec!["user_data"],
        ),
        (
            json!({"labels": {"ok": "-starts-with-dash"}}),
            vec!["labels"],
        ),
        (
            json!({"firewalls": [{"firewall": 4242}]}),
            vec!["firewalls"],
        ),
        (json!({"volumes": [4242]}), vec!["volumes"]),
        (
            json!({"location": "fsn1", "datacenter": "fsn1-dc14"}),
            vec!["location"],
        ),
    ];
    for (patch, fields) in cases {
        let mut body = if patch == json!({}) {
            json!({})
        } else {
            base.clone()
        };
        for (k, v) in patch.as_object().unwrap() {
            body[k] = v.clone();
        }
        let reply = api.post("/servers", body).await;
        assert_eq!(
            (reply.status, reply.code()),
            (422, "invalid_input"),
            "{patch}: {}",
            reply.body
        );
        assert_eq!(field_names(&reply), fields, "{patch}");
    }
    let reply = api
        .post("/servers", json!({"name": "x", "server_type": 5}))
        .await;
    assert_eq!(
        (reply.status, field_names(&reply)),
        (422, vec!["server_type".to_owned()]),
        "{}",
        reply.body
    );
    let bad_json = test_support::http_client()
        .post(format!("{}/servers", fake.url()))
        .bearer_auth(fake.token())
        .body("{not json")
        .send()
        .await
        .unwrap();
    assert_eq!(bad_json.status(), 400);
    assert!(
        fake.control().servers().is_empty(),
        "no invalid request may create a server"
    );
    // Exactly 32 KiB is allowed; names by id work too; the arm image is picked for an arm type.
    let ok = api.post("/servers", json!({"name": "arm-1", "server_type": "cax11", "image": "debian-12", "user_data": "x".repeat(32 * 1024)})).await;
    assert_eq!(ok.status, 201, "{}", ok.body);
    assert_eq!(ok.body["server"]["image"]["id"], 114_690_389);
    assert_eq!(ok.body["server"]["location"]["name"], "fsn1");
    assert!(ok.body["root_password"].is_string());
    let by_id = api
        .post(
            "/servers",
            json!({"name": "x86-1", "server_type": "22", "image": "114690387", "location": "ash"}),
        )
        .await;
    assert_eq!(by_id.status, 201, "{}", by_id.body);
    assert_answers_match_spec(fake.control());
}

#[tokio::test]
async fn names_are_unique_per_project() {
    let fake = common::start(Duration::ZERO).await;
    let api = Api::new(&fake);
    assert_eq!(api.create_server("agent-1", json!({})).await.status, 201);
    let again = api
        .create_server("agent-1", json!({"other": "labels"}))
        .await;
    assert_eq!(
        (again.status, again.code()),
        (409, "uniqueness_error"),
        "{}",
        again.body
    );
    assert_eq!(again.body["error"]["details"]["fields"][0]["name"], "name");
    assert_eq!(fake.control().servers().len(), 1);
    assert_answers_match_spec(fake.control());
}

#[tokio::test]
async fn label_selectors_filter_as_documented() {
    let fake = common::start(Duration::ZERO).await;
    let api = Api::new(&fake);
    for (name, labels) in [
        (
            "s1",
            json!({"owner": "control", "agent": "a1", "env": "prod"}),
        ),
        (
            "s2",
            json!({"owner": "control", "agent": "a2", "env": "dev"}),
        ),
        ("s3", json!({"owner": "someone", "env": "prod"})),
        ("s4", json!({})),
    ] {
        assert_eq!(api.create_server(name, labels).await.status, 201);
    }
    let cases = [
        ("owner=control", vec!["s1", "s2"]),
        ("owner==control", vec!["s1", "s2"]),
        ("owner!=control", vec!["s3", "s4"]),
        ("agent", vec!["s1", "s2"]),
        ("!agent", vec!["s3", "s4"]),
        ("env in (prod,staging)", vec!["s1", "s3"]),
        ("env notin (prod)", vec!["s2", "s4"]),
        ("owner=control,env=prod", vec!["s1"]),
        ("owner=control,!agent", vec![]),
    ];
    for (selector, expected) in cases {
        let query: String = form_encode(selector);
        let reply = api.get(&format!("/servers?label_selector={query}")).await;
        assert_eq!(reply.status, 200, "{selector}: {}", reply.body);
        let names: Vec<&str> = reply.body["servers"]
            .as_array()
            .unwrap()
            .iter()
            .map(|s| s["name"].as_str().unwrap())
            .collect();
        assert_eq!(names, expected, "{selector}");
    }
    let by_name = api.get("/servers?name=s3").await;
    assert_eq!(by_name.body["servers"].as_array().unwrap().len(), 1);
    let bad = api
        .get(&format!(
            "/servers?label_selector={}",
            form_encode("env in (prod")
        ))
        .await;
    assert_eq!((bad.status, bad.code()), (422, "invalid_input"));
    assert_answers_match_spec(fake.control());
}

fn form_encode(s: &str) -> String {
    s.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b == b'-' || b == b'.' || b == b'_' {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

#[tokio::test]
async fn lists_come_in_pages_of_at_most_fifty() {
    let fake = common::start(Duration::ZERO).await;
    let api = Api::new(&fake);
    for i in 0..57 {
        assert_eq!(
            api.create_server(&format!("p{i:02}"), json!({"batch": "b"}))
                .await
                .status,
            201
        );
    }
    let first = api.get("/servers").await;
    let p = &first.body["meta"]["pagination"];
    assert_eq!(first.body["servers"].as_array().unwrap().len(), 25);
    assert_eq!(
        (
            p["page"].as_u64(),
            p["per_page"].as_u64(),
            p["last_page"].as_u64(),
            p["total_entries"].as_u64()
        ),
        (Some(1), Some(25), Some(3), Some(57))
    );
    assert!(p["previous_page"].is_null());
    assert_eq!(p["next_page"], 2);
    let capped = api
        .get("/servers?per_page=100&label_selector=batch%3Db")
        .await;
    assert_eq!(capped.body["servers"].as_array().unwrap().len(), 50);
    assert_eq!(capped.body["meta"]["pagination"]["per_page"], 50);
    let last = api.get("/servers?per_page=50&page=2").await;
    let p = &last.body["meta"]["pagination"];
    assert_eq!(last.body["servers"].as_array().unwrap().len(), 7);
    assert_eq!(
        (p["previous_page"].as_u64(), p["next_page"].is_null()),
        (Some(1), true)
    );
    let mut seen = Vec::new();
    let mut page = 1;
    loop {
        let reply = api
            .get(&format!("/servers?per_page=10&page={page}&sort=name:desc"))
            .await;
        seen.extend(
            reply.body["servers"]
                .as_array()
                .unwrap()
                .iter()
                .map(|s| s["name"].as_str().unwrap().to_owned()),
        );
        match reply.body["meta"]["pagination"]["next_page"].as_u64() {
            Some(next) => page = next,
            None => break,
        }
    }
    assert_eq!(seen.len(), 57);
    assert_eq!(seen.first().map(String::as_str), Some("p56"));
    assert_eq!(api.get("/servers?page=0").await.status, 422);
    assert_answers_match_spec(fake.control());
}

#[tokio::test]
async fn actions_progress_and_the_server_follows() {
    let fake = common::start(Duration::from_millis(400)).await;
    let api = Api::new(&fake);
    let created = api.create_server("life-1", json!({})).await;
    assert_eq!(created.status, 201);
    let server = id(&created.body["server"]);
    assert_eq!(created.body["server"]["status"], "initializing");
    assert_eq!(created.body["action"]["status"], "running");
    assert_eq!(created.body["next_actions"][0]["command"], "start_server");
    tokio::time::sleep(Duration::from_millis(100)).await;
    let midway = api
        .get(&format!("/actions/{}", id(&created.body["action"])))
        .await;
    let progress = midway.body["action"]["progress"].as_u64().unwrap();
    assert!(
        progress > 0 && progress < 100,
        "progress {progress} while running"
    );
    let done = api.wait_action(id(&created.body["next_actions"][0])).await;
    assert_eq!(
        (done["status"].as_str(), done["progress"].as_u64()),
        (Some("success"), Some(100))
    );
    assert!(done["finished"].is_string());
    assert_eq!(
        api.get(&format!("/servers/{server}")).await.body["server"]["status"],
        "running"
    );
    // As hcloud-go asks while it waits: repeated ids, two sort keys, a page.
    let both = api
        .get(&format!(
            "/actions?id={}&id={}&sort=status&sort=id&page=1",
            id(&done),
            id(&created.body["action"])
        ))
        .await;
    let ids: Vec<u64> = both.body["actions"]
        .as_array()
        .unwrap()
        .iter()
        .map(id)
        .collect();
    assert_eq!(ids, [id(&created.body["action"]), id(&done)]);
    assert_eq!(
        api.get("/actions?id=1&sort=colour").await.code(),
        "invalid_input"
    );

    let off = api
        .post(&format!("/servers/{server}/actions/poweroff"), json!({}))
        .await;
    assert_eq!(
        (off.status, off.body["action"]["command"].as_str()),
        (201, Some("stop_server"))
    );
    let busy = api
        .post(&format!("/servers/{server}/actions/poweron"), json!({}))
        .await;
    assert_eq!((busy.status, busy.code()), (423, "locked"), "{}", busy.body);
    api.wait_action(id(&off.body["action"])).await;
    assert_eq!(
        api.get(&format!("/servers/{server}")).await.body["server"]["status"],
        "off"
    );

    let on = api
        .post(&format!("/servers/{server}/actions/poweron"), json!({}))
        .await;
    assert_eq!(on.status, 201);
    api.wait_action(id(&on.body["action"])).await;
    let shutdown = api
        .post(&format!("/servers/{server}/actions/shutdown"), json!({}))
        .await;
    assert_eq!(shutdown.body["action"]["command"], "shutdown_server");
    assert_eq!(
        api.wait_action(id(&shutdown.body["action"])).await["status"],
        "success"
    );
    // The signal was sent; the guest powers off a little later.
    api.wait_status(server, "off").await;
    assert_answers_match_spec(fake.control());
}

#[tokio::test]
async fn a_guest_that_ignores_shutdown_needs_a_poweroff() {
    let fake = common::start(Duration::from_millis(20)).await;
    let api = Api::new(&fake);
    fake.control().set_ignore_shutdown(true);
    let server = id(&api.create_server("stubborn", json!({})).await.body["server"]);
    api.wait_status(server, "running").await;
    let shutdown = api
        .post(&format!("/servers/{server}/actions/shutdown"), json!({}))
        .await;
    assert_eq!(
        api.wait_action(id(&shutdown.body["action"])).await["status"],
        "success"
    );
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(
        api.get(&format!("/servers/{server}")).await.body["server"]["status"],
        "running"
    );
    let off = api
        .post(&format!("/servers/{server}/actions/poweroff"), json!({}))
        .await;
    api.wait_action(id(&off.body["action"])).await;
    assert_eq!(fake.control().servers()[0].status, "off");
    assert_answers_match_spec(fake.control());
}

#[tokio::test]
async fn an_action_told_to_fail_ends_in_error() {
    let fake = common::start(Duration::from_millis(10)).await;
    let api = Api::new(&fake);
    fake.control()
        .fail_next_action("start_server", "server_start_failed", "the host is full");
    let created = api.create_server("doomed", json!({})).await;
    let start = api.wait_action(id(&created.body["next_actions"][0])).await;
    assert_eq!(
        (start["status"].as_str(), start["error"]["code"].as_str()),
        (Some("error"), Some("server_start_failed"))
    );
    assert_eq!(fake.control().servers()[0].status, "off");
    fake.control()
        .fail_next_action("create_server", "action_failed", "no");
    let created = api.create_server("doomed-2", json!({})).await;
    let start = api.wait_action(id(&created.body["next_actions"][0])).await;
    assert_eq!(
        start["status"], "error",
        "start_server fails when create_server did"
    );
    assert_answers_match_spec(fake.control());
}

#[tokio::test]
async fn delete_lets_firewalls_and_volumes_go_when_it_finishes() {
    let fake = common::start(Duration::from_millis(50)).await;
    let api = Api::new(&fake);
    let fw = id(&api.post("/firewalls", json!({"name": "fw"})).await.body["firewall"]);
    let vol = id(&api
        .post(
            "/volumes",
            json!({"name": "v", "size": 10, "location": "fsn1"}),
        )
        .await
        .body["volume"]);
    let created = api
        .post("/servers", json!({"name": "gone", "server_type": "cpx11", "image": "ubuntu-24.04", "firewalls": [{"firewall": fw}], "volumes": [vol]}))
        .await;
    assert_eq!(created.status, 201, "{}", created.body);
    let server = id(&created.body["server"]);
    assert_eq!(created.body["server"]["volumes"], json!([vol]));
    assert_eq!(
        created.body["server"]["public_net"]["firewalls"][0]["id"],
        fw
    );
    let deleted = api.delete(&format!("/servers/{server}")).await;
    assert_eq!(
        (deleted.status, deleted.body["action"]["command"].as_str()),
        (200, Some("delete_server"))
    );
    assert_eq!(
        api.delete(&format!("/firewalls/{fw}")).await.code(),
        "resource_in_use",
        "still applied while deleting"
    );
    api.wait_action(id(&deleted.body["action"])).await;
    assert_eq!(
        api.get(&format!("/servers/{server}")).await.code(),
        "not_found"
    );
    assert_eq!(api.delete(&format!("/servers/{server}")).await.status, 404);
    assert_eq!(api.delete(&format!("/firewalls/{fw}")).await.status, 204);
    assert_eq!(
        api.get(&format!("/volumes/{vol}")).await.body["volume"]["server"],
        serde_json::Value::Null
    );
    assert_eq!(api.delete(&format!("/volumes/{vol}")).await.status, 204);
    let c = fake.control();
    assert!(c.servers().is_empty() && c.firewalls().is_empty() && c.volumes().is_empty());
    assert_eq!(api.get("/actions/987654").await.status, 404);
    assert_answers_match_spec(fake.control());
}
