//! The outbound HTTP client used for webhooks and the `http` provider.
//!
//! Every connection goes to an address that passed [`dispatcher_core::netpolicy`]: host names are
//! resolved by our own resolver, which drops refused addresses (so the request connects to exactly
//! the address that was checked, which defeats DNS rebinding), and literal IP hosts are checked
//! before the request is sent. Redirects are never followed: a 3xx is the receiver's answer.

use dispatcher_config::DeliverySettings;
use dispatcher_core::netpolicy::{host_allowed, refused_reason};
use reqwest::dns::{Addrs, Name, Resolve, Resolving};
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

#[derive(Debug, Clone)]
pub struct Policy {
    pub allow_http: bool,
    pub allow_hosts: Arc<Vec<String>>,
}

impl Policy {
    pub fn from_settings(s: &DeliverySettings) -> Self {
        Self {
            allow_http: s.allow_http,
            allow_hosts: Arc::new(s.allow_hosts.clone()),
        }
    }

    /// Checks scheme and literal-IP hosts. Named hosts are checked by the resolver at connect time.
    pub fn check(&self, url: &url::Url) -> Result<(), String> {
        match url.scheme() {
            "https" => {}
            "http" if self.allow_http => {}
            other => return Err(format!("scheme `{other}` is not allowed")),
        }
        let host = url.host_str().ok_or("URL has no host")?;
        if host_allowed(host, &self.allow_hosts) {
            return Ok(());
        }
        let ip = match url.host() {
            Some(url::Host::Ipv4(ip)) => Some(IpAddr::V4(ip)),
            Some(url::Host::Ipv6(ip)) => Some(IpAddr::V6(ip)),
            _ => None,
        };
        if let Some(ip) = ip {
            if let Some(why) = refused_reason(ip) {
                return Err(format!("address {ip} is refused ({why})"));
            }
        }
        Ok(())
    }
}

/// Resolves names and keeps only the addresses the policy allows.
struct PolicyResolver {
    allow_hosts: Arc<Vec<String>>,
}

impl Resolve for PolicyResolver {
    fn resolve(&self, name: Name) -> Resolving {
        let allow_hosts = self.allow_hosts.clone();
        Box::pin(async move {
            let host = name.as_str().to_owned();
            let addrs: Vec<SocketAddr> =
                tokio::net::lookup_host((host.as_str(), 0)).await?.collect();
            if host_allowed(&host, &allow_hosts) {
                return Ok(Box::new(addrs.into_iter()) as Addrs);
            }
            let total = addrs.len();
            let allowed: Vec<SocketAddr> = addrs
                .into_iter()
                .filter(|a| refused_reason(a.ip()).is_none())
                .collect();
            if allowed.is_empty() {
                let msg = format!("`{host}` resolves only to refused addresses ({total} checked)");
                return Err(msg.into());
            }
            Ok(Box::new(allowed.into_iter()) as Addrs)
        })
    }
}

/// An error and all its causes on one line ("connection error: ...: Connection refused"), for
/// attempt records and provider errors, where the innermost cause is the useful part.
pub fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        // Some errors print their cause themselves (lettre's do): say it once.
        let m = c.to_string();
        if !s.ends_with(&m) {
            s.push_str(": ");
            s.push_str(&m);
        }
        cur = c.source();
    }
    s
}

/// The shared client: policy resolver, no redirects, connection reuse per host (keep-alive
/// where the receiver allows it).
///
/// Proxy environment variables (`HTTP_PROXY`, `HTTPS_PROXY`, `ALL_PROXY`) are ignored: a proxy
/// resolves the receiver's name itself, out of reach of the policy resolver, so honouring one
/// that the deployment's environment happens to set would route around the address policy.
pub fn client(settings: &DeliverySettings, user_agent: &str) -> reqwest::Client {
    reqwest::Client::builder()
        .no_proxy()
        .user_agent(user_agent)
        .redirect(reqwest::redirect::Policy::none())
        .timeout(settings.timeout)
        .connect_timeout(settings.timeout.min(std::time::Duration::from_secs(5)))
        .pool_max_idle_per_host(64)
        .dns_resolver(Arc::new(PolicyResolver {
            allow_hosts: Arc::new(settings.allow_hosts.clone()),
        }))
        .build()
        .expect("static client configuration is valid")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(allow: &[&str]) -> Policy {
        Policy {
            allow_http: true,
            allow_hosts: Arc::new(allow.iter().map(|s| s.to_string()).collect()),
        }
    }

    #[test]
    fn literal_addresses_are_checked_before_sending() {
        let p = policy(&[]);
        for u in [
            "http://127.0.0.1/",
            "http://127.0.0.2/",
            "http://[::1]/",
            "http://[::ffff:127.0.0.1]/",
            "http://10.0.0.1/",
            "http://169.254.169.254/",
        ] {
            assert!(p.check(&u.parse().unwrap()).is_err(), "{u}");
        }
        assert!(p.check(&"http://93.184.216.34/".parse().unwrap()).is_ok());
        assert!(policy(&["127.0.0.1"])
            .check(&"http://127.0.0.1:8/".parse().unwrap())
            .is_ok());
        let strict = Policy {
            allow_http: false,
            allow_hosts: Arc::new(vec![]),
        };
        assert!(strict
            .check(&"http://93.184.216.34/".parse().unwrap())
            .is_err());
    }

    #[tokio::test]
    async fn resolver_refuses_names_that_resolve_internally() {
        let r = PolicyResolver {
            allow_hosts: Arc::new(vec![]),
        };
        // `localhost` resolves to loopback on any machine; resolution happens, no packet is sent.
        let err = r
            .resolve("localhost".parse().unwrap())
            .await
            .err()
            .expect("refused");
        assert!(err.to_string().contains("refused"));
        let allowed = PolicyResolver {
            allow_hosts: Arc::new(vec!["localhost".into()]),
        };
        assert!(allowed.resolve("localhost".parse().unwrap()).await.is_ok());
    }
}
