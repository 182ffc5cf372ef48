//! What a dispatch costs the machine: CPU of each service, of PostgreSQL and of RabbitMQ;
//! Postgres transactions, statements and rows written; broker messages, confirms and ack
//! frames. Taken as the difference between two snapshots around a phase, divided by the
//! dispatches of the phase.

use crate::{cpu_seconds, machine_cpu_seconds};
use std::collections::BTreeMap;
use std::time::Duration;

/// Counters of the services' `/metrics` that count broker work.
const BROKER_COUNTERS: [(&str, &str); 4] = [
    (
        "dispatcher_messages_published_total",
        "messages_published_and_confirmed",
    ),
    ("dispatcher_messages_consumed_total", "messages_consumed"),
    ("dispatcher_messages_acked_total", "messages_acked"),
    ("dispatcher_ack_frames_total", "ack_frames"),
];

pub struct CostProbe {
    services: Vec<(String, u32)>,
    metrics_urls: Vec<String>,
    db: Option<tokio_postgres::Client>,
    statements: bool,
    before: Snapshot,
}

#[derive(Default, Clone)]
struct Snapshot {
    service_cpu: Vec<f64>,
    postgres_cpu: f64,
    rabbitmq_cpu: f64,
    machine_cpu: f64,
    broker: BTreeMap<&'static str, f64>,
    /// xact_commit and the rows inserted, updated and deleted in the bench database.
    database: BTreeMap<String, f64>,
    /// Rows written per table: inserted + updated + deleted.
    tables: BTreeMap<String, f64>,
    /// Calls per statement (first line of its text) when pg_stat_statements is loaded.
    statements: BTreeMap<String, f64>,
    /// Executor (and, with `pg_stat_statements.track_planning`, planner) milliseconds per statement, each named by the start of its text and its length
    /// (which tells apart statements that start alike).
    statement_ms: BTreeMap<String, f64>,
}

/// CPU seconds of every process whose command name is `comm` (all of Postgres's backends, the
/// broker's Erlang VM of every node).
fn cpu_of(comm: &str) -> f64 {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return 0.0;
    };
    dir.filter_map(Result::ok)
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            std::fs::read_to_string(format!("/proc/{pid}/comm")).is_ok_and(|c| c.trim_end() == comm)
        })
        .map(cpu_seconds)
        .sum()
}

/// The sum of every series of `name` in a Prometheus text exposition.
fn metric_sum(text: &str, name: &str) -> f64 {
    text.lines()
        .filter(|l| {
            l.strip_prefix(name)
                .is_some_and(|rest| rest.starts_with('{') || rest.starts_with(' '))
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

impl CostProbe {
    /// `services`: name and pid of each service; `metrics_urls`: their base URLs. Postgres
    /// figures come from `DISPATCHER__DATABASE__URL` when it is reachable.
    pub async fn start(services: Vec<(String, u32)>, metrics_urls: Vec<String>) -> Self {
        let mut db = None;
        if let Ok(url) = std::env::var("DISPATCHER__DATABASE__URL") {
            if let Ok((client, conn)) = tokio_postgres::connect(&url, tokio_postgres::NoTls).await {
                tokio::spawn(conn);
                db = Some(client);
            }
        }
        let mut statements = false;
        if let Some(c) = &db {
            statements = c
                .batch_execute("CREATE EXTENSION IF NOT EXISTS pg_stat_statements")
                .await
                .is_ok()
                && c.simple_query("SELECT 1 FROM pg_stat_statements LIMIT 1")
                    .await
                    .is_ok();
        }
        let mut probe = Self {
            services,
            metrics_urls,
            db,
            statements,
            before: Snapshot::default(),
        };
        probe.before = probe.snapshot().await;
        probe
    }

    async fn snapshot(&self) -> Snapshot {
        // Postgres publishes its statistics about once a second.
        if self.db.is_some() {
            tokio::time::sleep(Duration::from_millis(1200)).await;
        }
        let mut s = Snapshot {
            service_cpu: self.services.iter().map(|(_, p)| cpu_seconds(*p)).collect(),
            postgres_cpu: cpu_of("postgres"),
            rabbitmq_cpu: cpu_of("beam.smp"),
            machine_cpu: machine_cpu_seconds(),
            ..Snapshot::default()
        };
        let http = reqwest::Client::new();
        for url in &self.metrics_urls {
            let Ok(r) = http
                .get(format!("{url}/metrics"))
                .timeout(Duration::from_secs(5))
                .send()
                .await
            else {
                continue;
            };
            let text = r.text().await.unwrap_or_default();
            for (metric, label) in BROKER_COUNTERS {
                *s.broker.entry(label).or_default() += metric_sum(&text, metric);
            }
        }
        if let Some(c) = &self.db {
            if let Ok(row) = c
                .query_one(
                    "SELECT xact_commit::float8, tup_inserted::float8, tup_updated::float8,
                            tup_deleted::float8
                     FROM pg_stat_database WHERE datname = current_database()",
                    &[],
                )
                .await
            {
                for (i, k) in [
                    "transactions",
                    "rows_inserted",
                    "rows_updated",
                    "rows_deleted",
                ]
                .iter()
                .enumerate()
                {
                    s.database.insert((*k).to_owned(), row.get(i));
                }
            }
            if let Ok(rows) = c
                .query(
                    "SELECT relname::text, (n_tup_ins + n_tup_upd + n_tup_del)::float8
                     FROM pg_stat_user_tables",
                    &[],
                )
                .await
            {
                for r in rows {
                    s.tables.insert(r.get(0), r.get(1));
                }
            }
            if self.statements {
                if let Ok(rows) = c
                    .query(
                        "SELECT split_part(regexp_replace(query, '\\s+', ' ', 'g'), ' ', 1) || ' '
                                || coalesce(substring(regexp_replace(query, '\\s+', ' ', 'g')
                                   from '(?i)(?:INTO|UPDATE|FROM|DELETE FROM) ([a-z_]+)'), '') AS what,
                                sum(calls)::float8
                         FROM pg_stat_statements
                         WHERE dbid = (SELECT oid FROM pg_database WHERE datname = current_database())
                         GROUP BY 1",
                        &[],
                    )
                    .await
                {
                    for r in rows {
                        s.statements.insert(r.get(0), r.get(1));
                    }
                }
                if let Ok(rows) = c
                    .query(
                        "SELECT left(q, 60) || ' [' || length(q) || ']', sum(t)
                         FROM (SELECT regexp_replace(query, '\\s+', ' ', 'g') AS q,
                                      total_exec_time + total_plan_time AS t
                               FROM pg_stat_statements
                               WHERE dbid = (SELECT oid FROM pg_database
                                             WHERE datname = current_database())) s
                         GROUP BY 1",
                        &[],
                    )
                    .await
                {
                    for r in rows {
                        s.statement_ms.insert(r.get(0), r.get(1));
                    }
                }
            }
        }
        s
    }

    /// Where the dispatches `ids` spent their time, from their rows (medians, ms): `queuedAt`
    /// (taken before the insert commits) to the worker's start, the start to the finish, and
    /// the finish to the first webhook attempt. Run after [`CostProbe::finish`], so that its own
    /// statement is not counted in the costs.
    pub async fn stages(&self, ids: &[String]) -> serde_json::Value {
        let Some(db) = &self.db else {
            return serde_json::json!("no database");
        };
        let row = db
            .query_one(
                "WITH d AS (
                     SELECT x.queued_at, x.started_at, x.completed_at,
                            min(a.attempted_at) AS attempted_at
                     FROM dispatches x JOIN delivery_attempts a ON a.dispatch_id = x.id
                     WHERE x.id = ANY($1::text[]::uuid[]) AND x.status = 'completed'
                     GROUP BY x.id
                 )
                 SELECT count(*)::float8,
                        percentile_cont(0.5) WITHIN GROUP
                            (ORDER BY extract(epoch FROM started_at - queued_at))::float8,
                        percentile_cont(0.5) WITHIN GROUP
                            (ORDER BY extract(epoch FROM completed_at - started_at))::float8,
                        percentile_cont(0.5) WITHIN GROUP
                            (ORDER BY extract(epoch FROM attempted_at - completed_at))::float8
                 FROM d",
                &[&ids],
            )
            .await;
        let ms = |s: Option<f64>| s.map(|s| (s * 1e6).round() / 1e3);
        match row {
            Ok(r) => serde_json::json!({
                "dispatches": r.get::<_, f64>(0),
                "queued_to_started_p50_ms": ms(r.get(1)),
                "started_to_completed_p50_ms": ms(r.get(2)),
                "completed_to_first_attempt_p50_ms": ms(r.get(3)),
            }),
            Err(e) => serde_json::json!(format!("stages not read: {e}")),
        }
    }

    /// The costs since [`CostProbe::start`], per dispatch of `n`.
    pub async fn finish(&self, n: usize) -> serde_json::Value {
        let after = self.snapshot().await;
        let b = &self.before;
        let per = |d: f64| d / n as f64;
        let ms = |d: f64| (d * 1000.0 / n as f64 * 1000.0).round() / 1000.0;
        let mut cpu = serde_json::Map::new();
        for (i, (name, _)) in self.services.iter().enumerate() {
            cpu.insert(
                name.clone(),
                ms(after.service_cpu[i] - b.service_cpu[i]).into(),
            );
        }
        cpu.insert(
            "postgres".into(),
            ms(after.postgres_cpu - b.postgres_cpu).into(),
        );
        cpu.insert(
            "rabbitmq".into(),
            ms(after.rabbitmq_cpu - b.rabbitmq_cpu).into(),
        );
        cpu.insert(
            "machine".into(),
            ms(after.machine_cpu - b.machine_cpu).into(),
        );
        let delta = |a: &BTreeMap<String, f64>, b: &BTreeMap<String, f64>| {
            a.iter()
                .map(|(k, v)| (k.clone(), per(v - b.get(k).copied().unwrap_or(0.0))))
                .filter(|(_, v)| *v > 0.0005)
                .map(|(k, v)| (k, serde_json::json!((v * 1000.0).round() / 1000.0)))
                .collect::<serde_json::Map<_, _>>()
        };
        let broker: serde_json::Map<_, _> = after
            .broker
            .iter()
            .map(|(k, v)| {
                let d = per(v - b.broker.get(k).copied().unwrap_or(0.0));
                (
                    (*k).to_owned(),
                    serde_json::json!((d * 1000.0).round() / 1000.0),
                )
            })
            .collect();
        serde_json::json!({
            "cpu_ms_per_dispatch": cpu,
            "postgres_per_dispatch": delta(&after.database, &b.database),
            "postgres_rows_written_per_dispatch_by_table": delta(&after.tables, &b.tables),
            "postgres_statements_per_dispatch": if self.statements {
                serde_json::Value::Object(delta(&after.statements, &b.statements))
            } else {
                serde_json::json!("pg_stat_statements is not loaded")
            },
            "postgres_ms_per_dispatch_by_statement": if self.statements {
                serde_json::Value::Object(delta(&after.statement_ms, &b.statement_ms))
            } else {
                serde_json::json!("pg_stat_statements is not loaded")
            },
            "broker_per_dispatch": broker,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sums_every_series_of_a_metric() {
        let text = "# TYPE dispatcher_messages_acked_total counter\n\
            dispatcher_messages_acked_total{queue=\"a\"} 10\n\
            dispatcher_messages_acked_total{queue=\"b\"} 5\n\
            dispatcher_messages_acked_total_other 99\n\
            dispatcher_ack_frames_total 2\n";
        assert_eq!(metric_sum(text, "dispatcher_messages_acked_total"), 15.0);
        assert_eq!(metric_sum(text, "dispatcher_ack_frames_total"), 2.0);
        assert_eq!(metric_sum(text, "absent_total"), 0.0);
    }
}
