//! The Postgres primary and synchronous standby of `scripts/pg-replica.sh`, for the tests.

use dispatcher_e2e::{workspace_root, PgServer};
use std::time::Duration;

pub const PRIMARY_PORT: u16 = 5442;
pub const STANDBY_PORT: u16 = 5443;

/// `database.url` of a database on the pair: both hosts, each connection to the writable one.
pub fn failover_url(db: &str) -> String {
    format!(
        "postgresql://postgres@127.0.0.1:{PRIMARY_PORT},127.0.0.1:{STANDBY_PORT}/{db}\
         ?target_session_attrs=read-write"
    )
}

/// `database.read_url` of a database on the pair: the standby.
pub fn standby_url(db: &str) -> String {
    format!("postgresql://postgres@127.0.0.1:{STANDBY_PORT}/{db}")
}

/// Where a test's database goes: created through whichever node is writable, used through the
/// failover URL.
pub fn server() -> PgServer {
    PgServer {
        admin: failover_url("postgres"),
        url: failover_url("{db}"),
    }
}

/// Runs `scripts/pg-replica.sh ARGS` (each of its waits is bounded; so is this one) and returns
/// its output; fails the test when it fails.
pub async fn script(args: &[&str]) -> String {
    let out = tokio::time::timeout(
        Duration::from_secs(120),
        tokio::process::Command::new(workspace_root().join("scripts/pg-replica.sh"))
            .args(args)
            .kill_on_drop(true)
            .output(),
    )
    .await
    .unwrap_or_else(|_| panic!("scripts/pg-replica.sh {args:?} did not finish in 120 s"))
    .expect("scripts/pg-replica.sh runs");
    assert!(
        out.status.success(),
        "scripts/pg-replica.sh {args:?}: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A healthy pair (the script rebuilds one left failed over by an earlier test).
pub async fn up() {
    let said = script(&["up"]).await;
    eprintln!("{}", said.trim());
}

/// One value of a query on one node's database `db`.
pub async fn query_text(port: u16, db: &str, sql: &str) -> String {
    let (client, conn) = tokio_postgres::connect(
        &format!("postgresql://postgres@127.0.0.1:{port}/{db}"),
        tokio_postgres::NoTls,
    )
    .await
    .unwrap_or_else(|e| panic!("node on {port}: {e}"));
    tokio::spawn(conn);
    let row = client.query_one(sql, &[]).await.unwrap();
    row.get(0)
}
