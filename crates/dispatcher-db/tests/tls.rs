//! TLS to the local Postgres (127.0.0.1:5432, user postgres, trust authentication), as
//! `sslmode` and `database.ca_file` ask. Debian's server runs with `ssl = on` and its snakeoil
//! certificate: self-signed, issued for `localhost`. The host name `localhost` is only ever used
//! with `hostaddr=127.0.0.1`, so nothing but the loopback address is connected to.

use dispatcher_config::{DatabaseSettings, Settings, Sources};
use dispatcher_db::pool::connect_single;
use dispatcher_db::DbError;
use std::collections::HashMap;

const BY_ADDRESS: &str = "postgres://postgres@127.0.0.1:5432/postgres";
/// The certificate's name, connected to at the loopback address.
const BY_NAME: &str = "postgres://postgres@localhost:5432/postgres?hostaddr=127.0.0.1";
/// The server's certificate, which is its own CA.
const SNAKEOIL: &str = "/etc/ssl/certs/ssl-cert-snakeoil.pem";

fn with_param(url: &str, param: &str) -> String {
    let sep = if url.contains('?') { '&' } else { '?' };
    format!("{url}{sep}{param}")
}

fn settings(url: &str, ca_file: Option<&str>) -> DatabaseSettings {
    let mut env = HashMap::from([("DISPATCHER__DATABASE__URL".to_owned(), url.to_owned())]);
    if let Some(ca) = ca_file {
        env.insert("DISPATCHER__DATABASE__CA_FILE".to_owned(), ca.to_owned());
    }
    Settings::load(Sources {
        env: Some(env),
        skip_cwd_files: true,
        ..Sources::default()
    })
    .expect("test settings are valid")
    .database
}

fn fixture(name: &str) -> String {
    format!("{}/tests/fixtures/{name}", env!("CARGO_MANIFEST_DIR"))
}

const SSL_IN_USE: &str = "SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()";

/// Connects as `connect_single` does and says whether the server sees the session encrypted.
async fn encrypted(url: &str, ca_file: Option<&str>) -> Result<bool, DbError> {
    let (client, connection) = connect_single(&settings(url, ca_file)).await?;
    tokio::spawn(connection);
    Ok(client.query_one(SSL_IN_USE, &[]).await?.get(0))
}

/// These tests prove nothing against a server without TLS: fail, do not pass.
async fn server_offers_tls() {
    let (client, connection) =
        connect_single(&settings(&with_param(BY_ADDRESS, "sslmode=disable"), None))
            .await
            .expect("local Postgres on 127.0.0.1:5432 (user postgres, trust authentication)");
    tokio::spawn(connection);
    let ssl: String = client.query_one("SHOW ssl", &[]).await.unwrap().get(0);
    assert_eq!(
        ssl, "on",
        "the local Postgres must run with `ssl = on` (Debian's default, with the snakeoil \
         certificate) for the TLS tests to mean anything"
    );
}

fn refused(result: Result<bool, DbError>, expected: &str) {
    match result {
        Ok(tls) => panic!("connected (ssl = {tls}); expected a refusal mentioning `{expected}`"),
        Err(e) => assert!(
            e.to_string().contains(expected),
            "expected a refusal mentioning `{expected}`, got: {e}"
        ),
    }
}

#[tokio::test]
async fn require_encrypts_without_checking_the_certificate() {
    server_offers_tls().await;
    // The certificate is self-signed and not issued for 127.0.0.1: neither matters here.
    let url = with_param(BY_ADDRESS, "sslmode=require");
    assert!(encrypted(&url, None).await.unwrap());
}

#[tokio::test]
async fn prefer_is_the_default_and_encrypts_when_the_server_offers_tls() {
    server_offers_tls().await;
    assert!(encrypted(BY_ADDRESS, None).await.unwrap());
    assert!(encrypted(&with_param(BY_ADDRESS, "sslmode=prefer"), None)
        .await
        .unwrap());
}

#[tokio::test]
async fn disable_does_not_encrypt() {
    server_offers_tls().await;
    let url = with_param(BY_ADDRESS, "sslmode=disable");
    assert!(!encrypted(&url, None).await.unwrap());
}

#[tokio::test]
async fn pooled_connections_use_tls_too() {
    server_offers_tls().await;
    let pool = dispatcher_db::connect_pool(&settings(
        &with_param(BY_NAME, "sslmode=verify-full"),
        Some(SNAKEOIL),
    ))
    .unwrap();
    let client = pool.get().await.unwrap();
    let tls: bool = client.query_one(SSL_IN_USE, &[]).await.unwrap().get(0);
    assert!(tls);
}

#[tokio::test]
async fn verify_full_connects_to_the_name_on_the_certificate() {
    server_offers_tls().await;
    let url = with_param(BY_NAME, "sslmode=verify-full");
    assert!(encrypted(&url, Some(SNAKEOIL)).await.unwrap());
    // The same in the key=value form of connection string.
    let kv = "host=localhost hostaddr=127.0.0.1 port=5432 user=postgres dbname=postgres \
              sslmode=verify-full";
    assert!(encrypted(kv, Some(SNAKEOIL)).await.unwrap());
}

#[tokio::test]
async fn verify_full_refuses_a_certificate_for_another_name() {
    server_offers_tls().await;
    let url = with_param(BY_ADDRESS, "sslmode=verify-full");
    refused(
        encrypted(&url, Some(SNAKEOIL)).await,
        "certificate not valid for name \"127.0.0.1\"",
    );
}

#[tokio::test]
async fn verify_ca_checks_the_issuer_but_not_the_name() {
    server_offers_tls().await;
    let url = with_param(BY_ADDRESS, "sslmode=verify-ca");
    assert!(encrypted(&url, Some(SNAKEOIL)).await.unwrap());
    refused(
        encrypted(&url, Some(&fixture("unrelated-ca.pem"))).await,
        "UnknownIssuer",
    );
}

#[tokio::test]
async fn without_a_ca_file_verifying_modes_trust_only_the_public_roots() {
    server_offers_tls().await;
    let url = with_param(BY_NAME, "sslmode=verify-full");
    refused(encrypted(&url, None).await, "UnknownIssuer");
}

#[tokio::test]
async fn a_ca_file_makes_require_check_the_issuer_as_libpq_does() {
    server_offers_tls().await;
    let url = with_param(BY_ADDRESS, "sslmode=require");
    assert!(encrypted(&url, Some(SNAKEOIL)).await.unwrap());
    refused(
        encrypted(&url, Some(&fixture("unrelated-ca.pem"))).await,
        "UnknownIssuer",
    );
}

#[test]
fn bad_tls_settings_stop_the_service_at_start() {
    let no_pool = |url: &str, ca_file: Option<&str>| {
        dispatcher_db::connect_pool(&settings(url, ca_file))
            .expect_err("no pool with bad TLS settings")
            .to_string()
    };
    let err = no_pool(
        &with_param(BY_NAME, "sslmode=verify-full"),
        Some("/nonexistent/db-ca.pem"),
    );
    assert!(
        err.contains("database.ca_file /nonexistent/db-ca.pem"),
        "{err}"
    );
    let err = no_pool(&with_param(BY_NAME, "sslmode=verify-everything"), None);
    assert!(err.contains("invalid value for option `sslmode`"), "{err}");
}
