//! The command line: `run` (the default), `check`, `hash-key`, `openapi`, `import aws`; and log
//! setup.

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
        /// Add the managed gateway's `x-amazon-apigateway-*` fields (integrations, authorizers,
        /// CORS, resource policy), for `tollgate import aws` or the managed gateway's import.
        #[arg(long)]
        aws_extensions: bool,
    },
    /// Translate another gateway's definitions into a config (prints the config, reports on
    /// stderr).
    #[command(subcommand)]
    Import(ImportFrom),
}

/// Where `tollgate import` reads from.
#[derive(Debug, Subcommand)]
pub enum ImportFrom {
    /// A REST or HTTP API exported from AWS API Gateway with its extensions, and optionally
    /// its usage plans, API keys and Cognito user pool (docs/migrating.md).
    Aws(Box<ImportAwsArgs>),
}

/// `tollgate import aws`: the input files as the AWS CLI writes them, and rewrites.
#[derive(Debug, clap::Args)]
pub struct ImportAwsArgs {
    /// The API definition: `aws apigateway get-export` (oas30 or swagger, with extensions) or
    /// `aws apigatewayv2 export-api --include-extensions`; JSON or YAML.
    pub export: PathBuf,
    /// `aws apigateway get-usage-plans`.
    #[arg(long, value_name = "FILE")]
    pub usage_plans: Option<PathBuf>,
    /// `aws apigateway get-api-keys --include-values` (values are written as hashes only).
    #[arg(long, value_name = "FILE")]
    pub api_keys: Option<PathBuf>,
    /// `aws apigateway get-usage-plan-keys --usage-plan-id ID`, as `ID=FILE` or a FILE whose
    /// name contains the plan id; repeatable.
    #[arg(long, value_name = "[ID=]FILE")]
    pub usage_plan_keys: Vec<String>,
    /// `aws cognito-idp list-resource-servers`.
    #[arg(long, value_name = "FILE")]
    pub resource_servers: Option<PathBuf>,
    /// `aws cognito-idp describe-user-pool-client`; repeatable.
    #[arg(long, value_name = "FILE")]
    pub user_pool_client: Vec<PathBuf>,
    /// Name of the API entry (default: from the export's title).
    #[arg(long)]
    pub api: Option<String>,
    /// Host name the API is served at; repeatable (default: every host).
    #[arg(long = "host", value_name = "NAME")]
    pub hosts: Vec<String>,
    /// Base path of the API (default: `/STAGE` as in the execute-api URL; `/` for `$default`).
    #[arg(long)]
    pub base_path: Option<String>,
    /// New target of a written upstream, by its name or its original origin; repeatable.
    #[arg(long = "upstream", value_name = "NAME=URL")]
    pub upstreams: Vec<String>,
    /// HTTP address now serving a Lambda function (by ARN, name or integration URI); repeatable.
    #[arg(long = "lambda", value_name = "ARN=URL")]
    pub lambdas: Vec<String>,
    /// `issuer.url` when a user pool is imported (default http://localhost:8080).
    #[arg(long)]
    pub issuer_url: Option<String>,
    /// The listener's bind address (default 0.0.0.0:8080).
    #[arg(long)]
    pub listen: Option<String>,
    /// Write the config here instead of stdout.
    #[arg(short = 'o', long = "output")]
    pub output: Option<PathBuf>,
    /// Write the report here instead of stderr.
    #[arg(long, value_name = "FILE")]
    pub report: Option<PathBuf>,
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
            aws_extensions,
        } => openapi(
            &cli.config,
            api.as_deref(),
            format,
            output.as_deref(),
            aws_extensions,
        ),
        Command::Import(ImportFrom::Aws(args)) => import_aws(args),
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
    aws: bool,
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
    let doc = match crate::openapi::document(&gw.snapshot(), &parsed.file, api, aws) {
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

/// `tollgate import aws`: exit 1 only for unreadable input or a malformed argument; what
/// could not be translated is in the report, and the config is written anyway.
fn import_aws(a: Box<ImportAwsArgs>) -> ExitCode {
    use crate::import_aws::{self as imp, ImportError};
    let read = |p: &std::path::Path| imp::read_document(p).map(|v| (p.to_path_buf(), v));
    let sources = || -> Result<(imp::Sources, imp::Options), ImportError> {
        let mut plan_keys = Vec::new();
        for arg in &a.usage_plan_keys {
            // `ID=FILE`, unless the whole argument is an existing file's name.
            let (id, file) = match arg.split_once('=') {
                Some((id, f)) if !std::path::Path::new(arg).exists() => {
                    (Some(id.to_string()), PathBuf::from(f))
                }
                _ => (None, PathBuf::from(arg)),
            };
            let v = imp::read_document(&file)?;
            plan_keys.push((id, file, v));
        }
        let src = imp::Sources {
            export: read(&a.export)?,
            usage_plans: a.usage_plans.as_deref().map(read).transpose()?,
            api_keys: a.api_keys.as_deref().map(read).transpose()?,
            usage_plan_keys: plan_keys,
            resource_servers: a.resource_servers.as_deref().map(read).transpose()?,
            user_pool_clients: a
                .user_pool_client
                .iter()
                .map(|p| read(p))
                .collect::<Result<_, _>>()?,
        };
        let opts = imp::Options {
            api: a.api.clone(),
            hosts: a.hosts.clone(),
            base_path: a.base_path.clone(),
            upstreams: a
                .upstreams
                .iter()
                .map(|u| imp::key_value(u, "--upstream"))
                .collect::<Result<_, _>>()?,
            lambdas: a
                .lambdas
                .iter()
                .map(|l| imp::key_value(l, "--lambda"))
                .collect::<Result<_, _>>()?,
            issuer_url: a.issuer_url.clone(),
            listen: a.listen.clone(),
        };
        Ok((src, opts))
    };
    let result = sources().and_then(|(src, opts)| imp::import(&src, &opts));
    let done = match result {
        Ok(d) => d,
        Err(e) => {
            eprintln!("tollgate import aws: {e}");
            return ExitCode::FAILURE;
        }
    };
    let config = done.config_text(&a.export);
    let report = done.report_text();
    let written = match &a.output {
        Some(p) => std::fs::write(p, config),
        None => std::io::Write::write_all(&mut std::io::stdout(), config.as_bytes()),
    };
    if let Err(e) = written {
        eprintln!("cannot write the config: {e}");
        return ExitCode::FAILURE;
    }
    let reported = match &a.report {
        Some(p) => std::fs::write(p, report),
        None => std::io::Write::write_all(&mut std::io::stderr(), report.as_bytes()),
    };
    if let Err(e) = reported {
        eprintln!("cannot write the report: {e}");
        return ExitCode::FAILURE;
    }
    ExitCode::SUCCESS
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
