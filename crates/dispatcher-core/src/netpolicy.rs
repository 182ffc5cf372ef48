//! Which addresses outbound requests (webhooks, the `http` provider) may connect to.
//!
//! Callback URLs come from clients, so without this a client could make Dispatcher call into the
//! network it runs in. The check runs on every address a host resolves to, at connection time.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// Why an address is refused, or `None` when it is a public unicast address.
pub fn refused_reason(ip: IpAddr) -> Option<&'static str> {
    match ip {
        IpAddr::V4(v4) => refused_v4(v4),
        IpAddr::V6(v6) => refused_v6(v6),
    }
}

fn refused_v4(ip: Ipv4Addr) -> Option<&'static str> {
    let o = ip.octets();
    if ip.is_loopback() {
        Some("loopback")
    } else if ip.is_unspecified() || o[0] == 0 {
        Some("unspecified")
    } else if ip.is_private() {
        Some("private")
    } else if o[0] == 100 && (o[1] & 0xc0) == 64 {
        Some("shared address space (CGNAT)")
    } else if ip.is_link_local() {
        Some("link-local or cloud metadata")
    } else if ip.is_multicast() {
        Some("multicast")
    } else if ip.is_broadcast() || o[0] >= 240 {
        Some("reserved")
    } else if o[0] == 192 && o[1] == 0 && o[2] == 0 {
        Some("IETF protocol assignments")
    } else if ip.is_documentation() || (o[0] == 198 && (o[1] & 0xfe) == 18) {
        Some("documentation or benchmarking")
    } else {
        None
    }
}

fn refused_v6(ip: Ipv6Addr) -> Option<&'static str> {
    let seg = ip.segments();
    if let Some(v4) = ip.to_ipv4_mapped() {
        return refused_v4(v4);
    }
    if ip.is_loopback() {
        Some("loopback")
    } else if ip.is_unspecified() {
        Some("unspecified")
    } else if (seg[0] & 0xfe00) == 0xfc00 {
        Some("unique local")
    } else if (seg[0] & 0xffc0) == 0xfe80 {
        Some("link-local")
    } else if ip.is_multicast() {
        Some("multicast")
    } else if seg[0] == 0x64 && seg[1] == 0xff9b {
        // NAT64: the embedded IPv4 address decides.
        refused_v4(Ipv4Addr::new(
            (seg[6] >> 8) as u8,
            seg[6] as u8,
            (seg[7] >> 8) as u8,
            seg[7] as u8,
        ))
    } else if seg[0] == 0x2002 {
        // 6to4: the embedded IPv4 address decides.
        refused_v4(Ipv4Addr::new(
            (seg[1] >> 8) as u8,
            seg[1] as u8,
            (seg[2] >> 8) as u8,
            seg[2] as u8,
        ))
    } else if seg[0..6] == [0, 0, 0, 0, 0, 0] {
        // Deprecated IPv4-compatible form ::a.b.c.d.
        Some("IPv4-compatible")
    } else if seg[0] == 0x2001 && seg[1] == 0xdb8 {
        Some("documentation")
    } else {
        None
    }
}

/// Is `host` (as written in the URL, without brackets) in the operator's allow list? Matching is
/// exact and case-insensitive: allowing `example.com` does not allow `evil.example.com`.
pub fn host_allowed(host: &str, allow_hosts: &[String]) -> bool {
    let host = host.trim_start_matches('[').trim_end_matches(']');
    allow_hosts.iter().any(|a| {
        a.trim_start_matches('[')
            .trim_end_matches(']')
            .eq_ignore_ascii_case(host)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn refused(s: &str) -> bool {
        refused_reason(s.parse().unwrap()).is_some()
    }

    #[test]
    fn refuses_every_internal_v4_class() {
        for ip in [
            "127.0.0.1",
            "127.0.0.2",
            "0.0.0.0",
            "10.1.2.3",
            "172.16.0.1",
            "172.31.255.255",
            "192.168.1.1",
            "100.64.0.1",
            "100.127.255.254",
            "169.254.169.254",
            "169.254.0.1",
            "224.0.0.1",
            "239.255.255.250",
            "255.255.255.255",
            "240.0.0.1",
            "192.0.0.8",
        ] {
            assert!(refused(ip), "{ip} must be refused");
        }
    }

    #[test]
    fn refuses_every_internal_v6_class_and_mapped_forms() {
        for ip in [
            "::1",
            "::",
            "fc00::1",
            "fd12:3456::1",
            "fe80::1",
            "ff02::1",
            "::ffff:127.0.0.1",
            "::ffff:10.0.0.1",
            "::ffff:169.254.169.254",
            "::ffff:192.168.0.1",
            "::ffff:100.64.0.1",
            "64:ff9b::a9fe:a9fe",
            "2002:7f00:1::",
            "::127.0.0.1",
        ] {
            assert!(refused(ip), "{ip} must be refused");
        }
    }

    #[test]
    fn allows_public_addresses() {
        for ip in [
            "93.184.216.34",
            "8.8.8.8",
            "172.32.0.1",
            "100.128.0.1",
            "2606:4700::1111",
            "::ffff:93.184.216.34",
        ] {
            assert!(!refused(ip), "{ip} must be allowed");
        }
    }

    #[test]
    fn allow_list_matches_exact_hosts() {
        let allow = vec![
            "127.0.0.1".to_owned(),
            "Hooks.Example".to_owned(),
            "[::1]".to_owned(),
        ];
        assert!(host_allowed("127.0.0.1", &allow));
        assert!(host_allowed("hooks.example", &allow));
        assert!(host_allowed("::1", &allow));
        assert!(host_allowed("[::1]", &allow));
        assert!(!host_allowed("127.0.0.2", &allow));
        assert!(!host_allowed("evil.hooks.example", &allow));
        assert!(!host_allowed("localhost", &allow));
    }
}

/// Why a callback or provider URL is refused at registration.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum UrlError {
    #[error("`{0}` is not a valid absolute URL")]
    Invalid(String),
    #[error("only https:// URLs are accepted (http:// needs delivery.allow_http)")]
    SchemeNotAllowed,
    #[error("URL must not contain credentials")]
    Credentials,
    #[error("URL host {0} is a {1} address")]
    AddressRefused(String, &'static str),
    #[error("URL host `{0}` is not allowed")]
    HostRefused(String),
}

/// Checks a client-supplied outbound URL when it is registered. Addresses behind host names are
/// checked again at delivery time, on every resolution; here only literal IPs and obviously
/// internal names are refused.
pub fn check_url(s: &str, allow_http: bool, allow_hosts: &[String]) -> Result<url::Url, UrlError> {
    let u = url::Url::parse(s).map_err(|_| UrlError::Invalid(s.chars().take(200).collect()))?;
    match u.scheme() {
        "https" => {}
        "http" if allow_http => {}
        _ => return Err(UrlError::SchemeNotAllowed),
    }
    if !u.username().is_empty() || u.password().is_some() {
        return Err(UrlError::Credentials);
    }
    let host = match u.host() {
        Some(h) => h,
        None => return Err(UrlError::Invalid(s.chars().take(200).collect())),
    };
    let host_str = host.to_string();
    if host_allowed(&host_str, allow_hosts) {
        return Ok(u);
    }
    match host {
        url::Host::Ipv4(ip) => {
            if let Some(why) = refused_reason(IpAddr::V4(ip)) {
                return Err(UrlError::AddressRefused(host_str, why));
            }
        }
        url::Host::Ipv6(ip) => {
            if let Some(why) = refused_reason(IpAddr::V6(ip)) {
                return Err(UrlError::AddressRefused(host_str, why));
            }
        }
        url::Host::Domain(d) => {
            let d = d.trim_end_matches('.').to_ascii_lowercase();
            if d == "localhost"
                || d.ends_with(".localhost")
                || d.ends_with(".internal")
                || d.ends_with(".local")
            {
                return Err(UrlError::HostRefused(d));
            }
        }
    }
    Ok(u)
}

#[cfg(test)]
mod url_tests {
    use super::*;

    #[test]
    fn registration_checks() {
        let none: Vec<String> = vec![];
        assert!(check_url("https://hooks.example.com/x", false, &none).is_ok());
        assert_eq!(
            check_url("http://hooks.example.com/x", false, &none),
            Err(UrlError::SchemeNotAllowed)
        );
        assert!(check_url("http://hooks.example.com/x", true, &none).is_ok());
        assert_eq!(
            check_url("ftp://x.example/", true, &none),
            Err(UrlError::SchemeNotAllowed)
        );
        assert_eq!(
            check_url("https://u:p@x.example/", false, &none),
            Err(UrlError::Credentials)
        );
        assert!(matches!(
            check_url("https://127.0.0.1/", false, &none),
            Err(UrlError::AddressRefused(..))
        ));
        assert!(matches!(
            check_url("https://[::ffff:127.0.0.1]/", false, &none),
            Err(UrlError::AddressRefused(..))
        ));
        assert!(matches!(
            check_url("https://169.254.169.254/latest", false, &none),
            Err(UrlError::AddressRefused(..))
        ));
        assert!(matches!(
            check_url("https://localhost/", false, &none),
            Err(UrlError::HostRefused(..))
        ));
        assert!(matches!(
            check_url("not a url", false, &none),
            Err(UrlError::Invalid(_))
        ));
        let allow = vec!["127.0.0.1".to_owned()];
        assert!(check_url("http://127.0.0.1:9/x", true, &allow).is_ok());
        assert!(check_url("http://127.0.0.2:9/x", true, &allow).is_err());
    }
}
