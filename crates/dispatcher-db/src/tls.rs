//! TLS to Postgres with rustls, with libpq's meanings of `sslmode`.
//!
//! tokio-postgres reads `sslmode=disable|prefer|require` from `database.url` and decides whether
//! the connection is encrypted; this module decides what the certificate must prove:
//!
//! | `sslmode` | encrypted | certificate checked |
//! |---|---|---|
//! | `disable` | never | — |
//! | `prefer` (the default) | when the server offers TLS | no |
//! | `require` | always | no |
//! | `verify-ca` | always | signed by a trusted CA |
//! | `verify-full` | always | signed by a trusted CA and issued for the URL's host name |
//!
//! tokio-postgres does not know `verify-ca` and `verify-full`: [`translate_sslmode`] turns them
//! into `require` before the URL is parsed and remembers the check they ask for. The trusted CAs
//! are those of `database.ca_file`, or without it the Mozilla roots compiled in (`webpki-roots`,
//! the ones outbound webhooks are checked against too). As libpq does when it has a root
//! certificate file, a `database.ca_file` also makes `prefer` and `require` check that the
//! certificate is signed by one of its CAs.
//!
//! The cryptography is rustls' `ring` provider, named explicitly: the HTTP client uses it too, and
//! with more than one provider compiled into the binary rustls has no process-wide default.

use crate::DbError;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::{verify_server_cert_signed_by_trust_anchor, verify_server_name};
use rustls::crypto::{verify_tls12_signature, verify_tls13_signature, WebPkiSupportedAlgorithms};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::server::ParsedCertificate;
use rustls::{ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme};
use std::borrow::Cow;
use std::path::Path;
use std::sync::Arc;

pub use tokio_postgres_rustls::MakeRustlsConnect;

/// What the server's certificate must prove, beyond the handshake being signed by its key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CertCheck {
    /// Nothing (`prefer`, `require`): the connection is encrypted, but whoever answers at the
    /// address is trusted.
    None,
    /// Signed by a trusted CA (`verify-ca`), whatever host name it was issued for.
    Chain,
    /// Signed by a trusted CA and issued for the host name connected to (`verify-full`).
    Full,
}

impl CertCheck {
    fn from_sslmode(mode: &str) -> Option<Self> {
        match mode {
            "verify-ca" => Some(CertCheck::Chain),
            "verify-full" => Some(CertCheck::Full),
            _ => None,
        }
    }
}

/// `url` with every `sslmode=verify-ca` or `sslmode=verify-full` replaced by `sslmode=require`,
/// and the certificate check its (last, as in tokio-postgres) `sslmode` asks for. Both forms of
/// connection string are understood: `postgres://...?sslmode=verify-full` and
/// `host=... sslmode=verify-full`.
///
/// A string this cannot read is returned unchanged, for tokio-postgres to report; so is a mode
/// written some other way (percent-encoded, say), which tokio-postgres then refuses as an invalid
/// `sslmode`: no spelling of a verifying mode can end up connecting without the check.
pub fn translate_sslmode(url: &str) -> (Cow<'_, str>, CertCheck) {
    let modes = if is_url(url) {
        url_sslmodes(url)
    } else {
        key_value_sslmodes(url)
    };
    let Some(modes) = modes else {
        return (Cow::Borrowed(url), CertCheck::None);
    };
    let check = modes
        .last()
        .and_then(|m| CertCheck::from_sslmode(m.value))
        .unwrap_or(CertCheck::None);
    let mut out = String::with_capacity(url.len());
    let mut at = 0;
    for m in modes
        .iter()
        .filter(|m| CertCheck::from_sslmode(m.value).is_some())
    {
        out.push_str(&url[at..m.span.start]);
        out.push_str("require");
        at = m.span.end;
    }
    if at == 0 {
        return (Cow::Borrowed(url), check);
    }
    out.push_str(&url[at..]);
    (Cow::Owned(out), check)
}

/// One `sslmode` setting in a connection string: its value and where the value is written.
struct SslMode<'a> {
    value: &'a str,
    span: std::ops::Range<usize>,
}

fn is_url(s: &str) -> bool {
    s.starts_with("postgres://") || s.starts_with("postgresql://")
}

/// The `sslmode` query parameters of a URL, read the way tokio-postgres reads them: the query
/// starts at the first `?` after the credentials (which end at the first `@`), parameters are
/// separated by `&`.
fn url_sslmodes(url: &str) -> Option<Vec<SslMode<'_>>> {
    let after_creds = url.find('@').map_or(0, |i| i + 1);
    let query_start = after_creds + url[after_creds..].find('?')? + 1;
    let mut modes = Vec::new();
    let mut at = query_start;
    for param in url[query_start..].split('&') {
        if let Some((key, value)) = param.split_once('=') {
            if key == "sslmode" {
                let start = at + key.len() + 1;
                modes.push(SslMode {
                    value,
                    span: start..start + value.len(),
                });
            }
        }
        at += param.len() + 1;
    }
    Some(modes)
}

/// The `sslmode` settings of a `key=value` connection string, read the way tokio-postgres reads
/// them: pairs separated by white space, white space allowed around `=`, values optionally in
/// single quotes, a backslash escaping the next character. A value is offered for translation as
/// written, quotes and backslashes included, so only plain ones match. `None` when the string
/// does not parse.
fn key_value_sslmodes(s: &str) -> Option<Vec<SslMode<'_>>> {
    let mut it = s.char_indices().peekable();
    let skip_ws = |it: &mut std::iter::Peekable<std::str::CharIndices<'_>>| {
        while it.next_if(|(_, c)| c.is_whitespace()).is_some() {}
    };
    let end_of = |it: &mut std::iter::Peekable<std::str::CharIndices<'_>>| {
        it.peek().map_or(s.len(), |(i, _)| *i)
    };
    let mut modes = Vec::new();
    loop {
        skip_ws(&mut it);
        let key_start = end_of(&mut it);
        while it
            .next_if(|(_, c)| !c.is_whitespace() && *c != '=')
            .is_some()
        {}
        let key = &s[key_start..end_of(&mut it)];
        if key.is_empty() {
            return Some(modes);
        }
        skip_ws(&mut it);
        it.next_if(|(_, c)| *c == '=')?;
        skip_ws(&mut it);
        let start = end_of(&mut it);
        if it.next_if(|(_, c)| *c == '\'').is_some() {
            loop {
                match it.next()?.1 {
                    '\\' => {
                        it.next();
                    }
                    '\'' => break,
                    _ => {}
                }
            }
        } else {
            while let Some((_, c)) = it.next_if(|(_, c)| !c.is_whitespace()) {
                if c == '\\' {
                    it.next();
                }
            }
        }
        let end = end_of(&mut it);
        if start == end {
            return None;
        }
        if key == "sslmode" {
            modes.push(SslMode {
                value: &s[start..end],
                span: start..end,
            });
        }
    }
}

/// The TLS connector of every Postgres connection (the pools' and the dedicated ones'): offers
/// TLS to the server as `sslmode` says, and checks the certificate as `check` (and `ca_file`) say.
pub fn connector(check: CertCheck, ca_file: Option<&Path>) -> Result<MakeRustlsConnect, DbError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let algorithms = provider.signature_verification_algorithms;
    let roots = match (ca_file, check) {
        (Some(path), _) => Some(load_ca_file(path)?),
        (None, CertCheck::None) => None,
        (None, CertCheck::Chain | CertCheck::Full) => Some(RootCertStore {
            roots: webpki_roots::TLS_SERVER_ROOTS.to_vec(),
        }),
    };
    let verifier = match roots {
        None => Verifier::AnyCertificate { algorithms },
        Some(roots) => Verifier::Trusted {
            roots: Arc::new(roots),
            check_name: check == CertCheck::Full,
            algorithms,
        },
    };
    let mut config = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| DbError::Build(format!("TLS set-up: {e}")))?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(verifier))
        .with_no_client_auth();
    // What libpq 17 sends; needed for `sslnegotiation=direct`, ignored by older servers.
    config.alpn_protocols = vec![b"postgresql".to_vec()];
    Ok(MakeRustlsConnect::new(config))
}

/// The CAs of a PEM bundle. An unreadable file, one without a certificate, or one with a
/// certificate rustls cannot use is an error naming the file: a service does not start with it.
fn load_ca_file(path: &Path) -> Result<RootCertStore, DbError> {
    let bad = |what: String| DbError::Build(format!("database.ca_file {}: {what}", path.display()));
    let mut roots = RootCertStore::empty();
    for cert in CertificateDer::pem_file_iter(path).map_err(|e| bad(e.to_string()))? {
        let cert = cert.map_err(|e| bad(e.to_string()))?;
        roots
            .add(cert)
            .map_err(|e| bad(format!("unusable certificate: {e}")))?;
    }
    if roots.is_empty() {
        return Err(bad("no PEM certificate in the file".into()));
    }
    Ok(roots)
}

/// The server certificate check.
#[derive(Debug)]
enum Verifier {
    /// libpq's `prefer` and `require`: any certificate is accepted, so the connection is
    /// encrypted but not authenticated (anyone who can answer at the server's address can read
    /// it). The handshake's signatures are still checked against the certificate's key, as every
    /// TLS client must; only the question of whose key it is goes unasked.
    AnyCertificate {
        algorithms: WebPkiSupportedAlgorithms,
    },
    /// `verify-ca`, `verify-full`, or any mode with `database.ca_file`: the certificate chains up
    /// to one of `roots`, and with `check_name` is issued for the host name connected to.
    Trusted {
        roots: Arc<RootCertStore>,
        check_name: bool,
        algorithms: WebPkiSupportedAlgorithms,
    },
}

impl Verifier {
    fn algorithms(&self) -> &WebPkiSupportedAlgorithms {
        match self {
            Verifier::AnyCertificate { algorithms } | Verifier::Trusted { algorithms, .. } => {
                algorithms
            }
        }
    }
}

impl ServerCertVerifier for Verifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        if let Verifier::Trusted {
            roots,
            check_name,
            algorithms,
        } = self
        {
            let cert = ParsedCertificate::try_from(end_entity)?;
            verify_server_cert_signed_by_trust_anchor(
                &cert,
                roots,
                intermediates,
                now,
                algorithms.all,
            )?;
            if *check_name {
                verify_server_name(&cert, server_name)?;
            }
        }
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls12_signature(message, cert, dss, self.algorithms())
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls13_signature(message, cert, dss, self.algorithms())
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algorithms().supported_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(url: &str) -> (String, CertCheck) {
        let (u, c) = translate_sslmode(url);
        (u.into_owned(), c)
    }

    #[test]
    fn verifying_modes_become_require_in_urls() {
        assert_eq!(
            t("postgres://u:p@db.internal:5432/d?sslmode=verify-full"),
            (
                "postgres://u:p@db.internal:5432/d?sslmode=require".into(),
                CertCheck::Full
            )
        );
        assert_eq!(
            t("postgresql://db/d?application_name=x&sslmode=verify-ca&connect_timeout=3"),
            (
                "postgresql://db/d?application_name=x&sslmode=require&connect_timeout=3".into(),
                CertCheck::Chain
            )
        );
    }

    #[test]
    fn other_modes_are_left_to_tokio_postgres() {
        for url in [
            "postgres://postgres@127.0.0.1:5432/dispatcher",
            "postgres://h/d?sslmode=disable",
            "postgres://h/d?sslmode=prefer",
            "postgres://h/d?sslmode=require",
            "postgres://h/d?sslmode=verify%2Dfull",
            "host=h sslmode=require",
        ] {
            let (u, c) = translate_sslmode(url);
            assert!(matches!(u, Cow::Borrowed(_)), "{url}");
            assert_eq!(c, CertCheck::None, "{url}");
        }
    }

    #[test]
    fn the_last_sslmode_wins_as_in_tokio_postgres() {
        assert_eq!(
            t("postgres://h/d?sslmode=verify-full&sslmode=disable"),
            (
                "postgres://h/d?sslmode=require&sslmode=disable".into(),
                CertCheck::None
            )
        );
        assert_eq!(
            t("postgres://h/d?sslmode=disable&sslmode=verify-ca").1,
            CertCheck::Chain
        );
    }

    #[test]
    fn question_marks_and_sslmode_in_the_password_are_not_parameters() {
        assert_eq!(
            t("postgres://u:a?sslmode=verify-full@h/d"),
            (
                "postgres://u:a?sslmode=verify-full@h/d".into(),
                CertCheck::None
            )
        );
        assert_eq!(
            t("postgres://u:a?b@h/d?sslmode=verify-full").1,
            CertCheck::Full
        );
    }

    #[test]
    fn verifying_modes_become_require_in_key_value_strings() {
        assert_eq!(
            t("host=db.internal user=u sslmode=verify-full dbname=d"),
            (
                "host=db.internal user=u sslmode=require dbname=d".into(),
                CertCheck::Full
            )
        );
        assert_eq!(
            t("  sslmode =  verify-ca host=h"),
            ("  sslmode =  require host=h".into(), CertCheck::Chain)
        );
        // Quoted values are read but left alone: tokio-postgres refuses the mode.
        assert_eq!(
            t("password='sslmode=verify-full x' sslmode='verify-full'"),
            (
                "password='sslmode=verify-full x' sslmode='verify-full'".into(),
                CertCheck::None
            )
        );
        assert_eq!(t("password=a\\ sslmode=verify-full").1, CertCheck::None);
        assert_eq!(t("user=u sslmode=").1, CertCheck::None);
        assert_eq!(t("sslmode=verify-ca sslmode=require").1, CertCheck::None);
    }

    #[test]
    fn translated_strings_parse() {
        for url in [
            "postgres://u@h/d?sslmode=verify-full",
            "host=h sslmode=verify-ca",
        ] {
            let (u, _) = translate_sslmode(url);
            let cfg: tokio_postgres::Config = u.parse().unwrap();
            assert_eq!(cfg.get_ssl_mode(), tokio_postgres::config::SslMode::Require);
        }
    }

    #[test]
    fn a_bad_ca_file_is_an_error_naming_it() {
        let dir = std::env::temp_dir().join(format!("dispatcher-ca-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let missing = dir.join("missing.pem");
        let empty = dir.join("empty.pem");
        std::fs::write(&empty, "not a certificate\n").unwrap();
        let garbage = dir.join("garbage.pem");
        std::fs::write(
            &garbage,
            "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n",
        )
        .unwrap();
        for path in [&missing, &empty, &garbage] {
            let err = connector(CertCheck::Full, Some(path)).err().unwrap();
            assert!(err.to_string().contains("database.ca_file"), "{err}");
            assert!(err.to_string().contains(&*path.to_string_lossy()), "{err}");
        }
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn without_a_ca_file_verifying_modes_trust_the_mozilla_roots() {
        assert!(connector(CertCheck::Full, None).is_ok());
        assert!(connector(CertCheck::None, None).is_ok());
    }
}
