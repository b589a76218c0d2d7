//! `x-amazon-apigateway-policy`: the resource policy's source-IP statements as tollgate
//! policies, evaluated per route as the managed gateway does (an explicit deny wins; without
//! an allow that covers the route, nobody may call it).

use std::collections::BTreeMap;
use std::str::FromStr;

use ipnet::IpNet;
use serde_json::Value;
use serde_norway::{Mapping, Value as Y};

use super::api::Api;
use super::cx::{Cx, jp, s, slug, strings, unique};

/// What the policy became.
#[derive(Debug, Default)]
pub(crate) struct Policies {
    /// Policies by name.
    pub(crate) policies: BTreeMap<String, Y>,
    /// Each route key's policy name (`none` for no restriction); empty without a policy.
    pub(crate) route_policy: BTreeMap<String, String>,
}

/// A statement's condition on the source IP.
#[derive(Debug, Clone)]
enum Cond {
    Always,
    In(Vec<IpNet>),
    NotIn(Vec<IpNet>),
}

#[derive(Debug)]
struct Stmt {
    allow: bool,
    /// Resource patterns after the API id: `STAGE/METHOD/PATH`, `*` wildcards.
    resources: Vec<String>,
    cond: Cond,
    at: String,
    matched: bool,
}

/// Who may call a route, as the statements that cover it decide.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Outcome {
    /// `None`: everyone not denied.
    allow: Option<Vec<IpNet>>,
    deny: Vec<IpNet>,
}

/// Evaluates the document's resource policy for every route (`routes`: key, path, entry).
pub(crate) fn translate(
    cx: &mut Cx,
    api: &Api,
    doc: &Value,
    routes: &[(String, Option<String>, Mapping)],
) -> Policies {
    let mut out = Policies::default();
    let Some(policy) = doc.get("x-amazon-apigateway-policy") else {
        return out;
    };
    let at = "$[\"x-amazon-apigateway-policy\"]";
    let policy = match policy {
        // Some exports write the policy document as a JSON string.
        Value::String(text) => match serde_json::from_str::<Value>(text) {
            Ok(v) => v,
            Err(e) => {
                cx.report(
                    at,
                    format!("the policy is not JSON: {e}"),
                    "write a policy by hand",
                );
                return out;
            }
        },
        v => v.clone(),
    };
    let list = match policy.get("Statement") {
        Some(Value::Array(a)) => a.clone(),
        Some(v @ Value::Object(_)) => vec![v.clone()],
        _ => Vec::new(),
    };
    let mut stmts = Vec::new();
    for (i, st) in list.iter().enumerate() {
        let at = format!("{at}.Statement[{i}]");
        if let Some(st) = statement(cx, st, &at) {
            stmts.push(st);
        }
    }
    let base = api
        .entry
        .clone()
        .unwrap_or_else(|| "resource-policy".into());
    let mut names: Vec<(Outcome, String)> = Vec::new();
    for (key, path, _) in routes {
        let method = key.split_once(' ').map_or("*", |(m, _)| m);
        let outcome = evaluate(&mut stmts, api.stage.as_deref(), method, path.as_deref());
        let name = if outcome.allow.is_none() && outcome.deny.is_empty() {
            "none".to_string()
        } else if let Some((_, n)) = names.iter().find(|(o, _)| *o == outcome) {
            n.clone()
        } else {
            let n = unique(&slug(&base, "policy"), |n| {
                n == "none" || names.iter().any(|(_, m)| m == n)
            });
            let mut p = Mapping::new();
            if let Some(a) = &outcome.allow {
                p.insert(s("allow"), strings(a.iter().map(IpNet::to_string)));
            }
            if !outcome.deny.is_empty() {
                p.insert(
                    s("deny"),
                    strings(outcome.deny.iter().map(IpNet::to_string)),
                );
            }
            out.policies.insert(n.clone(), Y::Mapping(p));
            names.push((outcome, n.clone()));
            n
        };
        out.route_policy.insert(key.clone(), name);
    }
    for st in &stmts {
        if !st.matched && !st.allow {
            cx.report(
                &st.at,
                format!(
                    "the Deny covers no imported route ({})",
                    st.resources.join(", ")
                ),
                "not enforced: a resource naming one concrete path cannot be a route policy; \
                 write one for the route by hand",
            );
        }
    }
    out
}

/// One statement, or `None` (reported) when tollgate cannot enforce it.
fn statement(cx: &mut Cx, st: &Value, at: &str) -> Option<Stmt> {
    let allow = match st.get("Effect").and_then(Value::as_str) {
        Some("Allow") => true,
        Some("Deny") => false,
        other => {
            cx.report(
                at,
                format!("statement with Effect {other:?}"),
                "ignored: fix the policy",
            );
            return None;
        }
    };
    let effect = if allow { "Allow" } else { "Deny" };
    let consequence = if allow {
        "its callers are refused (403) unless another statement allows them"
    } else {
        "NOT ENFORCED: callers it denied can call"
    };
    let any = |v: &Value| match v {
        Value::String(p) => p == "*",
        Value::Array(a) => a.iter().all(|x| x.as_str() == Some("*")),
        _ => false,
    };
    let principal_any = match st.get("Principal") {
        Some(v @ (Value::String(_) | Value::Array(_))) => any(v),
        Some(Value::Object(o)) => o.get("AWS").is_some_and(any) && o.len() == 1,
        _ => false,
    };
    if !principal_any || st.get("NotPrincipal").is_some() {
        cx.report(
            &jp(at, "Principal"),
            format!("{effect} for particular AWS principals"),
            format!("tollgate has no IAM identities: {consequence}; use authorizers instead"),
        );
        return None;
    }
    let invokes = |a: &str| matches!(a, "execute-api:Invoke" | "execute-api:*" | "*");
    let actions = match st.get("Action") {
        Some(Value::String(a)) => invokes(a),
        Some(Value::Array(a)) => a.iter().filter_map(Value::as_str).any(invokes),
        _ => false,
    };
    if !actions || st.get("NotAction").is_some() || st.get("NotResource").is_some() {
        cx.report(
            at,
            format!("{effect} with NotAction, NotResource or no execute-api:Invoke"),
            format!("ignored: {consequence}"),
        );
        return None;
    }
    let resources: Vec<String> = match st.get("Resource") {
        Some(Value::String(r)) => vec![resource(r)],
        Some(Value::Array(a)) => a.iter().filter_map(Value::as_str).map(resource).collect(),
        _ => vec!["*".into()],
    };
    let mut cond = Cond::Always;
    if let Some(c) = st.get("Condition").and_then(Value::as_object) {
        for (op, keys) in c {
            let source_ip = keys.as_object().and_then(|k| {
                k.iter()
                    .find(|(n, _)| n.eq_ignore_ascii_case("aws:SourceIp"))
                    .map(|(_, v)| v)
            });
            let only_ip = keys.as_object().is_some_and(|k| k.len() == 1);
            let nets = match (op.as_str(), source_ip) {
                ("IpAddress" | "NotIpAddress", Some(v))
                    if only_ip && matches!(cond, Cond::Always) =>
                {
                    cidrs(cx, v, &jp(&jp(at, "Condition"), op))
                }
                _ => {
                    cx.report(
                        &jp(&jp(at, "Condition"), op),
                        format!(
                            "{effect} on condition {op} {}",
                            Value::Object(keys.as_object().cloned().unwrap_or_default())
                        ),
                        format!("tollgate's policies test the client IP only: {consequence}"),
                    );
                    return None;
                }
            };
            cond = if op == "IpAddress" {
                Cond::In(nets)
            } else {
                Cond::NotIn(nets)
            };
        }
    }
    Some(Stmt {
        allow,
        resources,
        cond,
        at: at.to_string(),
        matched: false,
    })
}

/// A resource ARN (`arn:aws:execute-api:R:A:ID/STAGE/METHOD/PATH`, `execute-api:/...`, `*`)
/// as its `STAGE/METHOD/PATH` part.
fn resource(r: &str) -> String {
    if let Some(rest) = r.strip_prefix("execute-api:/") {
        return rest.to_string();
    }
    if r.starts_with("arn:") {
        let tail = r.splitn(6, ':').nth(5).unwrap_or("*");
        return tail
            .split_once('/')
            .map_or("*", |(_, rest)| rest)
            .to_string();
    }
    r.to_string()
}

/// `aws:SourceIp` values as networks; a bare address is a /32 or /128.
fn cidrs(cx: &mut Cx, v: &Value, at: &str) -> Vec<IpNet> {
    let items: Vec<&str> = match v {
        Value::String(s) => vec![s],
        Value::Array(a) => a.iter().filter_map(Value::as_str).collect(),
        _ => Vec::new(),
    };
    let mut out = Vec::new();
    for i in items {
        match IpNet::from_str(i).or_else(|_| std::net::IpAddr::from_str(i).map(IpNet::from)) {
            Ok(n) => out.push(n.trunc()),
            Err(_) => cx.report(
                at,
                format!("{i:?} is not an address or CIDR"),
                "fix the policy",
            ),
        }
    }
    out
}

/// Who may call the route `method path` (`None`: `$default`) of `stage`, by every statement
/// covering it.
fn evaluate(stmts: &mut [Stmt], stage: Option<&str>, method: &str, path: Option<&str>) -> Outcome {
    let mut allow_all = false;
    let mut allow_in: Vec<IpNet> = Vec::new();
    let mut allow_not_in: Vec<Vec<IpNet>> = Vec::new();
    let mut deny_all = false;
    let mut deny: Vec<IpNet> = Vec::new();
    let mut must_be_in: Vec<Vec<IpNet>> = Vec::new();
    for st in stmts.iter_mut() {
        let hit = st
            .resources
            .iter()
            .any(|r| covers(r, stage, method, path, st.allow));
        if !hit {
            continue;
        }
        st.matched = true;
        match (st.allow, &st.cond) {
            (true, Cond::Always) => allow_all = true,
            (true, Cond::In(n)) => allow_in.extend(n.iter().copied()),
            (true, Cond::NotIn(n)) => allow_not_in.push(n.clone()),
            (false, Cond::Always) => deny_all = true,
            (false, Cond::In(n)) => deny.extend(n.iter().copied()),
            (false, Cond::NotIn(n)) => must_be_in.push(n.clone()),
        }
    }
    let mut allow = if allow_all {
        None
    } else if allow_in.is_empty() && allow_not_in.len() == 1 {
        // "Allow everyone except these": everyone, and a deny of these.
        deny.extend(allow_not_in[0].iter().copied());
        None
    } else {
        // Several "everyone except" allows, or one beside an address list: only the address
        // lists are kept, which refuses more than the managed gateway did, never less.
        Some(allow_in)
    };
    for set in must_be_in {
        allow = Some(match allow {
            None => set,
            Some(a) => intersect(&a, &set),
        });
    }
    if deny_all {
        allow = Some(Vec::new());
    }
    if let Some(a) = &mut allow {
        a.sort();
        a.dedup();
    }
    deny.sort();
    deny.dedup();
    Outcome { allow, deny }
}

/// The networks in both lists: CIDR blocks either nest or are disjoint, so the intersection
/// is the smaller of each nesting pair.
pub(crate) fn intersect(a: &[IpNet], b: &[IpNet]) -> Vec<IpNet> {
    let mut out = Vec::new();
    for x in a {
        for y in b {
            if x.contains(y) {
                out.push(*y);
            } else if y.contains(x) {
                out.push(*x);
            }
        }
    }
    out
}

/// Whether resource pattern `r` (`STAGE/METHOD/PATH`) applies to the route. An Allow must
/// cover every request of the route; a Deny applies when it covers any (so an imported
/// policy never lets in someone the managed gateway kept out).
fn covers(r: &str, stage: Option<&str>, method: &str, path: Option<&str>, allow: bool) -> bool {
    if r == "*" {
        return true;
    }
    let mut parts = r.splitn(3, '/');
    let st = parts.next().unwrap_or("*");
    let m = parts.next().unwrap_or("*");
    let p = parts.next().unwrap_or("");
    if let Some(stage) = stage
        && !glob(st, stage)
    {
        return false;
    }
    let method_ok = if allow {
        glob(m, method) && (method != "ANY" || m == "*")
    } else {
        method == "ANY" || glob(m, method)
    };
    if !method_ok {
        return false;
    }
    let Some(path) = path else {
        // `$default` takes every path.
        return !allow || p == "*";
    };
    let route = path.trim_start_matches('/');
    if glob(p, route) {
        return true;
    }
    if !allow
        && let Some(i) = route.find("{")
        && route[i..].contains("+}")
    {
        // A greedy route: the deny applies when its literal prefix can meet the route's.
        let lit = &route[..i];
        let plit = p.split('*').next().unwrap_or("");
        return lit.starts_with(plit) || plit.starts_with(lit);
    }
    false
}

/// Glob match with `*` for any run of characters.
pub(crate) fn glob(pattern: &str, text: &str) -> bool {
    let (p, t): (Vec<char>, Vec<char>) = (pattern.chars().collect(), text.chars().collect());
    let (mut pi, mut ti, mut star, mut mark) = (0, 0, None, 0);
    while ti < t.len() {
        if pi < p.len() && p[pi] != '*' && p[pi] == t[ti] {
            pi += 1;
            ti += 1;
        } else if pi < p.len() && p[pi] == '*' {
            star = Some(pi);
            mark = ti;
            pi += 1;
        } else if let Some(sp) = star {
            pi = sp + 1;
            mark += 1;
            ti = mark;
        } else {
            return false;
        }
    }
    while pi < p.len() && p[pi] == '*' {
        pi += 1;
    }
    pi == p.len()
}
