//! Accounts: argon2 password hashes and webhook signing secrets.

use crate::{DbError, Pool};
use argon2::password_hash::{
    rand_core::OsRng, PasswordHash, PasswordHasher, PasswordVerifier, SaltString,
};
use argon2::Argon2;
use dispatcher_core::signing::WebhookSecret;
use rand::distributions::{Alphanumeric, DistString};
use serde::Serialize;
use std::collections::HashMap;
use std::sync::OnceLock;
use uuid::Uuid;

/// What `dispatchctl accounts create` prints, the only time password and secret are shown.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct CreatedAccount {
    pub account_id: Uuid,
    pub email: String,
    pub password: String,
    pub webhook_secret: String,
}

#[derive(Debug, thiserror::Error)]
pub enum AccountError {
    #[error("an account with email `{0}` already exists")]
    EmailTaken(String),
    #[error("`{0}` is not a valid email address")]
    InvalidEmail(String),
    #[error("password must be at least 8 characters")]
    WeakPassword,
    #[error("no account with email `{0}`")]
    NotFound(String),
    #[error(transparent)]
    Db(#[from] DbError),
}

fn normalize_email(email: &str) -> Result<String, AccountError> {
    let e = email.trim().to_ascii_lowercase();
    let valid = e.len() <= 254
        && e.split_once('@')
            .is_some_and(|(l, d)| !l.is_empty() && !d.is_empty() && !d.contains('@'))
        && !e
            .chars()
            .any(|c| c.is_whitespace() || c.is_control() || c == ':');
    if valid {
        Ok(e)
    } else {
        Err(AccountError::InvalidEmail(email.to_owned()))
    }
}

pub fn hash_password(password: &str) -> String {
    let salt = SaltString::generate(&mut OsRng);
    Argon2::default()
        .hash_password(password.as_bytes(), &salt)
        .expect("argon2 hashing with default params cannot fail")
        .to_string()
}

fn verify_hash(hash: &str, password: &str) -> bool {
    PasswordHash::new(hash)
        .map(|h| {
            Argon2::default()
                .verify_password(password.as_bytes(), &h)
                .is_ok()
        })
        .unwrap_or(false)
}

/// A hash to verify against when the email is unknown, so both failures take the same time.
fn dummy_hash() -> &'static str {
    static DUMMY: OnceLock<String> = OnceLock::new();
    DUMMY.get_or_init(|| hash_password("not-a-real-password"))
}

pub fn generate_password() -> String {
    Alphanumeric.sample_string(&mut rand::thread_rng(), 24)
}

pub async fn create(
    pool: &Pool,
    email: &str,
    password: Option<String>,
) -> Result<CreatedAccount, AccountError> {
    let email = normalize_email(email)?;
    let password = password.unwrap_or_else(generate_password);
    if password.len() < 8 {
        return Err(AccountError::WeakPassword);
    }
    let hash = {
        let p = password.clone();
        tokio::task::spawn_blocking(move || hash_password(&p))
            .await
            .expect("hashing task panicked")
    };
    let secret = WebhookSecret::generate().expose();
    let id = Uuid::now_v7();
    let client = pool.get().await.map_err(DbError::from)?;
    let inserted = client
        .execute(
            "INSERT INTO accounts (id, email, password_hash, webhook_secret)
             VALUES ($1, $2, $3, $4) ON CONFLICT (email) DO NOTHING",
            &[&id, &email, &hash, &secret],
        )
        .await
        .map_err(DbError::from)?;
    if inserted == 0 {
        return Err(AccountError::EmailTaken(email));
    }
    Ok(CreatedAccount {
        account_id: id,
        email,
        password,
        webhook_secret: secret,
    })
}

/// Sets a new password (generated when `None`) and returns it; ends the account's dashboard
/// sessions.
pub async fn rotate_password(
    pool: &Pool,
    email: &str,
    password: Option<String>,
) -> Result<String, AccountError> {
    let email = normalize_email(email)?;
    let password = password.unwrap_or_else(generate_password);
    if password.len() < 8 {
        return Err(AccountError::WeakPassword);
    }
    let p = password.clone();
    let hash = tokio::task::spawn_blocking(move || hash_password(&p))
        .await
        .expect("hashing task panicked");
    let client = pool.get().await.map_err(DbError::from)?;
    // The account's dashboard sessions end with the password they were opened with.
    let n = client
        .execute(
            "WITH upd AS (
                 UPDATE accounts SET password_hash = $2, updated_at = now() WHERE email = $1
                 RETURNING id
             ), ended AS (
                 DELETE FROM ui_sessions WHERE account_id IN (SELECT id FROM upd)
             )
             SELECT 1 FROM upd",
            &[&email, &hash],
        )
        .await
        .map_err(DbError::from)?;
    if n == 0 {
        return Err(AccountError::NotFound(email));
    }
    Ok(password)
}

/// The account id for a correct email and password; `None` for an unknown email or a wrong
/// password alike, after the same amount of hashing work.
pub async fn authenticate(
    pool: &Pool,
    email: &str,
    password: &str,
) -> Result<Option<Uuid>, DbError> {
    let Ok(email) = normalize_email(email) else {
        return Ok(None);
    };
    let client = pool.get().await?;
    let stmt = client
        .prepare_cached("SELECT id, password_hash FROM accounts WHERE email = $1")
        .await?;
    let row = client.query_opt(&stmt, &[&email]).await?;
    drop(client);
    let (id, hash) = match row {
        Some(r) => (Some(r.get::<_, Uuid>(0)), r.get::<_, String>(1)),
        None => (None, dummy_hash().to_owned()),
    };
    let password = password.to_owned();
    let ok = tokio::task::spawn_blocking(move || verify_hash(&hash, &password))
        .await
        .expect("verification task panicked");
    Ok(if ok { id } else { None })
}

/// The signing secrets of many accounts in one statement; an account not found is an error.
pub async fn signing_secrets_of(
    pool: &Pool,
    account_ids: &[Uuid],
) -> Result<HashMap<Uuid, Vec<WebhookSecret>>, DbError> {
    let client = pool.get().await?;
    let stmt = client
        .prepare_cached(
            "SELECT id, webhook_secret,
                    CASE WHEN previous_secret_until > now() THEN previous_webhook_secret END
             FROM accounts WHERE id = ANY($1)",
        )
        .await?;
    let mut out = HashMap::with_capacity(account_ids.len());
    for row in client.query(&stmt, &[&account_ids]).await? {
        out.insert(row.get(0), secrets_from(row.get(1), row.get(2))?);
    }
    all_found(account_ids, &out)?;
    Ok(out)
}

/// An error naming the first of `account_ids` whose secrets were not read: events name their
/// account, so one that does not exist is corrupt data, not an account with nothing to sign.
pub(crate) fn all_found(
    account_ids: &[Uuid],
    secrets: &HashMap<Uuid, Vec<WebhookSecret>>,
) -> Result<(), DbError> {
    match account_ids.iter().find(|a| !secrets.contains_key(*a)) {
        Some(missing) => Err(DbError::Corrupt(format!("account {missing} not found"))),
        None => Ok(()),
    }
}

/// The secrets webhooks are signed with: the current one, and the previous one while its grace
/// lasts (`None` once it is over, as the statements select it).
pub(crate) fn secrets_from(
    current: Option<String>,
    previous: Option<String>,
) -> Result<Vec<WebhookSecret>, DbError> {
    [current, previous]
        .into_iter()
        .flatten()
        .map(|s| {
            WebhookSecret::parse(&s)
                .map_err(|e| DbError::Corrupt(format!("stored webhook secret: {e}")))
        })
        .collect()
}

/// Issues a new webhook secret. The old one keeps being signed with until `grace` has passed, so
/// receivers can switch without losing a webhook. Returns the new secret and that moment.
pub async fn rotate_webhook_secret(
    pool: &Pool,
    account_id: Uuid,
    grace: std::time::Duration,
) -> Result<(String, chrono::DateTime<chrono::Utc>), DbError> {
    let secret = WebhookSecret::generate().expose();
    let until = chrono::Utc::now()
        + chrono::Duration::from_std(grace).unwrap_or_else(|_| chrono::Duration::days(1));
    let client = pool.get().await?;
    let n = client
        .execute(
            "UPDATE accounts SET previous_webhook_secret = webhook_secret,
                    previous_secret_until = $3, webhook_secret = $2, updated_at = now()
             WHERE id = $1",
            &[&account_id, &secret, &until],
        )
        .await?;
    if n == 0 {
        return Err(DbError::Corrupt(format!("account {account_id} not found")));
    }
    Ok((secret, until))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hashes_verify_only_the_right_password() {
        let h = hash_password("correct horse");
        assert!(verify_hash(&h, "correct horse"));
        assert!(!verify_hash(&h, "wrong horse"));
        assert!(!verify_hash("garbage", "correct horse"));
        assert!(!verify_hash(dummy_hash(), ""));
    }

    #[test]
    fn emails_are_normalized_and_checked() {
        assert_eq!(
            normalize_email(" Ada@Example.COM ").unwrap(),
            "ada@example.com"
        );
        for bad in ["", "ada", "@x", "a@", "a b@x", "a:b@x", "a@b@c", "a\0@x"] {
            assert!(normalize_email(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn generated_passwords_are_long_and_distinct() {
        let a = generate_password();
        assert_eq!(a.len(), 24);
        assert_ne!(a, generate_password());
    }
}
