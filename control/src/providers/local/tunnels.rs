//! The local provider's tunnels: a record per tunnel with its token and routes, standing in for
//! Cloudflare's remotely managed tunnels and their DNS records.

use std::collections::BTreeMap;

use async_trait::async_trait;

use super::LocalProvider;
use super::cloud::{LocalTunnel, new_record_id, taken};
use super::records::Write;
use crate::providers::{ProviderError, Secret, Tunnel, Tunnels};

#[async_trait]
impl Tunnels for LocalProvider {
    async fn create_tunnel(&self, name: &str) -> Result<Tunnel, ProviderError> {
        let token = crate::auth::random_secret()
            .map_err(|e| ProviderError::transient(format!("no randomness for a token: {e}")))?;
        self.cloud
            .tunnels
            .change(|all| {
                if all.values().any(|t| t.tunnel.name == name) {
                    return Err(taken("tunnel", name));
                }
                let tunnel = Tunnel {
                    id: new_record_id("tun"),
                    name: name.to_owned(),
                };
                let record = LocalTunnel {
                    tunnel: tunnel.clone(),
                    token,
                    routes: BTreeMap::new(),
                };
                Ok((Write::Put(tunnel.id.clone(), record), tunnel))
            })
            .await
    }

    async fn find_tunnel(&self, name: &str) -> Result<Option<Tunnel>, ProviderError> {
        Ok(self
            .cloud
            .tunnels
            .all()?
            .into_values()
            .map(|t| t.tunnel)
            .find(|t| t.name == name))
    }

    async fn tunnel_token(&self, id: &str) -> Result<Secret, ProviderError> {
        self.cloud
            .tunnels
            .get(id)?
            .map(|t| Secret(t.token))
            .ok_or_else(|| ProviderError::not_found(format!("tunnel {id}")))
    }

    async fn route(&self, id: &str, hostname: &str, service: &str) -> Result<(), ProviderError> {
        self.cloud
            .tunnels
            .change(|all| {
                if let Some(other) = all
                    .values()
                    .find(|t| t.tunnel.id != id && t.routes.contains_key(hostname))
                {
                    return Err(ProviderError::conflict(format!(
                        "{hostname} is routed through tunnel {} already",
                        other.tunnel.id
                    ))
                    .with_code("record_exists"));
                }
                let mut record = all
                    .get(id)
                    .cloned()
                    .ok_or_else(|| ProviderError::not_found(format!("tunnel {id}")))?;
                record
                    .routes
                    .insert(hostname.to_owned(), service.to_owned());
                Ok((Write::Put(id.to_owned(), record), ()))
            })
            .await
    }

    async fn delete_tunnel(&self, name: &str, _hostname: &str) -> Result<(), ProviderError> {
        // A local tunnel's routes live in its record: they go with it.
        self.cloud
            .tunnels
            .change(|all| {
                let named = all.values().find(|t| t.tunnel.name == name);
                Ok(match named {
                    Some(t) => (Write::Delete(t.tunnel.id.clone()), ()),
                    None => (Write::Nothing, ()),
                })
            })
            .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::providers::ErrorKind;

    #[tokio::test]
    async fn tunnels_have_a_token_and_one_route_per_hostname() {
        let local = LocalProvider::in_memory();
        let tunnel = local.create_tunnel("agt-1").await.unwrap();
        assert_eq!(
            local.create_tunnel("agt-1").await.unwrap_err().kind,
            ErrorKind::Conflict
        );
        assert_eq!(
            local.find_tunnel("agt-1").await.unwrap(),
            Some(tunnel.clone())
        );
        let token = local.tunnel_token(&tunnel.id).await.unwrap();
        assert!(token.0.len() >= 32, "a real secret");
        assert_eq!(format!("{token:?}"), "[redacted]");
        local
            .route(&tunnel.id, "agt-1.example.test", "http://localhost:8080")
            .await
            .unwrap();
        // Routing again is fine; another tunnel may not take the hostname.
        local
            .route(&tunnel.id, "agt-1.example.test", "http://localhost:8080")
            .await
            .unwrap();
        let other = local.create_tunnel("agt-2").await.unwrap();
        assert_eq!(
            local
                .route(&other.id, "agt-1.example.test", "http://localhost:8080")
                .await
                .unwrap_err()
                .kind,
            ErrorKind::Conflict
        );
        local
            .delete_tunnel("agt-1", "agt-1.example.test")
            .await
            .unwrap();
        assert_eq!(local.find_tunnel("agt-1").await.unwrap(), None);
        assert_eq!(local.find_tunnel("agt-2").await.unwrap(), Some(other));
        // Gone already is done.
        local
            .delete_tunnel("agt-1", "agt-1.example.test")
            .await
            .unwrap();
    }
}
