//! What every part of an import shares: the inputs, the options, the findings being written,
//! the upstreams given out, and the small helpers that build YAML and names.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use serde_json::Value;
use serde_norway::Value as Y;

/// `issuer.url` of the written config (when a user pool is imported) unless `--issuer-url`
/// says otherwise: the listener above, as seen from the same machine.
pub const DEFAULT_ISSUER_URL: &str = "http://localhost:8080";

/// The documents to translate, each already read (see [`super::read_document`]).
#[derive(Debug, Default)]
pub struct Sources {
    /// The API definition (OpenAPI 3 or Swagger 2) and the file it came from.
    pub export: (PathBuf, Value),
    /// `aws apigateway get-usage-plans`.
    pub usage_plans: Option<(PathBuf, Value)>,
    /// `aws apigateway get-api-keys --include-values`.
    pub api_keys: Option<(PathBuf, Value)>,
    /// `aws apigateway get-usage-plan-keys --usage-plan-id ID`, each with the plan named on
    /// the command line (`ID=FILE`), if it was.
    pub usage_plan_keys: Vec<(Option<String>, PathBuf, Value)>,
    /// `aws cognito-idp list-resource-servers`.
    pub resource_servers: Option<(PathBuf, Value)>,
    /// `aws cognito-idp describe-user-pool-client`, one per client.
    pub user_pool_clients: Vec<(PathBuf, Value)>,
}

/// Choices the command line makes for the written config.
#[derive(Debug, Clone, Default)]
pub struct Options {
    /// Name of the API entry (default: from the export's `info.title`).
    pub api: Option<String>,
    /// Host names the entry serves (`--host`).
    pub hosts: Vec<String>,
    /// Base path of the entry (default: `/STAGE` as in the execute-api URL, `/` for `$default`).
    pub base_path: Option<String>,
    /// `--upstream NAME=URL`: a generated upstream's (or an integration origin's) new target.
    pub upstreams: Vec<(String, String)>,
    /// `--lambda ARN=URL`: the HTTP address now serving a Lambda function (integration or
    /// authorizer), by function ARN, name or integration URI.
    pub lambdas: Vec<(String, String)>,
    /// `issuer.url` when a user pool is imported.
    pub issuer_url: Option<String>,
    /// The listener's bind address.
    pub listen: Option<String>,
}

/// Why the import could not start.
#[derive(Debug)]
pub enum ImportError {
    /// A file could not be read, or is neither JSON nor YAML.
    Unreadable(PathBuf, String),
    /// The API definition is not an OpenAPI 3 or Swagger 2 document.
    NotAnApi(PathBuf, String),
    /// A command-line value is malformed (`--upstream` without `=`, say).
    Usage(String),
}

impl std::fmt::Display for ImportError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ImportError::Unreadable(p, e) => write!(f, "{}: cannot read: {e}", p.display()),
            ImportError::NotAnApi(p, e) => write!(f, "{}: {e}", p.display()),
            ImportError::Usage(e) => f.write_str(e),
        }
    }
}

/// One thing the import could not translate exactly: where it is in the input, what it was,
/// and what the operator has to do about it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Finding {
    /// The input file's name and the JSON path of the element (`$.paths["/pets"].get`).
    pub path: String,
    /// What the managed gateway did there that the written config does not.
    pub what: String,
    /// What to do before switching traffic.
    pub action: String,
}

/// The state of one import: the report being written and the names given out.
pub(crate) struct Cx<'a> {
    /// The API definition's file name, the prefix of every finding's path.
    pub(crate) file: String,
    pub(crate) opts: &'a Options,
    pub(crate) findings: Vec<Finding>,
    pub(crate) env: BTreeMap<String, String>,
    /// Upstreams by name: (target, timeout in ms if not the default).
    pub(crate) upstreams: BTreeMap<String, (String, Option<u64>)>,
    /// `--upstream`/`--lambda` arguments that were used.
    pub(crate) used: BTreeSet<String>,
}

impl<'a> Cx<'a> {
    pub(crate) fn new(export: &Path, opts: &'a Options) -> Cx<'a> {
        Cx {
            file: file_name(export),
            opts,
            findings: Vec::new(),
            env: BTreeMap::new(),
            upstreams: BTreeMap::new(),
            used: BTreeSet::new(),
        }
    }

    /// Records a finding about `path` in the API definition.
    pub(crate) fn report(
        &mut self,
        path: &str,
        what: impl Into<String>,
        action: impl Into<String>,
    ) {
        self.report_in(&self.file.clone(), path, what, action);
    }

    /// Records a finding about `path` in another input file.
    pub(crate) fn report_in(
        &mut self,
        file: &str,
        path: &str,
        what: impl Into<String>,
        action: impl Into<String>,
    ) {
        self.findings.push(Finding {
            path: format!("{file} {path}"),
            what: what.into(),
            action: action.into(),
        });
    }

    /// Records an environment variable a placeholder reads.
    pub(crate) fn env(&mut self, name: &str, what: impl Into<String>) -> Y {
        self.env.insert(name.to_string(), what.into());
        map([("env", s(name))])
    }

    /// The upstream for `target` (a base URL) with `timeout_ms`: an existing one with the
    /// same target and timeout, else a new one named after the host. `--upstream` rewrites
    /// are applied to the name or the original target.
    pub(crate) fn upstream(&mut self, target: &str, timeout_ms: Option<u64>) -> String {
        if let Some((name, _)) = self
            .upstreams
            .iter()
            .find(|(_, (t, to))| t == target && *to == timeout_ms)
        {
            return name.clone();
        }
        let host = target
            .split_once("://")
            .map_or(target, |(_, rest)| rest)
            .split(['/', ':'])
            .next()
            .unwrap_or("upstream");
        let name = unique(&slug(host, "upstream"), |n| self.upstreams.contains_key(n));
        self.upstreams
            .insert(name.clone(), (target.to_string(), timeout_ms));
        name
    }

    /// The `--lambda` URL given for a function (by ARN, name or integration URI), if any.
    pub(crate) fn lambda_url(&mut self, uri: &str, function_arn: Option<&str>) -> Option<String> {
        let name = function_arn.and_then(|a| a.split(':').nth(6));
        let hit = self.opts.lambdas.iter().find(|(k, _)| {
            k == uri || Some(k.as_str()) == function_arn || Some(k.as_str()) == name
        });
        let (k, url) = hit?.clone();
        self.used.insert(format!("--lambda {k}"));
        Some(url)
    }
}

/// A YAML string.
pub(crate) fn s(v: &str) -> Y {
    Y::String(v.to_string())
}

/// A YAML mapping in the order given.
pub(crate) fn map<'k>(pairs: impl IntoIterator<Item = (&'k str, Y)>) -> Y {
    Y::Mapping(pairs.into_iter().map(|(k, v)| (s(k), v)).collect())
}

/// A YAML sequence of strings.
pub(crate) fn strings<I: IntoIterator<Item = T>, T: AsRef<str>>(items: I) -> Y {
    Y::Sequence(items.into_iter().map(|i| s(i.as_ref())).collect())
}

/// `text` as a config name: lower case, runs of other characters as one `-`, at most 64
/// characters; `fallback` when nothing is left.
pub(crate) fn slug(text: &str, fallback: &str) -> String {
    name(text, fallback, true)
}

fn name(text: &str, fallback: &str, lower: bool) -> String {
    let mut out = String::new();
    for c in text.chars() {
        if c.is_ascii_alphanumeric() || c == '_' {
            out.push(if lower { c.to_ascii_lowercase() } else { c });
        } else if !out.is_empty() && !out.ends_with('-') {
            out.push('-');
        }
    }
    let out = out.trim_end_matches('-');
    let out: String = out.chars().take(64).collect();
    let out = out.trim_end_matches('-');
    if out.is_empty() {
        fallback.to_string()
    } else {
        out.to_string()
    }
}

/// `text` as a stage name: like [`slug`] but keeping upper case (stage names are
/// case-sensitive on the managed gateway).
pub(crate) fn stage_name(text: &str) -> String {
    name(text, "stage", false)
}

/// `base`, or `base-2`, `base-3`, ... : the first that `taken` refuses.
pub(crate) fn unique(base: &str, taken: impl Fn(&str) -> bool) -> String {
    if !taken(base) {
        return base.to_string();
    }
    (2..)
        .map(|n| format!("{base}-{n}"))
        .find(|n| !taken(n))
        .expect("some suffix is free")
}

/// `NAME` as an environment variable name part: upper case, other characters as `_`.
pub(crate) fn env_part(name: &str) -> String {
    name.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() {
                c.to_ascii_uppercase()
            } else {
                '_'
            }
        })
        .collect()
}

/// The JSON path of `key` under `parent`: `.key` for identifiers, `["key"]` otherwise.
pub(crate) fn jp(parent: &str, key: &str) -> String {
    let ident = !key.is_empty()
        && key.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
        && !key.starts_with(|c: char| c.is_ascii_digit());
    if ident {
        format!("{parent}.{key}")
    } else {
        format!(
            "{parent}[{}]",
            serde_json::to_string(key).expect("a string serialises")
        )
    }
}

/// The items of an AWS list answer: the CLI's `items`, the REST API's `item`, or a bare array.
pub(crate) fn items(v: &Value) -> &[Value] {
    for k in ["items", "item"] {
        if let Some(Value::Array(a)) = v.get(k) {
            return a;
        }
    }
    // The REST API's HAL answer.
    if let Some(Value::Array(a)) = v.pointer("/_embedded/item") {
        return a;
    }
    match v {
        Value::Array(a) => a,
        _ => &[],
    }
}

pub(crate) fn file_name(p: &Path) -> String {
    p.file_name().map_or_else(
        || p.display().to_string(),
        |n| n.to_string_lossy().into_owned(),
    )
}

/// The strings of a JSON array (others skipped); empty when `v` is not an array.
pub(crate) fn str_list(v: Option<&Value>) -> Vec<String> {
    v.and_then(Value::as_array)
        .map(|a| {
            a.iter()
                .filter_map(Value::as_str)
                .map(str::to_string)
                .collect()
        })
        .unwrap_or_default()
}
