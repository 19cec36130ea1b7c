//! The JSON of every object the fake answers with, key for key as in Hetzner's OpenAPI schemas
//! (every key present, `null` where the schema allows it). The schema test in `tests/` checks these
//! against the spec; a key must never be added here that the spec does not know.

use serde_json::{Value, json};
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

use super::catalog::{self, Image, Location, ServerType};
use super::state::{Action, ActionStatus, Firewall, Rule, Server, State, Volume};

pub(crate) fn timestamp(t: OffsetDateTime) -> String {
    t.format(&Rfc3339).unwrap_or_default()
}

pub(crate) fn location(l: &Location) -> Value {
    json!({
        "id": l.id,
        "name": l.name,
        "description": l.description,
        "country": l.country,
        "city": l.city,
        "latitude": l.latitude,
        "longitude": l.longitude,
        "network_zone": l.network_zone,
    })
}

fn datacenter(l: &Location) -> Value {
    let types: Vec<u64> = catalog::SERVER_TYPES
        .iter()
        .filter(|t| t.locations.contains(&l.name))
        .map(|t| t.id)
        .collect();
    json!({
        "id": l.datacenter_id,
        "name": l.datacenter_name,
        "description": l.datacenter_description,
        "location": location(l),
        "server_types": {
            "supported": types,
            "available": types,
            "available_for_migration": types,
        },
    })
}

pub(crate) fn server_type(t: &ServerType) -> Value {
    let locations: Vec<Value> = t
        .locations
        .iter()
        .filter_map(|name| catalog::location(name))
        // `available` and `recommended` are newer than the spec copy; Hetzner's
        // Python client (hcloud 2.27) requires them.
        .map(|l| json!({"id": l.id, "name": l.name, "deprecation": null, "available": true, "recommended": true}))
        .collect();
    let prices: Vec<Value> = t
        .locations
        .iter()
        .map(|name| {
            json!({
                "location": name,
                "price_hourly": {"net": t.price_hourly, "gross": t.price_hourly},
                "price_monthly": {"net": t.price_monthly, "gross": t.price_monthly},
                "included_traffic": 21_990_232_555_520_u64,
                "price_per_tb_traffic": {"net": "1.0000", "gross": "1.0000"},
            })
        })
        .collect();
    json!({
        "id": t.id,
        "name": t.name,
        "description": t.description,
        "category": "shared",
        "cores": t.cores,
        "memory": t.memory_gb,
        "disk": t.disk_gb,
        "deprecated": false,
        "deprecation": null,
        "prices": prices,
        "storage_type": "local",
        "cpu_type": "shared",
        "architecture": t.architecture,
        "locations": locations,
    })
}

pub(crate) fn image(i: &Image, created: OffsetDateTime) -> Value {
    json!({
        "id": i.id,
        "type": i.kind,
        "status": "available",
        "name": i.name,
        "description": i.description,
        "image_size": i.image_size,
        "disk_size": i.disk_size,
        "created": timestamp(created),
        "created_from": null,
        "bound_to": null,
        "os_flavor": i.os_flavor,
        "os_version": i.os_version,
        "rapid_deploy": i.kind == "system",
        "protection": {"delete": false},
        "deprecated": null,
        "deleted": null,
        "labels": i.labels,
        "architecture": i.architecture,
    })
}

pub(crate) fn server(state: &State, s: &Server) -> Value {
    let firewalls: Vec<Value> = s
        .firewalls
        .iter()
        .map(|id| json!({"id": id, "status": "applied"}))
        .collect();
    // Documentation address ranges (RFC 5737, RFC 3849): shown, never reached.
    let ipv4 = s.ipv4.then(|| {
        let host = s.id % 250 + 1;
        json!({
            "id": s.id + 1,
            "ip": format!("203.0.113.{host}"),
            "blocked": false,
            "dns_ptr": format!("static.{host}.113.0.203.clients.your-server.de"),
        })
    });
    let ipv6 = s.ipv6.then(|| {
        json!({
            "id": s.id + 2,
            "ip": format!("2001:db8:{:x}::/64", s.id % 0xffff),
            "blocked": false,
            "dns_ptr": [],
        })
    });
    json!({
        "id": s.id,
        "name": s.name,
        "status": s.status,
        "created": timestamp(s.created),
        "public_net": {
            "ipv4": ipv4,
            "ipv6": ipv6,
            "floating_ips": [],
            "firewalls": firewalls,
        },
        "private_net": [],
        "server_type": server_type(s.server_type),
        "datacenter": datacenter(s.location),
        "location": location(s.location),
        "image": image(&s.image, state.clock.epoch()),
        "iso": null,
        "rescue_enabled": false,
        "locked": state.server_busy(s.id),
        "backup_window": null,
        "outgoing_traffic": 0,
        "ingoing_traffic": 0,
        "included_traffic": 21_990_232_555_520_u64,
        "protection": {"delete": false, "rebuild": false},
        "labels": s.labels,
        "volumes": s.volumes,
        "load_balancers": [],
        "primary_disk_size": s.server_type.disk_gb,
        "placement_group": null,
    })
}

pub(crate) fn rule(r: &Rule) -> Value {
    json!({
        "description": r.description,
        "direction": r.direction,
        "protocol": r.protocol,
        "port": r.port,
        "source_ips": r.source_ips,
        "destination_ips": r.destination_ips,
    })
}

pub(crate) fn firewall(f: &Firewall) -> Value {
    json!({
        "id": f.id,
        "name": f.name,
        "labels": f.labels,
        "created": timestamp(f.created),
        "rules": f.rules.iter().map(rule).collect::<Vec<_>>(),
        "applied_to": f
            .servers
            .iter()
            .map(|id| json!({"type": "server", "server": {"id": id}}))
            .collect::<Vec<_>>(),
    })
}

pub(crate) fn volume(v: &Volume) -> Value {
    json!({
        "id": v.id,
        "name": v.name,
        "created": timestamp(v.created),
        "server": v.server,
        "location": location(v.location),
        "size": v.size,
        "linux_device": format!("/dev/disk/by-id/scsi-0HC_Volume_{}", v.id),
        "protection": {"delete": false},
        "labels": v.labels,
        "status": "available",
        "format": v.format,
    })
}

pub(crate) fn action(a: &Action) -> Value {
    let status = match a.status {
        ActionStatus::Running => "running",
        ActionStatus::Success => "success",
        ActionStatus::Error => "error",
    };
    json!({
        "id": a.id,
        "command": a.command,
        "status": status,
        "progress": a.progress,
        "started": timestamp(a.started),
        "finished": a.finished.map(timestamp),
        "resources": a
            .resources
            .iter()
            .map(|(id, kind)| json!({"id": id, "type": kind}))
            .collect::<Vec<_>>(),
        "error": a.error.as_ref().map(|(code, message)| json!({"code": code, "message": message})),
    })
}

/// The action with this id, rendered; `null` if it is unknown (never the case for ids the fake
/// just created).
pub(crate) fn action_by_id(state: &State, id: u64) -> Value {
    state.actions.get(&id).map_or(Value::Null, action)
}
