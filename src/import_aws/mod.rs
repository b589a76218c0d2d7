//! `tollgate import aws`: a managed gateway's API definition (a REST or HTTP API exported with
//! its `x-amazon-apigateway-*` extensions), and optionally its usage plans, API keys and user
//! pool, translated into a `gateway.yaml`, with a report of everything that could not be
//! translated. The mapping rules are in docs/migrating.md; each has a unit test in `tests.rs`.
//!
//! The importer works on the documents as JSON values and writes the config as an ordered YAML
//! value; it never reads or writes a secret (API key values become `sha256:` hashes, client
//! and SigV4 secrets `{env: ...}` placeholders). It refuses only input it cannot read.

mod api;
mod authorizers;
mod cx;
mod integrations;
mod plans;
mod policy;
mod routes;
#[cfg(test)]
mod tests;

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::Path;

use serde_json::Value;
use serde_norway::{Mapping, Value as Y};

use cx::{Cx, map, s};
pub use cx::{DEFAULT_ISSUER_URL, Finding, ImportError, Options, Sources};

/// Listener address of the written config unless `--listen` says otherwise.
pub const DEFAULT_LISTEN: &str = "0.0.0.0:8080";

/// What an import wrote, and what it could not.
#[derive(Debug, Default)]
pub struct Import {
    /// The config, as ordered YAML.
    pub config: Y,
    /// Everything that needs the operator, in input order.
    pub findings: Vec<Finding>,
    /// Environment variables the config's placeholders read, with what each must hold.
    pub env: BTreeMap<String, String>,
    /// Counts for the summary line (`routes`, `upstreams`, ...).
    pub counts: BTreeMap<&'static str, usize>,
}

impl Import {
    /// The config as a `gateway.yaml` text: a header comment naming the source and the
    /// environment the placeholders need, then the YAML.
    pub fn config_text(&self, source: &Path) -> String {
        // Names in comments come from the input: a line break there would end the comment and
        // put the rest into the config.
        let line = |s: &str| -> String {
            s.chars()
                .map(|c| if c.is_control() { ' ' } else { c })
                .collect()
        };
        let mut out = format!(
            "# Written by `tollgate import aws` from {}.\n\
             # Read the import report before serving traffic ({} items); check with `tollgate check`.\n",
            line(&source.display().to_string()),
            self.findings.len()
        );
        if !self.env.is_empty() {
            out.push_str("# Environment variables this config reads:\n");
            for (name, what) in &self.env {
                let _ = writeln!(out, "#   {}: {}", line(name), line(what));
            }
        }
        out.push_str(&serde_norway::to_string(&self.config).expect("a YAML value serialises"));
        out
    }

    /// The report as text: a summary line, the environment to set, then each finding with
    /// its path and the action it needs.
    pub fn report_text(&self) -> String {
        let counts: Vec<String> = self
            .counts
            .iter()
            .map(|(k, v)| format!("{v} {k}"))
            .collect();
        let mut out = format!(
            "tollgate import aws: imported {}; {} items need you\n",
            counts.join(", "),
            self.findings.len()
        );
        if !self.env.is_empty() {
            out.push_str("\nSet these environment variables:\n");
            for (name, what) in &self.env {
                let _ = writeln!(out, "  {name}: {what}");
            }
        }
        if !self.findings.is_empty() {
            out.push_str("\nNot imported as the managed gateway does it:\n");
            for f in &self.findings {
                let _ = writeln!(out, "- {}\n  {}\n  do: {}", f.path, f.what, f.action);
            }
        }
        out
    }
}

/// Reads a JSON or YAML document as the AWS CLI writes it (`--output json` or `yaml`).
/// Refuses a file that cannot be read or parses as neither.
pub fn read_document(path: &Path) -> Result<Value, ImportError> {
    let bytes =
        std::fs::read(path).map_err(|e| ImportError::Unreadable(path.into(), e.to_string()))?;
    if let Ok(v) = serde_json::from_slice::<Value>(&bytes) {
        return Ok(v);
    }
    serde_norway::from_slice::<Value>(&bytes)
        .map_err(|e| ImportError::Unreadable(path.into(), format!("neither JSON nor YAML: {e}")))
}

/// Splits a `KEY=VALUE` command-line argument. Refuses one without `=` or with an empty side.
pub fn key_value(arg: &str, flag: &str) -> Result<(String, String), ImportError> {
    match arg.split_once('=') {
        Some((k, v)) if !k.is_empty() && !v.is_empty() => Ok((k.to_string(), v.to_string())),
        _ => Err(ImportError::Usage(format!(
            "{flag} takes NAME=VALUE, not {arg:?}"
        ))),
    }
}

/// Translates `src` into a config. Refuses only an API definition that is not OpenAPI 3 or
/// Swagger 2; everything else it cannot translate becomes a [`Finding`].
pub fn import(src: &Sources, opts: &Options) -> Result<Import, ImportError> {
    let (export_path, doc) = &src.export;
    let api = api::Api::read(export_path, doc, opts)?;
    let mut cx = Cx::new(export_path, opts);
    let mut imported = routes::translate(&mut cx, &api, doc);
    let mut plans = plans::usage_plans(&mut cx, &api, &imported, src);
    let keys = plans::api_keys(&mut cx, &mut plans, src);
    let issuer = plans::user_pool(&mut cx, src);
    if issuer.is_some() {
        authorizers::trust_embedded_issuer(&mut cx, &mut imported, src);
    }
    Ok(assemble(cx, &api, imported, plans, keys, issuer))
}

/// Puts the translated parts together in the config's order.
fn assemble(
    mut cx: Cx,
    api: &api::Api,
    imported: api::Imported,
    plans: plans::Plans,
    keys: Option<Vec<Y>>,
    issuer: Option<Y>,
) -> Import {
    // `--upstream` rewrites, by generated name or by original target.
    let mut ups = Mapping::new();
    let rewrites = cx.opts.upstreams.clone();
    for (name, (target, timeout)) in &cx.upstreams {
        let rewrite = rewrites
            .iter()
            .find(|(k, _)| k == name || k == target || target.starts_with(&format!("{k}/")));
        let target = match rewrite {
            Some((k, url)) => {
                cx.used.insert(format!("--upstream {k}"));
                // By origin, the integration's path prefix stays.
                let rest = target.strip_prefix(k.as_str()).filter(|_| k != name);
                format!("{}{}", url.trim_end_matches('/'), rest.unwrap_or(""))
            }
            None => target.clone(),
        };
        let mut u = vec![("targets", Y::Sequence(vec![s(&target)]))];
        if let Some(ms) = timeout {
            u.push(("timeout", s(&format!("{ms}ms"))));
        }
        ups.insert(s(name), map(u));
    }
    for (k, _) in &rewrites {
        if !cx.used.contains(&format!("--upstream {k}")) {
            let file = cx.file.clone();
            cx.report_in(
                "command line",
                &format!("--upstream {k}"),
                format!("names no upstream of {file}"),
                "use a name from the written `upstreams:` or an integration's origin",
            );
        }
    }
    for (k, _) in &cx.opts.lambdas.clone() {
        if !cx.used.contains(&format!("--lambda {k}")) {
            cx.report_in(
                "command line",
                &format!("--lambda {k}"),
                "names no Lambda integration or authorizer of the export",
                "give the function's ARN, name or integration URI",
            );
        }
    }
    let mut root = Mapping::new();
    let listen = cx.opts.listen.as_deref().unwrap_or(DEFAULT_LISTEN);
    root.insert(
        s("listeners"),
        Y::Sequence(vec![map([("bind", s(listen))])]),
    );
    if let Some(issuer) = issuer {
        root.insert(s("issuer"), issuer);
    }
    if !imported.authorizers.is_empty() {
        root.insert(
            s("authorizers"),
            Y::Mapping(
                imported
                    .authorizers
                    .into_iter()
                    .map(|(k, v)| (s(&k), v))
                    .collect(),
            ),
        );
    }
    if !imported.policies.is_empty() {
        root.insert(
            s("policies"),
            Y::Mapping(
                imported
                    .policies
                    .into_iter()
                    .map(|(k, v)| (s(&k), v))
                    .collect(),
            ),
        );
    }
    if !ups.is_empty() {
        root.insert(s("upstreams"), Y::Mapping(ups));
    }
    if !plans.plans.is_empty() {
        root.insert(
            s("usage_plans"),
            Y::Mapping(plans.plans.iter().map(|(k, v)| (s(k), v.clone())).collect()),
        );
    }
    let needs_keys = imported.routes.iter().any(|r| {
        r.as_mapping()
            .and_then(|m| m.get("api_key_required"))
            .is_some_and(|v| v == &Y::Bool(true))
    });
    if keys.is_some() || needs_keys || imported.key_header.is_some() {
        let mut k = Mapping::new();
        if let Some(h) = &imported.key_header {
            k.insert(s("header"), s(h));
        }
        let none = keys.as_ref().is_none_or(Vec::is_empty);
        k.insert(s("keys"), Y::Sequence(keys.unwrap_or_default()));
        root.insert(s("api_keys"), Y::Mapping(k));
        if needs_keys && none {
            let file = cx.file.clone();
            cx.report_in(
                &file,
                "$",
                "routes require an API key, and no keys were imported",
                "pass --api-keys and --usage-plan-keys (or add keys to `api_keys.keys`); \
                 until then every request to those routes gets 403",
            );
        }
    }
    let mut counts = BTreeMap::new();
    counts.insert("routes", imported.routes.len());
    counts.insert("upstreams", cx.upstreams.len());
    counts.insert("usage plans", plans.plans.len());
    counts.insert("API keys", plans.key_count);
    let mut entry = Mapping::new();
    if let Some(c) = imported.cors {
        entry.insert(s("cors"), c);
    }
    if !imported.defaults.is_empty() {
        entry.insert(s("defaults"), Y::Mapping(imported.defaults));
    }
    entry.insert(s("routes"), Y::Sequence(imported.routes));
    match &api.entry {
        None => {
            // The default API: its settings are the top-level ones.
            for (k, v) in entry {
                root.insert(k, v);
            }
        }
        Some(name) => {
            let mut e = Mapping::new();
            if !api.hosts.is_empty() {
                e.insert(
                    s("hosts"),
                    Y::Sequence(api.hosts.iter().map(|h| s(h)).collect()),
                );
            }
            if api.base_path != "/" {
                e.insert(s("base_path"), s(&api.base_path));
            }
            if let Some(stage) = &api.stage {
                e.insert(s("stage"), s(stage));
            }
            e.extend(entry);
            root.insert(s("apis"), map([(name.as_str(), Y::Mapping(e))]));
        }
    }
    Import {
        config: Y::Mapping(root),
        findings: cx.findings,
        env: cx.env,
        counts,
    }
}
