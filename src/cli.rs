//! The command line: parses arguments, sets up logging and the runtime, and maps outcomes to exit
//! codes (0 ok, 1 runtime failure, 2 bad config or usage).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Parser, Subcommand, ValueEnum};

use crate::config::Config;
use crate::server::{ConfigFile, Server};
use crate::{demo, shutdown};

#[derive(Parser)]
#[command(
    name = "tidegate",
    version,
    about = "An HTTP reverse proxy for safe Kubernetes rolling updates"
)]
struct Cli {
    /// Log line format.
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Text)]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Command,
}

#[derive(Clone, Copy, ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

#[derive(Subcommand)]
enum Command {
    /// Run the proxy until SIGTERM or SIGINT.
    Proxy {
        /// The YAML config file; re-read when it changes.
        #[arg(long)]
        config: PathBuf,
    },
    /// Check a config file: exit 0 with a summary, or 2 naming what is wrong.
    Validate {
        #[arg(long)]
        config: PathBuf,
    },
    /// Run backends and tidegate in one process on loopback, with nothing installed.
    Demo {
        /// Where the demo proxy listens.
        #[arg(long, default_value = "127.0.0.1:8080")]
        listen: SocketAddr,
        /// Where the demo admin API listens.
        #[arg(long, default_value = "127.0.0.1:9901")]
        admin: SocketAddr,
    },
}

const EXIT_RUNTIME: u8 = 1;
const EXIT_CONFIG: u8 = 2;

/// Runs the command line; the binary's whole `main`.
pub fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(error) => {
            let _ = error.print();
            return ExitCode::from(u8::try_from(error.exit_code()).unwrap_or(EXIT_CONFIG));
        }
    };
    init_logging(cli.log_format);
    match cli.command {
        Command::Validate { config } => match Config::load(&config) {
            Ok(config) => {
                println!("{}", config.summary());
                ExitCode::SUCCESS
            }
            Err(error) => {
                eprintln!("error: {error}");
                ExitCode::from(EXIT_CONFIG)
            }
        },
        Command::Proxy { config } => proxy(&config),
        Command::Demo { listen, admin } => block_on(demo::run(listen, admin)),
    }
}

fn proxy(path: &Path) -> ExitCode {
    let contents = match std::fs::read(path) {
        Ok(contents) => contents,
        Err(source) => {
            eprintln!(
                "error: {}",
                crate::config::ConfigError::Read {
                    path: path.to_owned(),
                    source
                }
            );
            return ExitCode::from(EXIT_CONFIG);
        }
    };
    let config = match std::str::from_utf8(&contents)
        .map_err(|e| format!("invalid config {}: not UTF-8: {e}", path.display()))
        .and_then(|text| Config::parse(text, path).map_err(|e| e.to_string()))
    {
        Ok(config) => config,
        Err(error) => {
            eprintln!("error: {error}");
            return ExitCode::from(EXIT_CONFIG);
        }
    };
    let file = ConfigFile {
        path: path.to_owned(),
        contents,
    };
    block_on(async move {
        let server = Server::bind(&config).await?;
        tracing::info!(
            listen = %server.local_addr(),
            admin = %server.admin_addr(),
            "tidegate proxy started"
        );
        let (trigger, listener) = shutdown::channel();
        tokio::spawn(async move {
            let signal = shutdown::signal().await;
            tracing::info!(signal, "shutting down");
            trigger.fire();
        });
        server.run(config, Some(file), listener).await?;
        tracing::info!("stopped");
        Ok::<(), crate::server::ServerError>(())
    })
}

fn block_on<E: std::fmt::Display>(
    future: impl std::future::Future<Output = Result<(), E>>,
) -> ExitCode {
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("error: cannot start the runtime: {error}");
            return ExitCode::from(EXIT_RUNTIME);
        }
    };
    match runtime.block_on(future) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("error: {error}");
            ExitCode::from(EXIT_RUNTIME)
        }
    }
}

fn init_logging(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}
