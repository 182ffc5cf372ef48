//! dispatchctl: the operator CLI (migrations, accounts, dead letters).

use clap::{Parser, Subcommand};
use dispatcher_config::{Settings, Sources};
use std::path::PathBuf;
use std::process::ExitCode;

mod listen;

#[derive(Parser)]
#[command(name = "dispatchctl", about = "Operate a Dispatcher deployment")]
struct Cli {
    /// Extra config file, layered before the environment.
    #[arg(long, global = true)]
    config: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Apply pending database migrations.
    Migrate,
    /// Manage accounts.
    Accounts {
        #[command(subcommand)]
        command: AccountsCommand,
    },
    /// Run a tiny webhook receiver that prints each request and checks its signature.
    Listen {
        #[arg(long, default_value_t = 9000)]
        port: u16,
        #[arg(long, default_value = "127.0.0.1")]
        host: String,
        /// The account's `whsec_...` secret; with it each signature is verified.
        #[arg(long, env = "DISPATCHER_WEBHOOK_SECRET")]
        secret: Option<String>,
    },
    /// Inspect dead letters.
    Dlq {
        #[command(subcommand)]
        command: DlqCommand,
    },
    /// Delete finished dispatches (with their documents, deliveries, attempts and provider
    /// events) submitted before a point in time, and dead letters and batch replies as old;
    /// prints the counts as one JSON line. What the dispatch-worker does in the background every
    /// `retention.interval` for `retention.days`.
    Purge {
        /// Age, e.g. `30d`, `12h`, `90m`.
        #[arg(long, value_parser = parse_age, conflicts_with = "before", required_unless_present = "before")]
        older_than: Option<std::time::Duration>,
        /// An RFC 3339 time instead of an age.
        #[arg(long)]
        before: Option<chrono::DateTime<chrono::Utc>>,
        /// Dispatches deleted per transaction (default `retention.batch_size`).
        #[arg(long)]
        batch_size: Option<i64>,
    },
}

fn parse_age(s: &str) -> Result<std::time::Duration, String> {
    humantime::parse_duration(s).map_err(|e| format!("`{s}`: {e} (for example 30d, 12h, 90m)"))
}

#[derive(Subcommand)]
enum AccountsCommand {
    /// Create an account; prints its password and webhook secret once, as one JSON line.
    Create {
        #[arg(long)]
        email: String,
        #[arg(long)]
        password: Option<String>,
    },
    /// Set a new password (generated unless given); prints it once.
    RotatePassword {
        #[arg(long)]
        email: String,
        #[arg(long)]
        password: Option<String>,
    },
}

#[derive(Subcommand)]
enum DlqCommand {
    /// List dead-lettered deliveries and unprocessable messages, newest first.
    List {
        #[arg(long, default_value_t = 100)]
        limit: i64,
    },
    /// Send dead letters again: dead deliveries get a new round of attempts, quarantined
    /// dispatches a new `dispatch.requested` message.
    Replay {
        /// One delivery id or dispatch id (as printed by `dlq list`).
        #[arg(long, conflicts_with = "all", required_unless_present = "all")]
        id: Option<uuid::Uuid>,
        /// Every dead-lettered delivery and dispatch.
        #[arg(long)]
        all: bool,
    },
}

/// Runs the CLI with `args` (including the program name) and the process environment.
pub async fn main_from_args(args: Vec<String>) -> ExitCode {
    let cli = match Cli::try_parse_from(args) {
        Ok(c) => c,
        Err(e) => {
            let _ = e.print();
            return if e.use_stderr() {
                ExitCode::from(2)
            } else {
                ExitCode::SUCCESS
            };
        }
    };
    if let Command::Listen { port, host, secret } = cli.command {
        return match listen::run(&host, port, secret).await {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("error: {e:#}");
                ExitCode::FAILURE
            }
        };
    }
    let settings = match Settings::load(Sources {
        file: cli.config.clone(),
        ..Sources::default()
    }) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(2);
        }
    };
    match run(settings, cli.command).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// Deletes purged dispatches' documents from the object store; a failure is reported on stderr
/// and leaves the object behind (its row is gone already).
async fn delete_objects(store: Option<&dispatcher_storage::Store>, keys: Vec<String>) -> i64 {
    let Some(store) = store else {
        eprintln!(
            "warning: {} purged dispatches had documents in an object store, but storage.url is \
             postgres: their objects are left behind",
            keys.len()
        );
        return 0;
    };
    let (deleted, failed) = store.delete_all(keys).await;
    for (key, e) in failed {
        eprintln!(
            "warning: could not delete {key} from {}: {e}; it is left behind",
            store.location()
        );
    }
    deleted
}

async fn run(settings: Settings, command: Command) -> anyhow::Result<()> {
    let pool = dispatcher_db::connect_pool(&settings.database)?;
    match command {
        Command::Migrate => {
            let applied = dispatcher_db::migrate::run(&pool).await?;
            println!("{}", serde_json::json!({"applied": applied}));
        }
        Command::Accounts { command } => match command {
            AccountsCommand::Create { email, password } => {
                let created = dispatcher_db::accounts::create(&pool, &email, password).await?;
                println!("{}", serde_json::to_string(&created)?);
            }
            AccountsCommand::RotatePassword { email, password } => {
                let pw = dispatcher_db::accounts::rotate_password(&pool, &email, password).await?;
                println!("{}", serde_json::json!({"email": email, "password": pw}));
            }
        },
        Command::Listen { .. } => unreachable!("handled before settings are loaded"),
        Command::Purge {
            older_than,
            before,
            batch_size,
        } => {
            let before = match (before, older_than) {
                (Some(t), _) => t,
                (None, Some(age)) => chrono::Utc::now() - chrono::Duration::from_std(age)?,
                (None, None) => unreachable!("clap requires one"),
            };
            let batch = batch_size.unwrap_or(settings.retention.batch_size).max(1);
            let pool = dispatcher_db::connect_pool(&settings.database)?;
            let store = dispatcher_storage::Store::open(&settings.storage)?;
            let purged = dispatcher_db::retention::purge(
                &pool,
                before,
                batch,
                settings.retention.pause,
                &tokio_util::sync::CancellationToken::new(),
                |keys| delete_objects(store.as_ref(), keys),
            )
            .await?;
            let mut line = serde_json::to_value(purged)?;
            line["before"] = serde_json::json!(before);
            println!("{line}");
        }
        Command::Dlq { command } => match command {
            DlqCommand::Replay { id, all: _ } => {
                let queue = dispatcher_mq::Topology::from_settings(&settings).dispatch_queue();
                let replayed = dispatcher_db::dead_letters::replay(&pool, &queue, None, id).await?;
                if id.is_some() && replayed == Default::default() {
                    anyhow::bail!("no dead-lettered delivery or dispatch with that id");
                }
                println!(
                    "{}",
                    serde_json::json!({"replayed": replayed.deliveries, "dispatches": replayed.dispatches})
                );
            }
            DlqCommand::List { limit } => {
                for d in dispatcher_db::deliveries::list_dead(&pool, limit).await? {
                    println!(
                        "{}",
                        serde_json::json!({
                            "kind": "delivery", "id": d.id, "accountId": d.account_id,
                            "dispatchId": d.dispatch_id, "url": d.url, "attempts": d.attempts,
                            "lastError": d.last_error, "deadAt": d.updated_at,
                        })
                    );
                }
                for d in dispatcher_db::dead_letters::list(&pool, limit).await? {
                    println!(
                        "{}",
                        serde_json::json!({
                            "kind": "message", "id": d.id, "queue": d.queue,
                            "messageId": d.message_id, "dispatchId": d.dispatch_id, "reason": d.reason,
                            "createdAt": d.created_at,
                        })
                    );
                }
            }
        },
    }
    Ok(())
}
