//! Dashboard sessions: ids, cookies, expiry and CSRF tokens.
//!
//! A session id is 256 random bits, sent to the browser base64url-encoded in an HttpOnly,
//! SameSite=Strict cookie scoped to `/ui/`; Postgres keeps only its SHA-256. The CSRF token of a
//! session is derived from its id (a SHA-256 under a fixed label), so it needs no storage, differs
//! from every other session's, and cannot be computed without the cookie. Before sign-in there is
//! no session: the sign-in form carries a random token that must match a cookie set with the form
//! (double submit), so another site cannot sign a browser in to its own account.

use axum::http::{header, HeaderMap};
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use base64::Engine;
use chrono::{DateTime, Utc};
use rand::RngCore;
use sha2::{Digest, Sha256};
use std::time::Duration;
use subtle::ConstantTimeEq;

/// The session cookie.
pub const SESSION_COOKIE: &str = "dispatcher_ui";
/// The sign-in form's double-submit cookie.
pub const LOGIN_COOKIE: &str = "dispatcher_ui_login";
/// Both cookies are sent only to the dashboard.
pub const COOKIE_PATH: &str = "/ui/";
/// How long a sign-in form stays usable.
pub const LOGIN_FORM_TTL: Duration = Duration::from_secs(3600);

/// A new random 256-bit token, base64url without padding (43 characters).
pub fn new_token() -> String {
    let mut raw = [0u8; 32];
    rand::rngs::OsRng.fill_bytes(&mut raw);
    B64.encode(raw)
}

/// The raw bytes of a session id as the browser sent it; `None` unless exactly 256 bits.
fn decode_id(id: &str) -> Option<[u8; 32]> {
    B64.decode(id).ok()?.try_into().ok()
}

/// What the database stores for a session id (`None` for a malformed id, which has no session).
pub fn id_hash(id: &str) -> Option<[u8; 32]> {
    decode_id(id).map(|raw| Sha256::digest(raw).into())
}

/// The CSRF token of the session with this id.
pub fn csrf_token(id: &str) -> String {
    let mut h = Sha256::new();
    h.update(b"dispatcher-ui csrf\0");
    h.update(id.as_bytes());
    B64.encode(h.finalize())
}

/// Whether `sent` equals `expected`, in time independent of where they differ. Tokens are of one
/// fixed length, so the length check gives nothing away.
pub fn tokens_match(sent: &str, expected: &str) -> bool {
    !expected.is_empty() && bool::from(sent.as_bytes().ct_eq(expected.as_bytes()))
}

/// Whether a session created at `created_at` and last used at `last_seen_at` is still valid at
/// `now`: used within `idle`, and younger than `max`.
pub fn is_live(
    created_at: DateTime<Utc>,
    last_seen_at: DateTime<Utc>,
    now: DateTime<Utc>,
    idle: Duration,
    max: Duration,
) -> bool {
    let within = |since: DateTime<Utc>, limit: Duration| {
        chrono::Duration::from_std(limit).is_ok_and(|limit| now - since < limit)
    };
    within(last_seen_at, idle) && within(created_at, max)
}

/// Whether to record use of a session last used at `last_seen_at`: at most once per
/// twentieth of the idle time (and at least once a minute), not on every request.
pub fn needs_touch(last_seen_at: DateTime<Utc>, now: DateTime<Utc>, idle: Duration) -> bool {
    let step = (idle / 20).min(Duration::from_secs(60));
    chrono::Duration::from_std(step).map_or(true, |step| now - last_seen_at >= step)
}

/// Whether cookies must be marked Secure: the public URL is https, or a proxy in front says the
/// request came over https.
pub fn is_secure(public_url: &str, headers: &HeaderMap) -> bool {
    public_url.starts_with("https://")
        || headers
            .get("x-forwarded-proto")
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.trim().eq_ignore_ascii_case("https"))
}

/// A `Set-Cookie` value for one of the dashboard's cookies, valid for `max_age` (zero deletes it).
pub fn set_cookie(name: &str, value: &str, max_age: Duration, secure: bool) -> String {
    let mut c = format!(
        "{name}={value}; Path={COOKIE_PATH}; Max-Age={}; HttpOnly; SameSite=Strict",
        max_age.as_secs()
    );
    if secure {
        c.push_str("; Secure");
    }
    c
}

/// The value of cookie `name` in the request, if sent.
pub fn read_cookie<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v)
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    fn at(secs: i64) -> DateTime<Utc> {
        DateTime::from_timestamp(1_700_000_000 + secs, 0).unwrap()
    }

    #[test]
    fn tokens_are_256_random_bits() {
        let (a, b) = (new_token(), new_token());
        assert_ne!(a, b);
        assert_eq!(a.len(), 43);
        assert_eq!(decode_id(&a).unwrap().len(), 32);
        assert!(id_hash(&a).is_some());
        assert_ne!(id_hash(&a), id_hash(&b));
        for bad in ["", "short", "!!!", &a[..42], &format!("{a}A")] {
            assert!(id_hash(bad).is_none(), "{bad}");
        }
    }

    #[test]
    fn the_stored_hash_is_neither_the_id_nor_the_csrf_token() {
        let id = new_token();
        let stored = B64.encode(id_hash(&id).unwrap());
        assert_ne!(stored, id);
        assert_ne!(stored, csrf_token(&id));
        assert_ne!(csrf_token(&id), csrf_token(&new_token()));
        assert_eq!(csrf_token(&id), csrf_token(&id));
    }

    #[test]
    fn csrf_tokens_must_match_exactly() {
        let id = new_token();
        let token = csrf_token(&id);
        assert!(tokens_match(&token, &token));
        assert!(!tokens_match("", &token));
        assert!(!tokens_match(&token[..token.len() - 1], &token));
        assert!(!tokens_match(&format!("{token}x"), &token));
        assert!(!tokens_match(&csrf_token(&new_token()), &token));
        let mut flipped = token.clone().into_bytes();
        flipped[0] = if flipped[0] == b'A' { b'B' } else { b'A' };
        assert!(!tokens_match(&String::from_utf8(flipped).unwrap(), &token));
        // An empty expected token (no cookie) never matches, not even an empty one.
        assert!(!tokens_match("", ""));
    }

    #[test]
    fn sessions_expire_when_idle_and_when_old() {
        let (idle, max) = (Duration::from_secs(1800), Duration::from_secs(12 * 3600));
        assert!(is_live(at(0), at(0), at(0), idle, max));
        assert!(is_live(at(0), at(0), at(1799), idle, max));
        assert!(!is_live(at(0), at(0), at(1800), idle, max), "idle");
        // Active all along, but past the absolute limit.
        assert!(is_live(at(0), at(43_000), at(43_199), idle, max));
        assert!(!is_live(at(0), at(43_199), at(43_200), idle, max), "max");
        // A clock that went backwards does not end a session.
        assert!(is_live(at(10), at(10), at(5), idle, max));
    }

    #[test]
    fn use_is_recorded_now_and_then() {
        let idle = Duration::from_secs(1800);
        assert!(!needs_touch(at(0), at(59), idle));
        assert!(needs_touch(at(0), at(60), idle));
        let short = Duration::from_secs(20);
        assert!(!needs_touch(at(0), at(0), short));
        assert!(needs_touch(at(0), at(1), short));
    }

    #[test]
    fn cookies_are_http_only_strict_and_scoped_to_the_dashboard() {
        let c = set_cookie(SESSION_COOKIE, "abc", Duration::from_secs(43_200), false);
        assert_eq!(
            c,
            "dispatcher_ui=abc; Path=/ui/; Max-Age=43200; HttpOnly; SameSite=Strict"
        );
        let c = set_cookie(SESSION_COOKIE, "", Duration::ZERO, true);
        assert!(c.contains("Max-Age=0") && c.ends_with("; Secure"), "{c}");
    }

    #[test]
    fn secure_over_https_or_behind_an_https_proxy() {
        let mut h = HeaderMap::new();
        assert!(!is_secure("http://127.0.0.1:8081", &h));
        assert!(is_secure("https://dispatcher.example.com", &h));
        h.insert("x-forwarded-proto", HeaderValue::from_static("HTTPS"));
        assert!(is_secure("http://127.0.0.1:8081", &h));
        h.insert("x-forwarded-proto", HeaderValue::from_static("http"));
        assert!(!is_secure("http://127.0.0.1:8081", &h));
    }

    #[test]
    fn reads_one_cookie_among_several() {
        let mut h = HeaderMap::new();
        h.append(
            header::COOKIE,
            HeaderValue::from_static("a=1; dispatcher_ui=xyz"),
        );
        h.append(
            header::COOKIE,
            HeaderValue::from_static("dispatcher_ui_login=q"),
        );
        assert_eq!(read_cookie(&h, SESSION_COOKIE), Some("xyz"));
        assert_eq!(read_cookie(&h, LOGIN_COOKIE), Some("q"));
        assert_eq!(read_cookie(&h, "b"), None);
    }
}
