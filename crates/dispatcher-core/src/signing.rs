//! Standard Webhooks signatures: `v1,<base64 HMAC-SHA256("{id}.{timestamp}.{body}")>`, keyed with the
//! base64-decoded part of a `whsec_...` secret.

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use hmac::{Hmac, Mac};
use rand::RngCore;
use sha2::Sha256;
use std::fmt;

type HmacSha256 = Hmac<Sha256>;

const PREFIX: &str = "whsec_";

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SecretError {
    #[error("webhook secret must start with `whsec_`")]
    MissingPrefix,
    #[error("webhook secret is not valid base64")]
    NotBase64,
    #[error("webhook secret is too short")]
    TooShort,
}

/// A webhook signing key. Its `Debug` never prints the key.
#[derive(Clone, PartialEq, Eq)]
pub struct WebhookSecret {
    key: Vec<u8>,
}

impl fmt::Debug for WebhookSecret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("WebhookSecret(***)")
    }
}

impl WebhookSecret {
    /// A fresh random 24-byte secret.
    pub fn generate() -> Self {
        let mut key = vec![0u8; 24];
        rand::thread_rng().fill_bytes(&mut key);
        Self { key }
    }

    pub fn parse(s: &str) -> Result<Self, SecretError> {
        let b64 = s.strip_prefix(PREFIX).ok_or(SecretError::MissingPrefix)?;
        let key = B64.decode(b64).map_err(|_| SecretError::NotBase64)?;
        if key.len() < 16 {
            return Err(SecretError::TooShort);
        }
        Ok(Self { key })
    }

    /// The `whsec_...` form shown to the account owner once and stored server-side.
    pub fn expose(&self) -> String {
        format!("{PREFIX}{}", B64.encode(&self.key))
    }

    /// One `v1,<base64>` signature entry.
    pub fn sign(&self, msg_id: &str, timestamp: i64, body: &[u8]) -> String {
        let mac = self.mac(msg_id, timestamp, body);
        format!("v1,{}", B64.encode(mac.finalize().into_bytes()))
    }

    fn mac(&self, msg_id: &str, timestamp: i64, body: &[u8]) -> HmacSha256 {
        let mut mac = HmacSha256::new_from_slice(&self.key).expect("HMAC takes any key length");
        mac.update(msg_id.as_bytes());
        mac.update(b".");
        mac.update(timestamp.to_string().as_bytes());
        mac.update(b".");
        mac.update(body);
        mac
    }

    /// Does any `v1,` entry of a space-separated `webhook-signature` header match? Constant-time per
    /// entry; entries of other versions are ignored.
    pub fn verify(&self, msg_id: &str, timestamp: i64, body: &[u8], header: &str) -> bool {
        header.split(' ').any(|entry| {
            let Some(sig) = entry.strip_prefix("v1,") else {
                return false;
            };
            let Ok(sig) = B64.decode(sig) else {
                return false;
            };
            self.mac(msg_id, timestamp, body).verify_slice(&sig).is_ok()
        })
    }
}

/// The full `webhook-signature` header value for a set of valid secrets (several while a rotated
/// secret is still in its grace period).
pub fn signature_header(
    secrets: &[WebhookSecret],
    msg_id: &str,
    timestamp: i64,
    body: &[u8],
) -> String {
    secrets
        .iter()
        .map(|s| s.sign(msg_id, timestamp, body))
        .collect::<Vec<_>>()
        .join(" ")
}

/// The `sha256=<hex>` header value a provider sends for `body`.
pub fn sign_hex_sha256(secret: &[u8], body: &[u8]) -> String {
    let mut mac = HmacSha256::new_from_slice(secret).expect("HMAC takes any key length");
    mac.update(body);
    let hex: String = mac
        .finalize()
        .into_bytes()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    format!("sha256={hex}")
}

/// `sha256=<hex>` HMAC used by inbound provider callbacks, compared in constant time.
pub fn verify_hex_sha256(secret: &[u8], body: &[u8], header: &str) -> bool {
    let Some(hex) = header.strip_prefix("sha256=") else {
        return false;
    };
    let Some(expected) = decode_hex(hex) else {
        return false;
    };
    let mut mac = HmacSha256::new_from_slice(secret).expect("HMAC takes any key length");
    mac.update(body);
    mac.verify_slice(&expected).is_ok()
}

fn decode_hex(s: &str) -> Option<Vec<u8>> {
    if !s.len().is_multiple_of(2) {
        return None;
    }
    (0..s.len())
        .step_by(2)
        .map(|i| s.get(i..i + 2).and_then(|b| u8::from_str_radix(b, 16).ok()))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    // The published Standard Webhooks test vector.
    const SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
    const MSG_ID: &str = "msg_p5jXN8AQM9LWM0D4loKWxJek";
    const TS: i64 = 1614265330;
    const BODY: &str = r#"{"test": 2432232314}"#;
    const EXPECTED: &str = "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=";

    #[test]
    fn reproduces_the_standard_webhooks_vector() {
        let secret = WebhookSecret::parse(SECRET).unwrap();
        assert_eq!(secret.sign(MSG_ID, TS, BODY.as_bytes()), EXPECTED);
        assert!(secret.verify(MSG_ID, TS, BODY.as_bytes(), EXPECTED));
    }

    #[test]
    fn verification_rejects_tampering() {
        let secret = WebhookSecret::parse(SECRET).unwrap();
        assert!(!secret.verify(MSG_ID, TS + 1, BODY.as_bytes(), EXPECTED));
        assert!(!secret.verify(MSG_ID, TS, b"{\"test\": 1}", EXPECTED));
        assert!(!secret.verify("msg_other", TS, BODY.as_bytes(), EXPECTED));
        assert!(!secret.verify(MSG_ID, TS, BODY.as_bytes(), "v2,abc"));
        assert!(!secret.verify(MSG_ID, TS, BODY.as_bytes(), "v1,not base64!"));
        assert!(!secret.verify(MSG_ID, TS, BODY.as_bytes(), ""));
    }

    #[test]
    fn multi_signature_headers_verify_with_either_key() {
        let old = WebhookSecret::parse(SECRET).unwrap();
        let new = WebhookSecret::generate();
        let header = signature_header(&[new.clone(), old.clone()], MSG_ID, TS, BODY.as_bytes());
        assert_eq!(header.split(' ').count(), 2);
        assert!(old.verify(MSG_ID, TS, BODY.as_bytes(), &header));
        assert!(new.verify(MSG_ID, TS, BODY.as_bytes(), &header));
        assert!(!WebhookSecret::generate().verify(MSG_ID, TS, BODY.as_bytes(), &header));
    }

    #[test]
    fn secrets_round_trip_and_do_not_print() {
        let s = WebhookSecret::generate();
        let exposed = s.expose();
        assert!(exposed.starts_with("whsec_"));
        assert_eq!(WebhookSecret::parse(&exposed).unwrap(), s);
        assert_eq!(format!("{s:?}"), "WebhookSecret(***)");
        assert_eq!(WebhookSecret::parse("abc"), Err(SecretError::MissingPrefix));
        assert_eq!(
            WebhookSecret::parse("whsec_!!"),
            Err(SecretError::NotBase64)
        );
        assert_eq!(
            WebhookSecret::parse("whsec_YWJj"),
            Err(SecretError::TooShort)
        );
    }

    #[test]
    fn provider_signatures_verify_in_hex() {
        let mut mac = HmacSha256::new_from_slice(b"k").unwrap();
        mac.update(b"body");
        let hex: String = mac
            .finalize()
            .into_bytes()
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        assert!(verify_hex_sha256(b"k", b"body", &format!("sha256={hex}")));
        assert_eq!(sign_hex_sha256(b"k", b"body"), format!("sha256={hex}"));
        assert!(!verify_hex_sha256(b"k", b"body2", &format!("sha256={hex}")));
        assert!(!verify_hex_sha256(b"k", b"body", &hex));
        assert!(!verify_hex_sha256(b"k", b"body", "sha256=zz"));
        assert!(!verify_hex_sha256(b"k", b"body", "sha256=abc"));
    }
}
