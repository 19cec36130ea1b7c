//! `/accounts/{account_id}/cfd_tunnel…`: create (names unique among live tunnels), list, get, the
//! token (a bare string), the remote configuration with cloudflared's ingress rules, the
//! connections, and soft delete (refused with 1022 while cloudflared is connected).

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{OriginalUri, Path, RawQuery, State};
use axum::http::StatusCode;
use axum::response::Response;
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use serde::Deserialize;
use serde_json::{Value, json};

use super::Shared;
use super::envelope::{ApiError, Paging, ok, ok_page, parse_body, query_pairs};
use super::state::{State as Account, Tunnel, is_uuid, timestamp};

const DEFAULT_PER_PAGE: u64 = 20;
const MAX_PER_PAGE: u64 = 1000;

#[derive(Deserialize)]
pub(crate) struct CreateTunnel {
    name: Option<String>,
    config_src: Option<String>,
    tunnel_secret: Option<String>,
}

#[derive(Deserialize)]
pub(crate) struct PutConfig {
    config: Option<Value>,
}

pub(crate) fn render(account: &str, t: &Tunnel) -> Value {
    let connections: Vec<Value> = t
        .connectors
        .iter()
        .flat_map(|c| {
            c.conns.iter().map(|conn| {
                json!({
                    "id": conn.id,
                    "client_id": c.id,
                    "client_version": "2025.11.1",
                    "colo_name": conn.colo_name,
                    "is_pending_reconnect": false,
                    "opened_at": timestamp(conn.opened_at),
                    "origin_ip": "198.51.100.7",
                })
            })
        })
        .collect();
    json!({
        "id": t.id,
        "account_tag": account,
        "created_at": timestamp(t.created),
        "deleted_at": t.deleted.map(timestamp),
        "name": t.name,
        "connections": connections,
        "conns_active_at": t.conns_active_at.map(timestamp),
        "conns_inactive_at": t.conns_inactive_at.map(timestamp),
        "tun_type": "cfd_tunnel",
        "metadata": {},
        "status": t.status(),
        "remote_config": t.config_src == "cloudflare",
        "config_src": t.config_src,
    })
}

/// cloudflared's token: base64 of `{"a": account tag, "t": tunnel id, "s": base64 secret}`.
pub(crate) fn token(account: &str, t: &Tunnel) -> String {
    let inner = json!({"a": account, "t": t.id, "s": STANDARD.encode(t.secret)});
    STANDARD.encode(inner.to_string())
}

/// A live tunnel by id; a malformed id, an unknown one or a deleted one is "not found".
fn live<'a>(state: &'a mut Account, id: &str) -> Result<&'a mut Tunnel, ApiError> {
    if !is_uuid(id) {
        return Err(ApiError::tunnel_not_found());
    }
    state
        .tunnel_mut(id)
        .filter(|t| t.deleted.is_none())
        .ok_or_else(ApiError::tunnel_not_found)
}

pub(crate) async fn create(
    State(shared): State<Arc<Shared>>,
    Path(account_id): Path<String>,
    OriginalUri(uri): OriginalUri,
    body: Bytes,
) -> Result<Response, ApiError> {
    shared.account(&account_id, uri.path())?;
    let req: CreateTunnel = parse_body(&body)?;
    let name = req.name.unwrap_or_default();
    if name.trim().is_empty() {
        return Err(ApiError::tunnel_bad_request("tunnel name required"));
    }
    let config_src = req.config_src.unwrap_or_else(|| "local".to_owned());
    if !matches!(config_src.as_str(), "local" | "cloudflare") {
        return Err(ApiError::tunnel_bad_request(
            "config_src must be 'local' or 'cloudflare'",
        ));
    }
    let given_secret = match req.tunnel_secret.as_deref() {
        None => None,
        Some(s) => {
            let bytes = STANDARD
                .decode(s)
                .ok()
                .filter(|b| b.len() >= 32)
                .ok_or_else(|| {
                    ApiError::tunnel_bad_request(
                        "tunnel_secret must be base64 of at least 32 bytes",
                    )
                })?;
            let mut secret = [0u8; 32];
            secret.copy_from_slice(&bytes[..32]);
            Some(secret)
        }
    };
    shared.with(|state, now| {
        if state
            .tunnels
            .values()
            .any(|t| t.deleted.is_none() && t.name == name)
        {
            return Err(ApiError::new(
                StatusCode::CONFLICT,
                1013,
                "You already have a tunnel with this name",
            ));
        }
        let seq = state.next_seq();
        let id = state.uuid();
        let secret = given_secret.unwrap_or_else(|| state.secret());
        let created = state.clock.wall(now);
        let tunnel = Tunnel {
            id,
            name,
            created,
            deleted: None,
            config_src,
            secret,
            connectors: Vec::new(),
            conns_active_at: None,
            conns_inactive_at: Some(created),
            config: None,
            config_version: 0,
            config_created: None,
        };
        let mut result = render(&shared.account_id, &tunnel);
        result["credentials_file"] = json!({
            "AccountTag": shared.account_id,
            "TunnelID": tunnel.id,
            "TunnelName": tunnel.name,
            "TunnelSecret": STANDARD.encode(tunnel.secret),
        });
        result["token"] = json!(token(&shared.account_id, &tunnel));
        state.tunnels.insert(seq, tunnel);
        Ok(ok(result))
    })
}

pub(crate) async fn list(
    State(shared): State<Arc<Shared>>,
    Path(account_id): Path<String>,
    OriginalUri(uri): OriginalUri,
    RawQuery(raw): RawQuery,
) -> Result<Response, ApiError> {
    shared.account(&account_id, uri.path())?;
    let pairs = query_pairs(raw.as_deref());
    let paging = Paging::parse(&pairs, DEFAULT_PER_PAGE, MAX_PER_PAGE, |m| {
        ApiError::tunnel_bad_request(m)
    })?;
    let mut is_deleted: Option<bool> = None;
    for (key, value) in &pairs {
        if key == "is_deleted" {
            is_deleted = Some(match value.as_str() {
                "true" => true,
                "false" => false,
                _ => {
                    return Err(ApiError::tunnel_bad_request(
                        "is_deleted must be true or false",
                    ));
                }
            });
        }
    }
    let get = |key: &str| pairs.iter().find(|(k, _)| k == key).map(|(_, v)| v.clone());
    let (name, uuid, status) = (get("name"), get("uuid"), get("status"));
    let (include, exclude) = (get("include_prefix"), get("exclude_prefix"));
    shared.with(|state, _| {
        let rows: Vec<&Tunnel> = state
            .tunnels
            .values()
            .filter(|t| is_deleted.is_none_or(|d| d == t.deleted.is_some()))
            .filter(|t| name.as_ref().is_none_or(|n| *n == t.name))
            .filter(|t| uuid.as_ref().is_none_or(|u| t.id.eq_ignore_ascii_case(u)))
            .filter(|t| status.as_ref().is_none_or(|s| s == t.status()))
            .filter(|t| {
                include
                    .as_ref()
                    .is_none_or(|p| t.name.starts_with(p.as_str()))
            })
            .filter(|t| {
                exclude
                    .as_ref()
                    .is_none_or(|p| !t.name.starts_with(p.as_str()))
            })
            .collect();
        let (page, info) = paging.cut(rows);
        let result = page
            .into_iter()
            .map(|t| render(&shared.account_id, t))
            .collect();
        Ok(ok_page(result, info))
    })
}

pub(crate) async fn get_one(
    State(shared): State<Arc<Shared>>,
    Path((account_id, tunnel_id)): Path<(String, String)>,
    OriginalUri(uri): OriginalUri,
) -> Result<Response, ApiError> {
    shared.account(&account_id, uri.path())?;
    shared.with(|state, _| {
        // A deleted tunnel can still be read, with its `deleted_at`.
        let tunnel = state
            .tunnel(&tunnel_id)
            .filter(|_| is_uuid(&tunnel_id))
            .ok_or_else(ApiError::tunnel_not_found)?;
        Ok(ok(render(&shared.account_id, tunnel)))
    })
}

/// The token as a bare string in `result`.
pub(crate) async fn get_token(
    State(shared): State<Arc<Shared>>,
    Path((account_id, tunnel_id)): Path<(String, String)>,
    OriginalUri(uri): OriginalUri,
) -> Result<Response, ApiError> {
    shared.account(&account_id, uri.path())?;
    shared.with(|state, _| {
        let tunnel = live(state, &tunnel_id)?;
        Ok(ok(json!(token(&shared.account_id, tunnel))))
    })
}

fn render_config(account: &str, t: &Tunnel) -> Value {
    json!({
        "tunnel_id": t.id,
        "account_id": account,
        "version": t.config_version,
        "config": t.config,
        "source": "cloudflare",
        "created_at": t.config_created.map(timestamp),
    })
}

pub(crate) async fn get_config(
    State(shared): State<Arc<Shared>>,
    Path((account_id, tunnel_id)): Path<(String, String)>,
    OriginalUri(uri): OriginalUri,
) -> Result<Response, ApiError> {
    shared.account(&account_id, uri.path())?;
    shared.with(|state, _| {
        let tunnel = live(state, &tunnel_id)?;
        Ok(ok(render_config(&shared.account_id, tunnel)))
    })
}

/// Whether `service` is one cloudflared can serve.
fn valid_service(service: &str) -> bool {
    if let Some(code) = service.strip_prefix("http_status:") {
        return code.len() == 3 && code.parse::<u16>().is_ok_and(|c| (100..=599).contains(&c));
    }
    if matches!(service, "hello_world" | "bastion" | "socks5") {
        return true;
    }
    if service.starts_with("unix:") || service.starts_with("unix+tls:") {
        return service.len() > service.find(':').unwrap_or(0) + 1;
    }
    ["http", "https", "tcp", "ssh", "rdp", "smb", "ws", "wss"]
        .iter()
        .any(|scheme| {
            service
                .strip_prefix(scheme)
                .and_then(|rest| rest.strip_prefix("://"))
                .is_some_and(|host| !host.is_empty() && !host.starts_with('/'))
        })
}

/// cloudflared's rules for `ingress`: at least one rule, each with a service; only the last one
/// matches everything (no hostname, no path), and the last one must.
fn check_ingress(config: &Value) -> Result<(), ApiError> {
    let Some(object) = config.as_object() else {
        return Err(ApiError::tunnel_bad_request("config must be an object"));
    };
    let Some(ingress) = object.get("ingress") else {
        return Ok(());
    };
    let Some(rules) = ingress.as_array() else {
        return Err(ApiError::tunnel_bad_request(
            "ingress must be a list of rules",
        ));
    };
    if rules.is_empty() {
        return Err(ApiError::tunnel_bad_request(
            "The config file doesn't contain any ingress rules",
        ));
    }
    let last = rules.len() - 1;
    for (i, rule) in rules.iter().enumerate() {
        let n = i + 1;
        let Some(service) = rule.get("service").and_then(Value::as_str) else {
            return Err(ApiError::tunnel_bad_request(format!(
                "Rule #{n} has no service"
            )));
        };
        if !valid_service(service) {
            return Err(ApiError::tunnel_bad_request(format!(
                "Rule #{n}: '{service}' is not a valid service"
            )));
        }
        let hostname = rule.get("hostname").and_then(Value::as_str).unwrap_or("");
        let path = rule.get("path").and_then(Value::as_str).unwrap_or("");
        let catch_all = (hostname.is_empty() || hostname == "*") && path.is_empty();
        if i == last && !catch_all {
            return Err(ApiError::tunnel_bad_request(
                "The last ingress rule must match all URLs (i.e. it should not have a hostname \
                 or path filter)",
            ));
        }
        if i < last && catch_all {
            return Err(ApiError::tunnel_bad_request(format!(
                "Rule #{n} is matching all URLs, but it's not the last rule"
            )));
        }
    }
    Ok(())
}

pub(crate) async fn put_config(
    State(shared): State<Arc<Shared>>,
    Path((account_id, tunnel_id)): Path<(String, String)>,
    OriginalUri(uri): OriginalUri,
    body: Bytes,
) -> Result<Response, ApiError> {
    shared.account(&account_id, uri.path())?;
    let req: PutConfig = parse_body(&body)?;
    let config = req
        .config
        .ok_or_else(|| ApiError::tunnel_bad_request("config is required"))?;
    check_ingress(&config)?;
    shared.with(|state, now| {
        let at = state.clock.wall(now);
        let tunnel = live(state, &tunnel_id)?;
        tunnel.config = Some(config);
        tunnel.config_version += 1;
        tunnel.config_created = Some(at);
        Ok(ok(render_config(&shared.account_id, tunnel)))
    })
}

pub(crate) async fn connections(
    State(shared): State<Arc<Shared>>,
    Path((account_id, tunnel_id)): Path<(String, String)>,
    OriginalUri(uri): OriginalUri,
) -> Result<Response, ApiError> {
    shared.account(&account_id, uri.path())?;
    shared.with(|state, _| {
        let tunnel = live(state, &tunnel_id)?;
        let clients: Vec<Value> = tunnel
            .connectors
            .iter()
            .map(|c| {
                json!({
                    "id": c.id,
                    "features": [],
                    "version": "2025.11.1",
                    "arch": "linux_amd64",
                    "config_version": tunnel.config_version,
                    "run_at": timestamp(c.run_at),
                    "conns": c.conns.iter().map(|conn| json!({
                        "id": conn.id,
                        "client_id": c.id,
                        "client_version": "2025.11.1",
                        "colo_name": conn.colo_name,
                        "is_pending_reconnect": false,
                        "opened_at": timestamp(conn.opened_at),
                        "origin_ip": "198.51.100.7",
                    })).collect::<Vec<_>>(),
                })
            })
            .collect();
        Ok(ok(Value::Array(clients)))
    })
}

/// Removes the connectors (all, or the one in `client_id`), whatever their state.
pub(crate) async fn cleanup_connections(
    State(shared): State<Arc<Shared>>,
    Path((account_id, tunnel_id)): Path<(String, String)>,
    OriginalUri(uri): OriginalUri,
    RawQuery(raw): RawQuery,
) -> Result<Response, ApiError> {
    shared.account(&account_id, uri.path())?;
    let pairs = query_pairs(raw.as_deref());
    let client = pairs
        .iter()
        .find(|(k, _)| k == "client_id")
        .map(|(_, v)| v.clone());
    shared.with(|state, now| {
        live(state, &tunnel_id)?;
        state.disconnect(&tunnel_id, client.as_deref(), now);
        Ok(ok(Value::Null))
    })
}

/// Soft delete: `deleted_at` is set and the name is free again. Refused with 1022 while the
/// tunnel has live connections, unless `cascade=true` (what `cloudflared tunnel delete -f` sends),
/// which cleans them up first.
pub(crate) async fn delete(
    State(shared): State<Arc<Shared>>,
    Path((account_id, tunnel_id)): Path<(String, String)>,
    OriginalUri(uri): OriginalUri,
    RawQuery(raw): RawQuery,
) -> Result<Response, ApiError> {
    shared.account(&account_id, uri.path())?;
    let cascade = query_pairs(raw.as_deref())
        .iter()
        .any(|(k, v)| k == "cascade" && v == "true");
    shared.with(|state, now| {
        let at = state.clock.wall(now);
        if live(state, &tunnel_id)?.live_connections() > 0 {
            if !cascade {
                return Err(ApiError::new(
                    StatusCode::BAD_REQUEST,
                    1022,
                    "Cannot delete tunnel because it has active connections. Clean up its \
                     connections first.",
                ));
            }
            state.disconnect(&tunnel_id, None, now);
        }
        let tunnel = live(state, &tunnel_id)?;
        tunnel.deleted = Some(at);
        Ok(ok(render(&shared.account_id, tunnel)))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn services_cloudflared_accepts() {
        for ok in [
            "http://localhost:8080",
            "https://127.0.0.1",
            "http_status:404",
            "hello_world",
            "tcp://localhost:22",
            "unix:/run/app.sock",
        ] {
            assert!(valid_service(ok), "{ok}");
        }
        for bad in [
            "",
            "localhost:8080",
            "http://",
            "http_status:4040",
            "ftp://x",
        ] {
            assert!(!valid_service(bad), "{bad}");
        }
    }
}
