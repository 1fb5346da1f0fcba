//! Subcommands and exit codes; nothing else. Exit codes: 0 ok, 1 runtime
//! failure, 2 usage or config error.

use crate::config::Config;
use clap::{Parser, Subcommand};
use std::path::PathBuf;

pub use crate::exit::{EXIT_FAILURE, EXIT_OK, EXIT_USAGE};

#[derive(Parser, Debug)]
#[command(
    name = "ferry",
    propagate_version = true,
    version,
    about = "Store-and-forward telemetry producer: local events into a durable SQLite outbox, out to Kafka",
    after_help = "Exit codes: 0 ok, 1 runtime failure, 2 usage or config error.\n\
                  Environment: FERRY_BROKERS (comma list), FERRY_DATA_DIR, FERRY_NODE_ID, FERRY_DURABILITY, FERRY_LOG / RUST_LOG."
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Run the daemon (what systemd starts).
    Run {
        /// Config file (default: /etc/ferry/ferry.toml if present, else built-in defaults).
        #[arg(short, long, value_name = "FILE")]
        config: Option<PathBuf>,
    },
    /// Store one event, or one event per stdin line when VALUE is absent.
    /// Exits 0 only after every event is durably stored.
    Send {
        #[arg(short, long, value_name = "FILE")]
        config: Option<PathBuf>,
        /// Destination topic.
        #[arg(short, long)]
        topic: String,
        /// Event key (decides the Kafka partition).
        #[arg(short, long)]
        key: Option<String>,
        /// Header NAME=VALUE; repeatable.
        #[arg(short = 'H', long = "header", value_name = "NAME=VALUE")]
        headers: Vec<String>,
        /// Event timestamp in milliseconds since the epoch (default: when stored).
        #[arg(long, value_name = "MS")]
        timestamp: Option<i64>,
        /// The event value; without it, every stdin line is one event.
        value: Option<String>,
    },
    /// Show uplink state, rates, outbox backlog and counters.
    Status {
        #[arg(short, long, value_name = "FILE")]
        config: Option<PathBuf>,
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Inspect, re-queue or delete dead letters (events Kafka refused for good).
    Dlq {
        #[command(subcommand)]
        action: DlqAction,
    },
    /// The fleet's state from the heartbeat topic: one line per gateway,
    /// the worst first, then a summary.
    Fleet {
        #[arg(short, long, value_name = "FILE")]
        config: Option<PathBuf>,
        /// The heartbeat topic (default: `[heartbeat] topic`).
        #[arg(long)]
        topic: Option<String>,
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Validate the config and print the effective configuration.
    CheckConfig {
        #[arg(short, long, value_name = "FILE")]
        config: Option<PathBuf>,
        /// Also connect to the brokers (TLS, SASL as configured) and look up
        /// the topics the config names; exit 1 if anything does not work.
        #[arg(long)]
        connect: bool,
    },
}

#[derive(Subcommand, Debug)]
enum DlqAction {
    /// List dead letters with reason, Kafka error, attempts and times.
    List {
        #[arg(short, long, value_name = "FILE")]
        config: Option<PathBuf>,
        #[arg(long)]
        json: bool,
        /// Only dead letters of this (original) topic.
        #[arg(long)]
        topic: Option<String>,
    },
    /// Send dead letters through ferry again (the daemon must be running);
    /// each is removed once ferry has stored it anew.
    Replay {
        #[arg(short, long, value_name = "FILE")]
        config: Option<PathBuf>,
        #[arg(long)]
        topic: Option<String>,
        /// Dead letter ids (from `list`); repeatable.
        #[arg(long = "id")]
        ids: Vec<i64>,
    },
    /// Delete dead letters.
    Purge {
        #[arg(short, long, value_name = "FILE")]
        config: Option<PathBuf>,
        #[arg(long)]
        topic: Option<String>,
        #[arg(long = "id")]
        ids: Vec<i64>,
        /// Delete every dead letter (needed when no --topic/--id is given).
        #[arg(long)]
        all: bool,
    },
}

pub fn main() -> i32 {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            let _ = e.print();
            return if e.use_stderr() { EXIT_USAGE } else { EXIT_OK };
        }
    };
    init_logging();
    // Commands whose output is read by people and pipes (`ferry status |
    // head`) end quietly when the reader goes away, as Unix tools do, rather
    // than panicking on a closed stdout. Not for commands that write to
    // ferry's socket, where a closed connection must be a clear error.
    let prints_only = matches!(
        cli.command,
        Command::Status { .. }
            | Command::Fleet { .. }
            | Command::CheckConfig { .. }
            | Command::Dlq {
                action: DlqAction::List { .. },
                ..
            }
    );
    if prints_only {
        // SAFETY: restoring the default disposition of one signal, before
        // any other thread exists.
        unsafe {
            libc::signal(libc::SIGPIPE, libc::SIG_DFL);
        }
    }
    match cli.command {
        Command::Run { config } => {
            let source = config.clone();
            with_config(config, |c| crate::daemon::run(c, source))
        }
        Command::Send {
            config,
            topic,
            key,
            headers,
            timestamp,
            value,
        } => with_config(config, |c| {
            crate::client::send(
                &c,
                &crate::client::SendArgs {
                    topic,
                    key,
                    headers,
                    timestamp,
                    value,
                },
            )
        }),
        Command::Status { config, json } => {
            with_config(config, |c| crate::client::status(&c, json))
        }
        Command::Dlq { action } => match action {
            DlqAction::List {
                config,
                json,
                topic,
            } => with_config(config, |c| crate::client::dlq_list(&c, topic, json)),
            DlqAction::Replay { config, topic, ids } => {
                with_config(config, |c| crate::client::dlq_replay(&c, topic, ids))
            }
            DlqAction::Purge {
                config,
                topic,
                ids,
                all,
            } => with_config(config, |c| crate::client::dlq_purge(&c, topic, ids, all)),
        },
        Command::Fleet {
            config,
            topic,
            json,
        } => with_config(config, |c| crate::fleet::run(&c, topic, json)),
        Command::CheckConfig { config, connect } => with_config(config, |c| {
            print!("{}", c.to_toml());
            if connect {
                crate::client::check_connect(&c)
            } else {
                EXIT_OK
            }
        }),
    }
}

fn with_config(path: Option<PathBuf>, f: impl FnOnce(Config) -> i32) -> i32 {
    match Config::load(path.as_deref()) {
        Ok(c) => f(c),
        Err(e) => {
            eprintln!("ferry: {e}");
            EXIT_USAGE
        }
    }
}

/// env_logger on stderr, `FERRY_LOG` (or `RUST_LOG`) to filter, info by
/// default. Under journald (`JOURNAL_STREAM` set) print `<N>` priority
/// prefixes instead of timestamps so `journalctl -p warning` works.
fn init_logging() {
    use std::io::Write;
    let filter = std::env::var("FERRY_LOG")
        .or_else(|_| std::env::var("RUST_LOG"))
        .unwrap_or_else(|_| "info".to_string());
    let mut b = env_logger::Builder::new();
    b.parse_filters(&filter);
    if std::env::var_os("JOURNAL_STREAM").is_some() {
        b.format(|buf, record| {
            let prio = match record.level() {
                log::Level::Error => 3,
                log::Level::Warn => 4,
                log::Level::Info => 6,
                log::Level::Debug | log::Level::Trace => 7,
            };
            writeln!(buf, "<{prio}>{}", record.args())
        });
    }
    let _ = b.try_init();
}
