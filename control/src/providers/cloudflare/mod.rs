//! Cloudflare API v4 (`https://api.cloudflare.com/client/v4`): a remotely managed tunnel per
//! Agent, its token, its ingress and its DNS record, behind [`Tunnels`]. Calls go through the
//! shared retrying client ([`super::http`]); this module reads Cloudflare's envelope
//! (`{success, errors: [{code, message}], result}`) and decides what each code means.
//!
//! Tunnel names are unique among live tunnels, so a repeated create meets code 1013 (a
//! `Conflict`): the caller looks the tunnel up by name and adopts it. A DNS record for the
//! hostname that exists already (81053) is adopted when it points at this tunnel. A tunnel
//! with live connections refuses deletion (1022): its connections are cleaned up first.
//! Deleting goes by name, deleted tunnels included, so a deletion that died between the
//! tunnel and its record still finds the record.

use async_trait::async_trait;
use reqwest::header::HeaderMap;
use reqwest::{Method, StatusCode};
use serde::Deserialize;
use serde::de::DeserializeOwned;
use serde_json::{Value, json};

use super::http::{ApiClient, Passed, RetryPolicy, classify_status, status_kind};
use super::{ErrorKind, ProviderError, Secret, Tunnel, Tunnels, deleted};
use crate::clock::SharedClock;

/// The name tunnels are recorded under.
pub const NAME: &str = "cloudflare";

/// Cloudflare's public endpoint.
pub const DEFAULT_BASE_URL: &str = "https://api.cloudflare.com/client/v4";

/// How to reach the Cloudflare account and zone Agents' tunnels and hostnames live in.
#[derive(Clone, Debug)]
pub struct CloudflareConfig {
    pub base_url: String,
    /// An API token allowed to edit Cloudflare Tunnel (account) and DNS (zone).
    pub token: Secret,
    pub account_id: String,
    pub zone_id: String,
    pub retry: RetryPolicy,
}

/// One Cloudflare account's tunnels and one zone's DNS records.
#[derive(Clone, Debug)]
pub struct Cloudflare {
    api: ApiClient,
    config: CloudflareConfig,
    /// The last [`Tunnels::preflight`] that passed.
    checked: Passed,
}

/// What [`Tunnels::preflight`] checks: that the token reaches the account and the zone.
const PREFLIGHT: &str = "token reach";

/// How long a passed check of the token's reach is trusted.
const CHECKED_FOR: std::time::Duration = std::time::Duration::from_mins(10);

#[derive(Debug, Deserialize)]
#[serde(bound(deserialize = "T: DeserializeOwned"))]
struct Envelope<T> {
    #[serde(default = "none")]
    result: Option<T>,
}

fn none<T>() -> Option<T> {
    None
}

#[derive(Debug, Deserialize)]
struct ErrorEnvelope {
    #[serde(default)]
    errors: Vec<ApiError>,
}

#[derive(Debug, Deserialize)]
struct ApiError {
    code: i64,
    message: String,
}

#[derive(Debug, Deserialize)]
struct WireTunnel {
    id: String,
    name: String,
    /// When it was deleted; Cloudflare keeps deleted tunnels readable.
    #[serde(default)]
    deleted_at: Option<String>,
}

#[derive(Debug, Deserialize)]
struct DnsRecord {
    id: String,
    #[serde(default)]
    content: String,
}

/// What a Cloudflare error code means for the job that met it.
fn code_kind(code: i64, status: StatusCode) -> ErrorKind {
    match code {
        // A tunnel name in use; a DNS record for the host exists already.
        1013 | 81053 | 81057 => ErrorKind::Conflict,
        // The tunnel still has connections: clean them up and try again.
        1022 => ErrorKind::Transient,
        // Authentication, authorization.
        10000 | 10001 | 9109 => ErrorKind::Permanent,
        _ => status_kind(status),
    }
}

/// Reads Cloudflare's envelope: the first error's code decides the kind, every message goes
/// to the dashboard.
fn classify(status: StatusCode, headers: &HeaderMap, body: &[u8]) -> ProviderError {
    let errors = serde_json::from_slice::<ErrorEnvelope>(body)
        .map(|e| e.errors)
        .unwrap_or_default();
    let Some(first) = errors.first() else {
        return classify_status(status, headers, body);
    };
    let messages: Vec<String> = errors
        .iter()
        .map(|e| format!("{} ({})", e.message, e.code))
        .collect();
    ProviderError::new(
        code_kind(first.code, status),
        format!("cloudflare: {}", messages.join("; ")),
    )
    .with_code(first.code.to_string())
}

/// A path segment of ours (a tunnel id, a record id): Cloudflare's ids are hex and dashes.
fn segment(id: &str, what: &str) -> Result<String, ProviderError> {
    let plain = !id.is_empty() && id.bytes().all(|b| b.is_ascii_hexdigit() || b == b'-');
    if plain {
        Ok(id.to_owned())
    } else {
        Err(ProviderError::not_found(format!(
            "{what} {}",
            id.escape_debug()
        )))
    }
}

fn query(pairs: &[(&str, &str)]) -> String {
    let mut serializer = form_urlencoded::Serializer::new(String::new());
    for (key, value) in pairs {
        serializer.append_pair(key, value);
    }
    serializer.finish()
}

impl Cloudflare {
    pub fn new(config: CloudflareConfig, clock: SharedClock) -> Result<Self, ProviderError> {
        let api = ApiClient::new(
            NAME,
            &config.base_url,
            config.token.clone(),
            config.retry,
            classify,
            clock,
        )?;
        Ok(Self {
            api,
            config,
            checked: Passed::default(),
        })
    }

    fn tunnels_path(&self) -> String {
        format!("/accounts/{}/cfd_tunnel", self.config.account_id)
    }

    fn records_path(&self) -> String {
        format!("/zones/{}/dns_records", self.config.zone_id)
    }

    async fn result<T: DeserializeOwned>(
        &self,
        method: Method,
        path: &str,
        body: Option<&Value>,
    ) -> Result<T, ProviderError> {
        let envelope: Envelope<T> = self.api.call(method, path, body).await?.json()?;
        envelope.result.ok_or_else(|| {
            ProviderError::permanent(format!("cloudflare answered {path} without a result"))
        })
    }

    async fn records_named(&self, hostname: &str) -> Result<Vec<DnsRecord>, ProviderError> {
        let path = format!(
            "{}?{}",
            self.records_path(),
            query(&[("name", hostname), ("type", "CNAME")])
        );
        self.result(Method::GET, &path, None).await
    }

    /// The CNAME that sends `hostname` to tunnel `id`, made unless it is there already.
    async fn ensure_record(&self, id: &str, hostname: &str) -> Result<(), ProviderError> {
        let target = format!("{id}.cfargotunnel.com");
        // ttl 1: automatic, as for every proxied record.
        let body = json!({"type": "CNAME", "proxied": true, "name": hostname, "content": target, "ttl": 1});
        let made: Result<DnsRecord, ProviderError> = self
            .result(Method::POST, &self.records_path(), Some(&body))
            .await;
        match made {
            Ok(_) => Ok(()),
            Err(e) if e.kind == ErrorKind::Conflict => {
                let existing = self.records_named(hostname).await?;
                if existing.iter().any(|r| r.content == target) {
                    Ok(())
                } else {
                    Err(ProviderError::permanent(format!(
                        "{hostname} has a DNS record pointing elsewhere; it is not ours to replace"
                    ))
                    .with_code(e.code.unwrap_or_default()))
                }
            }
            Err(e) => Err(e),
        }
    }
}

#[async_trait]
impl Tunnels for Cloudflare {
    async fn preflight(&self) -> Result<(), ProviderError> {
        let now = self.api.clock().now().as_millis();
        if self.checked.holds(PREFLIGHT, now) {
            return Ok(());
        }
        // One call each: the token reaches the account's tunnels and the zone's records.
        let tunnels = format!("{}?{}", self.tunnels_path(), query(&[("per_page", "1")]));
        let _: Vec<WireTunnel> = self.result(Method::GET, &tunnels, None).await?;
        let records = format!("{}?{}", self.records_path(), query(&[("per_page", "1")]));
        let _: Vec<DnsRecord> = self.result(Method::GET, &records, None).await?;
        self.checked.remember(
            PREFLIGHT.to_owned(),
            now + crate::clock::millis(CHECKED_FOR),
        );
        Ok(())
    }

    async fn create_tunnel(&self, name: &str) -> Result<Tunnel, ProviderError> {
        let body = json!({"name": name, "config_src": "cloudflare"});
        let made: WireTunnel = self
            .result(Method::POST, &self.tunnels_path(), Some(&body))
            .await?;
        Ok(Tunnel {
            id: made.id,
            name: made.name,
        })
    }

    async fn find_tunnel(&self, name: &str) -> Result<Option<Tunnel>, ProviderError> {
        let path = format!(
            "{}?{}",
            self.tunnels_path(),
            query(&[("name", name), ("is_deleted", "false")])
        );
        let found: Vec<WireTunnel> = self.result(Method::GET, &path, None).await?;
        Ok(found.into_iter().find(|t| t.name == name).map(|t| Tunnel {
            id: t.id,
            name: t.name,
        }))
    }

    async fn tunnel_token(&self, id: &str) -> Result<Secret, ProviderError> {
        let path = format!("{}/{}/token", self.tunnels_path(), segment(id, "tunnel")?);
        let token: String = self.result(Method::GET, &path, None).await?;
        Ok(Secret(token))
    }

    async fn route(&self, id: &str, hostname: &str, service: &str) -> Result<(), ProviderError> {
        let id = segment(id, "tunnel")?;
        let ingress = json!({"config": {"ingress": [
            {"hostname": hostname, "service": service},
            {"service": "http_status:404"},
        ]}});
        let path = format!("{}/{id}/configurations", self.tunnels_path());
        let _: Value = self.result(Method::PUT, &path, Some(&ingress)).await?;
        self.ensure_record(&id, hostname).await
    }

    async fn delete_tunnel(&self, name: &str, hostname: &str) -> Result<(), ProviderError> {
        // Deleted tunnels too: one deleted by an attempt that died before its record went
        // still names the record to delete.
        let path = format!("{}?{}", self.tunnels_path(), query(&[("name", name)]));
        let named: Vec<WireTunnel> = self.result(Method::GET, &path, None).await?;
        let named: Vec<WireTunnel> = named.into_iter().filter(|t| t.name == name).collect();
        for tunnel in named.iter().filter(|t| t.deleted_at.is_none()) {
            let path = format!("{}/{}", self.tunnels_path(), segment(&tunnel.id, "tunnel")?);
            // Live connections refuse the deletion: end them first (none left is fine).
            deleted(
                self.api
                    .call(Method::DELETE, &format!("{path}/connections"), None)
                    .await,
            )?;
            deleted(self.api.call(Method::DELETE, &path, None).await)?;
        }
        // Then the record, if it routes `hostname` through one of them (else it is not ours).
        let targets: Vec<String> = named
            .iter()
            .map(|t| format!("{}.cfargotunnel.com", t.id))
            .collect();
        for record in self.records_named(hostname).await? {
            if targets.contains(&record.content) {
                let path = format!("{}/{}", self.records_path(), segment(&record.id, "record")?);
                deleted(self.api.call(Method::DELETE, &path, None).await)?;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn error(status: u16, body: &str) -> ProviderError {
        classify(
            StatusCode::from_u16(status).unwrap(),
            &HeaderMap::new(),
            body.as_bytes(),
        )
    }

    #[test]
    fn the_envelope_gives_the_kind_the_code_and_every_message() {
        let taken = error(
            409,
            r#"{"success":false,"errors":[{"code":1013,"message":"You already have a tunnel with this name."}],"messages":[],"result":null}"#,
        );
        assert_eq!(
            (taken.kind, taken.code.as_deref()),
            (ErrorKind::Conflict, Some("1013"))
        );
        assert!(
            taken.message.starts_with("cloudflare: You already have"),
            "{taken}"
        );
        let busy = error(
            400,
            r#"{"success":false,"errors":[{"code":1022,"message":"Cannot delete tunnel because it has active connections."}],"messages":[],"result":null}"#,
        );
        assert_eq!(busy.kind, ErrorKind::Transient);
        let denied = error(
            403,
            r#"{"success":false,"errors":[{"code":10000,"message":"Authentication error"}],"messages":[],"result":null}"#,
        );
        assert_eq!(denied.kind, ErrorKind::Permanent);
        let limited = error(
            429,
            r#"{"success":false,"errors":[{"code":971,"message":"Please wait and consider throttling your request speed"}]}"#,
        );
        assert_eq!(limited.kind, ErrorKind::RateLimited);
        assert_eq!(error(502, "<html>").kind, ErrorKind::Transient);
    }

    #[test]
    fn only_cloudflare_shaped_ids_reach_a_path() {
        assert!(segment("c1744f8b-faa1-48a4-9e5c-02ac921467fa", "tunnel").is_ok());
        for bad in ["", "../accounts", "a/b", "tun-xyz"] {
            assert_eq!(
                segment(bad, "tunnel").unwrap_err().kind,
                ErrorKind::NotFound,
                "{bad}"
            );
        }
    }
}
