//! The command line: `run` (the default), `check`, `hash-key`, `openapi`; and log setup.

use std::io::Read;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand, ValueEnum};

/// tollgate: a standalone reverse-proxy API gateway.
#[derive(Debug, Parser)]
#[command(name = "tollgate", version, about)]
pub struct Cli {
    /// Config file (else $TOLLGATE_CONFIG, else ./gateway.yaml); before or after the command.
    #[arg(
        short = 'c',
        long = "config",
        env = "TOLLGATE_CONFIG",
        default_value = "gateway.yaml",
        global = true
    )]
    pub config: PathBuf,
    /// Log format on stderr.
    #[arg(long, value_enum, default_value_t = LogFormat::Json, global = true)]
    pub log_format: LogFormat,
    /// Log level or filter (`info`, `debug`, `tollgate=debug`); default from RUST_LOG, else info.
    #[arg(long, global = true)]
    pub log_level: Option<String>,
    /// What to do (default: run).
    #[command(subcommand)]
    pub command: Option<Command>,
}

/// Log output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    /// One JSON object per line.
    Json,
    /// Human-readable lines.
    Text,
}

/// Subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Serve (the default).
    Run,
    /// Validate the config and every file it names; print a summary or every error.
    Check,
    /// Print the `sha256:<hex>` form of an API key (from the argument or stdin).
    HashKey {
        /// The key; read from stdin when absent.
        key: Option<String>,
    },
    /// Write one API of the config as an OpenAPI 3.1 document (for SDK generators).
    Openapi {
        /// The API: its name in `apis`, or `default` (needed when the config has several).
        #[arg(long)]
        api: Option<String>,
        /// Output format.
        #[arg(long, value_enum, default_value_t = DocFormat::Json)]
        format: DocFormat,
        /// Write here instead of stdout.
        #[arg(short = 'o', long = "output")]
        output: Option<PathBuf>,
    },
}

/// Format of a written document.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum DocFormat {
    /// JSON.
    Json,
    /// YAML.
    Yaml,
}

/// Installs the global subscriber writing to stderr through [`crate::logs::BatchWriter`]; the
/// returned guard writes out waiting lines when dropped, so `main` holds it to the end.
fn init_logs(format: LogFormat, level: Option<&str>) -> crate::logs::LogGuard<std::io::Stderr> {
    use tracing_subscriber::EnvFilter;
    let (writer, guard) =
        crate::logs::BatchWriter::new(std::io::stderr(), crate::logs::FLUSH_INTERVAL);
    let filter = match level {
        Some(l) => EnvFilter::new(l),
        None => EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info")),
    };
    let b = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(writer);
    let _ = match format {
        LogFormat::Json => b
            .json()
            .flatten_event(true)
            .with_current_span(false)
            .try_init(),
        LogFormat::Text => b.try_init(),
    };
    guard
}

/// Entry point of the binary.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    let _logs = init_logs(cli.log_format, cli.log_level.as_deref());
    match cli.command.unwrap_or(Command::Run) {
        Command::Check => check(&cli.config),
        Command::HashKey { key } => hash_key(key),
        Command::Openapi {
            api,
            format,
            output,
        } => openapi(&cli.config, api.as_deref(), format, output.as_deref()),
        Command::Run => {
            let rt = match tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()
            {
                Ok(rt) => rt,
                Err(e) => {
                    eprintln!("cannot start the runtime: {e}");
                    return ExitCode::FAILURE;
                }
            };
            rt.block_on(run(cli.config))
        }
    }
}

/// `tollgate openapi`: loads the config as `check` does (exit 1 with its errors), then writes
/// the document (exit 1 for an unknown or missing `--api`, or an unwritable output).
fn openapi(
    path: &std::path::Path,
    api: Option<&str>,
    format: DocFormat,
    output: Option<&std::path::Path>,
) -> ExitCode {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let _guard = rt.enter();
    let (gw, parsed) = match (
        crate::gateway::Gateway::load(path, false),
        crate::config::read(path),
    ) {
        (Ok(gw), Ok(parsed)) => (gw, parsed),
        (Err(errs), _) => {
            for e in errs {
                println!("{e}");
            }
            return ExitCode::FAILURE;
        }
        (_, Err(e)) => {
            println!("{e}");
            return ExitCode::FAILURE;
        }
    };
    let doc = match crate::openapi::document(&gw.snapshot(), &parsed.file, api) {
        Ok(d) => d,
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::FAILURE;
        }
    };
    let text = match format {
        DocFormat::Json => serde_json::to_string_pretty(&doc).expect("a JSON value serialises"),
        DocFormat::Yaml => serde_norway::to_string(&doc).expect("a JSON value serialises"),
    } + "\n";
    let written = match output {
        Some(p) => std::fs::write(p, text),
        None => std::io::Write::write_all(&mut std::io::stdout(), text.as_bytes()),
    };
    match written {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("cannot write the document: {e}");
            ExitCode::FAILURE
        }
    }
}

fn check(path: &std::path::Path) -> ExitCode {
    // Compiling may create (idle) runtime objects; a current-thread runtime suffices.
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let _guard = rt.enter();
    match crate::gateway::Gateway::load(path, false) {
        Ok(gw) => {
            let s = gw.snapshot();
            let mut apis: Vec<&str> = s.apis.iter().map(|a| &*a.name).collect();
            apis.sort_unstable();
            apis.dedup();
            println!(
                "{}: OK: {} routes, {} APIs, {} listeners, admin on {}",
                path.display(),
                s.routes.len(),
                apis.len(),
                s.listeners.len(),
                s.admin.bind
            );
            ExitCode::SUCCESS
        }
        Err(errs) => {
            for e in errs {
                println!("{e}");
            }
            ExitCode::FAILURE
        }
    }
}

fn hash_key(key: Option<String>) -> ExitCode {
    let key = match key {
        Some(k) => k,
        None => {
            let mut s = String::new();
            if std::io::stdin().read_to_string(&mut s).is_err() {
                eprintln!("cannot read the key from stdin");
                return ExitCode::FAILURE;
            }
            s.trim_end_matches(['\n', '\r']).to_string()
        }
    };
    if key.is_empty() {
        eprintln!("the key is empty");
        return ExitCode::FAILURE;
    }
    println!("sha256:{}", crate::util::sha256_hex(key.as_bytes()));
    ExitCode::SUCCESS
}

async fn run(config: PathBuf) -> ExitCode {
    let running = match crate::server::start(&config).await {
        Ok(r) => r,
        Err(e) => {
            tracing::error!(error = %e.to_string().trim_end(), "tollgate cannot start");
            eprintln!("{}", e.to_string().trim_end());
            return ExitCode::FAILURE;
        }
    };
    let gw = running.gateway.clone();
    let mut hup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()).ok();
    let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("cannot handle SIGTERM: {e}");
            return ExitCode::FAILURE;
        }
    };
    loop {
        tokio::select! {
            _ = term.recv() => break,
            _ = tokio::signal::ctrl_c() => break,
            Some(()) = async { match hup.as_mut() { Some(h) => h.recv().await, None => std::future::pending().await } } => {
                let _ = gw.reload();
            }
        }
    }
    tracing::info!("shutting down");
    running.shutdown(None).await;
    ExitCode::SUCCESS
}
