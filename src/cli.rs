//! The command line: parses arguments, sets up logging and the runtime, and maps outcomes to exit
//! codes (0 ok, 1 runtime failure, 2 bad config or usage).

use std::net::SocketAddr;
use std::num::NonZeroUsize;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand, ValueEnum};
use http::{HeaderName, HeaderValue};

use crate::config::Config;
use crate::loadtest::{
    parse_body, parse_duration, parse_header, parse_method, Plan, PlanError, Protocol, Stage,
    Target, Template, VersionFrom,
};
use crate::server::{ConfigFile, Server};
use crate::{demo, loadtest, shutdown};

#[derive(Parser)]
#[command(
    name = "tidegate",
    version,
    about = "An HTTP reverse proxy for safe Kubernetes rolling updates"
)]
struct Cli {
    /// Log line format.
    #[arg(
        long,
        global = true,
        value_enum,
        default_value_t = LogFormat::Text,
        env = "TIDEGATE_LOG_FORMAT"
    )]
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
        #[arg(long, env = "TIDEGATE_CONFIG")]
        config: PathBuf,
    },
    /// Check a config file: exit 0 with a summary (and warnings on stderr), or 2 naming what is
    /// wrong.
    Validate {
        #[arg(long, env = "TIDEGATE_CONFIG")]
        config: PathBuf,
    },
    /// Watch a rolling update under load: a simulated Deployment, tidegate and the load tester in
    /// one process on loopback, with nothing installed. Exits 1 if any request failed.
    Demo(DemoArgs),
    /// Send steady HTTP load and report every outcome, version by version; exit 1 when more than
    /// --max-failures requests fail.
    // Boxed: its many options would make every `Command` as large as it.
    Loadtest(Box<LoadtestArgs>),
}

#[derive(clap::Args)]
struct DemoArgs {
    /// Where the demo proxy listens.
    #[arg(long, default_value = "127.0.0.1:8080")]
    listen: SocketAddr,
    /// Where the demo admin API listens.
    #[arg(long, default_value = "127.0.0.1:9901")]
    admin: SocketAddr,
    /// How long the story takes; pod start-up and every phase scale with it.
    #[arg(long, default_value = "60s", value_parser = parse_duration)]
    duration: Duration,
    /// The short story: --duration 15s.
    #[arg(long, conflicts_with = "duration")]
    fast: bool,
    /// Requests per second of the built-in load.
    #[arg(long, default_value_t = 200)]
    rate: u32,
    /// Where to write the HTML report.
    #[arg(long, default_value = "tidegate-demo-report.html")]
    report: PathBuf,
    /// Write no HTML report.
    #[arg(long)]
    no_report: bool,
    /// Also write the load's data as JSON.
    #[arg(long)]
    json: Option<PathBuf>,
    /// Keep the proxy and its pods running after the story, as a playground, until Ctrl-C.
    #[arg(long)]
    serve: bool,
    /// Turn off tidegate's retries and outlier ejection, to see what the rollout costs without them.
    #[arg(long)]
    unprotected: bool,
}

#[derive(clap::Args)]
struct LoadtestArgs {
    /// The http:// or https:// URL to send requests to; several are sent in turn (round-robin),
    /// and must share scheme, host and port.
    #[arg(value_parser = Target::parse, required_unless_present = "targets")]
    urls: Vec<Target>,
    /// Requests from a file in vegeta's targets format (METHOD URL, header lines, an optional
    /// @BODY-FILE line, a blank line between targets), sent in turn.
    #[arg(long, value_name = "FILE", conflicts_with = "urls")]
    targets: Option<PathBuf>,
    /// Requests started per second on a fixed schedule (late ones are counted, never skipped);
    /// 0 = closed loop, each connection sending back to back.
    #[arg(long, default_value_t = 100)]
    rate: u32,
    /// How long to start requests for (250ms, 60s, 2m).
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    duration: Duration,
    /// A ramping open-loop rate instead of --rate/--duration, k6 style: DURATION:RATE stages,
    /// each moving linearly from the previous target (0 at first), such as
    /// 10s:100,30s:1000,10s:0; a 0s stage jumps.
    #[arg(long, value_name = "STAGES", value_parser = |s: &str| Stage::parse_list(s).map(Stages),
          conflicts_with_all = ["rate", "duration"])]
    stages: Option<Stages>,
    /// Connections (with --http2: concurrent streams): the most requests in flight at once.
    #[arg(long, default_value = "32")]
    connections: NonZeroUsize,
    /// Speak HTTP/2 instead of HTTP/1.1 (prior knowledge over http://, ALPN h2 over https://).
    #[arg(long)]
    http2: bool,
    /// https://: accept any certificate (a self-signed test one); the handshake is still checked.
    #[arg(long, conflicts_with = "cacert")]
    insecure: bool,
    /// https://: trust the CA certificates in this PEM file instead of the system's roots.
    #[arg(long, value_name = "FILE")]
    cacert: Option<PathBuf>,
    /// Connect to this address instead of resolving the URL's host, which is still what the
    /// requests (Host, :authority) and TLS (SNI, the certificate's name) say: an ingress by its IP.
    #[arg(long, value_name = "IP:PORT")]
    connect_to: Option<std::net::SocketAddr>,
    /// The request method.
    #[arg(long, default_value = "GET", value_parser = parse_method)]
    method: http::Method,
    /// Every request's body: the text given, or a file's bytes with @FILE.
    #[arg(long, value_name = "TEXT|@FILE", value_parser = parse_body)]
    body: Option<bytes::Bytes>,
    /// An extra request header; repeatable.
    #[arg(long = "header", value_name = "NAME:VALUE", value_parser = parse_header)]
    headers: Vec<(HeaderName, HeaderValue)>,
    /// Where the serving version is read: header:NAME or body-regex:REGEX (capture group 1)
    /// [default: header:x-tidegate-version].
    #[arg(long, value_name = "SOURCE", value_parser = VersionFrom::parse)]
    version_from: Option<VersionFrom>,
    /// Per request, from sending (connect included) to the end of the body.
    #[arg(long, default_value = "5s", value_parser = parse_duration)]
    timeout: Duration,
    /// Write a self-contained HTML report with charts to this file.
    #[arg(long, value_name = "FILE")]
    report: Option<PathBuf>,
    /// Write the summary and the per-second series as JSON to this file.
    #[arg(long, value_name = "FILE")]
    json: Option<PathBuf>,
    /// Write every request as a CSV row to this file: intended and actual start, end, latency,
    /// service time, outcome and version.
    #[arg(long, value_name = "FILE")]
    csv: Option<PathBuf>,
    /// A labelled vertical line on the report's charts, such as `12s:set image v2`; repeatable.
    #[arg(long = "mark", value_name = "AT:LABEL", value_parser = loadtest::Mark::parse)]
    marks: Vec<loadtest::Mark>,
    /// A limit the run must stay within, k6 style: p99<250ms, failures<0.1%, v2:p99<300ms
    /// (one version's latency); repeatable. Exit 1 naming every threshold crossed.
    #[arg(long = "threshold", value_name = "LIMIT", value_parser = loadtest::threshold::Threshold::parse)]
    thresholds: Vec<loadtest::threshold::Threshold>,
    /// Exit 1 when more requests than this fail (5xx, connect, reset, timeout, overdue, other).
    #[arg(long, default_value_t = 0)]
    max_failures: u64,
    /// No live progress line (it is also hidden when stderr is not a terminal).
    #[arg(long, short)]
    quiet: bool,
}

/// `--stages`, one value holding the whole list (clap would read a bare `Vec` as repeated flags).
#[derive(Clone)]
struct Stages(Vec<Stage>);

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
    let default_level = match cli.command {
        Command::Demo(_) | Command::Loadtest(_) => "warn",
        _ => "info",
    };
    init_logging(cli.log_format, default_level);
    match cli.command {
        Command::Validate { config } => match Config::load(&config) {
            Ok(config) => {
                for warning in config.warnings() {
                    eprintln!("warning: {warning}");
                }
                println!("{}", config.summary());
                ExitCode::SUCCESS
            }
            Err(error) => {
                eprintln!("error: {error}");
                ExitCode::from(EXIT_CONFIG)
            }
        },
        Command::Proxy { config } => proxy(&config),
        Command::Demo(args) => run_demo(args),
        Command::Loadtest(mut args) => match loadtest_plan(&mut args) {
            Ok(plan) => block_on(run_loadtest(plan, *args)),
            Err(error) => {
                eprintln!("error: {error}");
                ExitCode::from(EXIT_CONFIG)
            }
        },
    }
}

/// The demo exits 1 when any request failed: a dropped request is what it exists to disprove.
fn run_demo(args: DemoArgs) -> ExitCode {
    let options = demo::Options {
        listen: args.listen,
        admin: args.admin,
        duration: if args.fast {
            Duration::from_secs(15)
        } else {
            args.duration
        },
        rate: args.rate,
        report: (!args.no_report).then_some(args.report),
        json: args.json,
        serve: args.serve,
        unprotected: args.unprotected,
    };
    block_on(demo::run(options))
}

/// The plan the arguments describe; a bad targets file or mixed origins is a usage error (exit 2),
/// like a bad flag.
fn loadtest_plan(args: &mut LoadtestArgs) -> Result<Plan, PlanError> {
    let templates = match &args.targets {
        Some(path) => loadtest::read_targets(path)?,
        None => args.urls.drain(..).map(Template::url).collect(),
    };
    let Some(first) = templates.first() else {
        return Err(PlanError::Url {
            url: String::new(),
            reason: "no URL given".to_owned(),
        });
    };
    let mut plan = Plan::new(first.target.clone());
    plan.rate = args.rate;
    plan.duration = args.duration;
    plan.stages = args.stages.take().map(|s| s.0).unwrap_or_default();
    plan.connections = args.connections;
    if args.http2 {
        plan.protocol = Protocol::Http2;
    }
    plan.method = args.method.clone();
    if let Some(body) = args.body.take() {
        plan.body = body;
    }
    if templates.len() > 1 || args.targets.is_some() {
        plan.set_templates(templates, args.targets.is_none())?;
    }
    plan.headers.extend(args.headers.drain(..));
    if let Some(version_from) = args.version_from.take() {
        plan.version_from = version_from;
    }
    plan.timeout = args.timeout;
    plan.connect_to = args.connect_to;
    plan.csv = args.csv.clone();
    plan.verify = match (args.insecure, args.cacert.take()) {
        (true, _) => loadtest::Verify::Insecure,
        (false, Some(file)) => loadtest::Verify::CaFile(file),
        (false, None) => loadtest::Verify::System,
    };
    Ok(plan)
}

/// Runs the load (Ctrl-C or SIGTERM ends it early), prints the summary, writes the files, and
/// fails when more requests failed than allowed.
async fn run_loadtest(plan: Plan, args: LoadtestArgs) -> Result<(), loadtest::LoadtestError> {
    let (trigger, stop) = shutdown::channel();
    tokio::spawn(async move {
        shutdown::signal().await;
        trigger.fire();
    });
    let length = plan.length();
    let running = loadtest::start(plan, stop).await?;
    let progress = loadtest::Progress::start(running.live(), length, args.quiet);
    let mut summary = running.finish().await?;
    progress.finish().await;
    summary.marks.extend(args.marks);
    let judged = summary.judge(&args.thresholds);
    let mut printed = summary.to_string();
    if let Some(path) = &args.json {
        summary.write_json(path)?;
        printed.push_str(&format!("  json      {}\n", path.display()));
    }
    if let Some(path) = &args.csv {
        printed.push_str(&format!("  csv       {}\n", path.display()));
    }
    if let Some(path) = &args.report {
        loadtest::report::write(&summary, "tidegate loadtest", path)?;
        printed.push_str(&format!("  report    {}\n", path.display()));
    }
    // A closed stdout (`| head`) must not turn a passing run into a panic.
    let _ = std::io::Write::write_all(&mut std::io::stdout(), printed.as_bytes());
    judged?;
    summary.check(args.max_failures)
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
    warn_if_few_descriptors(config.limits.max_connections);
    block_on(async move {
        for warning in config.warnings() {
            tracing::warn!("{warning}");
        }
        let server = Server::bind(&config).await?;
        tracing::info!(
            listen = %server.local_addr(),
            admin = %server.admin_addr(),
            runtime = runtime_name(),
            workers = tokio::runtime::Handle::current().metrics().num_workers(),
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

/// A current-thread runtime when the process may use only one core (a one-CPU container,
/// `taskset`, or `TOKIO_WORKER_THREADS=1`), else one worker per core, or `TOKIO_WORKER_THREADS`
/// workers when set. On one core a work-stealing worker has no one to steal from, and its
/// scheduler bookkeeping (an injection queue, clock reads for its own statistics) costs about 500
/// instructions per proxied request. linkerd2-proxy makes the same choice. The variable is how a
/// pod without a CPU limit sizes the runtime from its CPU request (`deploy/`: the downward API),
/// instead of starting one worker per core of the node.
fn runtime_builder() -> Result<tokio::runtime::Builder, String> {
    let workers = match std::env::var(WORKER_THREADS_VAR) {
        Ok(value) => value
            .trim()
            .parse::<usize>()
            .ok()
            .filter(|&n| n > 0)
            .ok_or_else(|| {
                format!(
                    "{WORKER_THREADS_VAR} must be a whole number of threads above 0, got {value:?}"
                )
            })?,
        Err(_) => std::thread::available_parallelism().map_or(1, std::num::NonZero::get),
    };
    Ok(match workers {
        1 => tokio::runtime::Builder::new_current_thread(),
        n => {
            let mut builder = tokio::runtime::Builder::new_multi_thread();
            builder.worker_threads(n);
            builder
        }
    })
}

/// Tokio's own name for the worker count; [`runtime_builder`] reads it first, so that a value of
/// 1 also picks the single-threaded runtime and a bad value is an error instead of a panic.
const WORKER_THREADS_VAR: &str = "TOKIO_WORKER_THREADS";

/// Names the runtime [`runtime_builder`] chose, for the start-up log line.
fn runtime_name() -> &'static str {
    match tokio::runtime::Handle::current().runtime_flavor() {
        tokio::runtime::RuntimeFlavor::CurrentThread => "single-threaded",
        _ => "multi-threaded",
    }
}

fn block_on<E: std::fmt::Display>(
    future: impl std::future::Future<Output = Result<(), E>>,
) -> ExitCode {
    let mut builder = match runtime_builder() {
        Ok(builder) => builder,
        Err(error) => {
            eprintln!("error: {error}");
            return ExitCode::from(EXIT_CONFIG);
        }
    };
    let runtime = match builder.enable_all().build() {
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

/// Descriptors beyond the client connections: upstream pools, the admin API, watches, files.
const DESCRIPTOR_HEADROOM: u64 = 1024;

/// Warns when the open-files limit (raised to its hard maximum by `main`) cannot hold
/// `limits.max_connections` client connections and room for upstream ones: accepts and connects
/// would fail for everyone before the limit that is meant to stop them.
fn warn_if_few_descriptors(max_connections: usize) {
    let Some(soft) = open_files_limit() else {
        return;
    };
    let needed = (max_connections as u64).saturating_add(DESCRIPTOR_HEADROOM);
    if soft < needed {
        tracing::warn!(
            open_files = soft,
            needed,
            max_connections,
            "the open-files limit is below what limits.max_connections needs: raise it (ulimit -n, LimitNOFILE) or lower limits.max_connections"
        );
    }
}

/// The soft open-files limit, from `/proc/self/limits` (`None` when unlimited or unknown).
fn open_files_limit() -> Option<u64> {
    let limits = std::fs::read_to_string("/proc/self/limits").ok()?;
    let line = limits.lines().find(|l| l.starts_with("Max open files"))?;
    line.split_whitespace().nth(3)?.parse().ok()
}

/// `RUST_LOG` overrides `default` (the demo and the load tester print their own story, so their
/// default is warnings only).
fn init_logging(format: LogFormat, default: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        // Colour codes only for a person at a terminal, not in a file or a container log.
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Text => builder.init(),
        // Flat: `{"timestamp":…,"level":…,"message":…,"status":502,…}`, as log pipelines index it.
        LogFormat::Json => builder.json().flatten_event(true).init(),
    }
}
