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

/// One `Resource` entry.
#[derive(Debug)]
struct Resource {
    /// Region, account and API id of an ARN (IAM wildcards allowed); `None` for
    /// `execute-api:/...` and `*`, which mean this API.
    arn: Option<[String; 3]>,
    /// `STAGE/METHOD/PATH`, with `*` and `?` wildcards.
    rest: String,
    /// Whether it covered an imported route (for reporting Denies that applied nowhere).
    matched: bool,
}

#[derive(Debug)]
struct Stmt {
    allow: bool,
    resources: Vec<Resource>,
    cond: Cond,
    at: String,
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
    // Tollgate's own export lists in each statement exactly the routes it was written for.
    let own = doc
        .get(crate::openapi::TOLLGATE_EXPORT)
        .and_then(Value::as_bool)
        == Some(true);
    let mut names: Vec<(Outcome, String)> = Vec::new();
    for (key, path, _) in routes {
        // `$default` takes every method.
        let method = key.split_once(' ').map_or("ANY", |(m, _)| m);
        let route = RouteRef {
            stage: api.stage.as_deref(),
            method,
            path: path.as_deref(),
        };
        let outcome = evaluate(&mut stmts, api, &route, own);
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
    for st in stmts.iter().filter(|s| !s.allow) {
        for r in st.resources.iter().filter(|r| !r.matched) {
            cx.report(
                &st.at,
                format!("the Deny on {} covers no imported route", r.rest),
                "NOT ENFORCED: a resource naming one concrete path (or another API) cannot be a \
                 route policy; write one for the route by hand",
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
    let resources: Vec<Resource> = match st.get("Resource") {
        Some(Value::String(r)) => vec![resource(r)],
        Some(Value::Array(a)) => a.iter().filter_map(Value::as_str).map(resource).collect(),
        _ => vec![resource("*")],
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
    })
}

/// A resource ARN (`arn:aws:execute-api:R:A:ID/STAGE/METHOD/PATH`, `execute-api:/...`, `*`)
/// as its API part and its `STAGE/METHOD/PATH` part.
fn resource(r: &str) -> Resource {
    let (arn, rest) = if let Some(rest) = r.strip_prefix("execute-api:/") {
        (None, rest.to_string())
    } else if let Some(tail) = r.strip_prefix("arn:") {
        let f: Vec<&str> = tail.splitn(5, ':').collect();
        // [partition, service, region, account, "ID/STAGE/METHOD/PATH"]
        let (id, rest) = f
            .get(4)
            .map_or(("*", "*"), |s| s.split_once('/').unwrap_or((s, "*")));
        let field = |i: usize| f.get(i).map_or("*", |s| *s).to_string();
        (Some([field(2), field(3), id.to_string()]), rest.to_string())
    } else {
        (None, r.to_string())
    };
    Resource {
        arn,
        rest,
        matched: false,
    }
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

/// A route as resource patterns see it.
struct RouteRef<'a> {
    /// The stage, when the export names one.
    stage: Option<&'a str>,
    /// `GET`, or `ANY` for every method.
    method: &'a str,
    /// The path template; `None` for `$default` (every path).
    path: Option<&'a str>,
}

/// Who may call `route`, by every statement covering it.
fn evaluate(stmts: &mut [Stmt], api: &Api, route: &RouteRef, own: bool) -> Outcome {
    let mut allow_all = false;
    let mut allow_in: Vec<IpNet> = Vec::new();
    let mut allow_not_in: Vec<Vec<IpNet>> = Vec::new();
    let mut deny_all = false;
    let mut deny: Vec<IpNet> = Vec::new();
    let mut must_be_in: Vec<Vec<IpNet>> = Vec::new();
    for st in stmts.iter_mut() {
        let mut hit = false;
        for r in st.resources.iter_mut() {
            if covers(r, api, route, st.allow || own) {
                r.matched = true;
                hit = true;
            }
        }
        if !hit {
            continue;
        }
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

/// Stands for a value the route does not fix (a parameter, the method of `ANY`, an unknown
/// stage): no literal of a pattern matches it, only `*`.
const ANY_VALUE: char = '\u{1}';

/// In a Deny's view of a route: one path segment (or method, or stage) of any value, which a
/// pattern's `*` or its characters other than `/` may meet.
const ANY_SEGMENT: char = '\u{2}';

/// Whether resource `r` applies to the route. An Allow must cover every request of the route
/// (its parameters, the methods of `ANY`, an unknown stage can be anything, and an ARN must
/// name this API); a Deny applies when it covers any request of it (the two patterns overlap),
/// so an imported policy never lets in someone the managed gateway kept out.
fn covers(r: &Resource, api: &Api, route: &RouteRef, allow: bool) -> bool {
    if let Some([region, _account, id]) = &r.arn {
        let known =
            |pattern: &str, value: &Option<String>| value.as_ref().map(|v| glob(pattern, v));
        match (known(id, &api.api_id), known(region, &api.region)) {
            (Some(false), _) | (_, Some(false)) => return false,
            // Not known to be this API: an Allow does not count, a Deny does.
            (None, _) if allow => return false,
            _ => {}
        }
    }
    let wild = if allow { ANY_VALUE } else { ANY_SEGMENT };
    let rest = if allow { ANY_VALUE } else { '*' };
    let mut subject = String::new();
    match route.stage {
        Some(s) => subject.push_str(s),
        None => subject.push(wild),
    }
    subject.push('/');
    match route.method {
        "ANY" => subject.push(wild),
        m => subject.push_str(m),
    }
    subject.push('/');
    match route.path {
        None => subject.push(rest),
        Some(p) => {
            let segs: Vec<&str> = p.split('/').filter(|s| !s.is_empty()).collect();
            for (i, seg) in segs.iter().enumerate() {
                if i > 0 {
                    subject.push('/');
                }
                if seg.starts_with('{') && seg.ends_with("+}") {
                    subject.push(rest);
                } else if seg.starts_with('{') {
                    subject.push(wild);
                } else {
                    subject.push_str(seg);
                }
            }
        }
    }
    if allow {
        glob(&r.rest, &subject)
    } else {
        overlap(&r.rest, &subject)
    }
}

/// Whether some string matches both the resource pattern `a` (`*`: any run of characters;
/// `?`: one) and the route's view `b` (`*` likewise; [`ANY_SEGMENT`]: a run without `/`).
pub(crate) fn overlap(a: &str, b: &str) -> bool {
    fn go(a: &[char], b: &[char], i: usize, j: usize, memo: &mut [Vec<Option<bool>>]) -> bool {
        if let Some(v) = memo[i][j] {
            return v;
        }
        let v = if i == a.len() && j == b.len() {
            true
        } else if i < a.len() && a[i] == '*' {
            go(a, b, i + 1, j, memo) || (j < b.len() && go(a, b, i, j + 1, memo))
        } else if j < b.len() && b[j] == '*' {
            go(a, b, i, j + 1, memo) || (i < a.len() && go(a, b, i + 1, j, memo))
        } else if j < b.len() && b[j] == ANY_SEGMENT {
            go(a, b, i, j + 1, memo) || (i < a.len() && a[i] != '/' && go(a, b, i + 1, j, memo))
        } else if i < a.len() && j < b.len() {
            (a[i] == '?' || b[j] == '?' || a[i] == b[j]) && go(a, b, i + 1, j + 1, memo)
        } else {
            false
        };
        memo[i][j] = Some(v);
        v
    }
    let (a, b): (Vec<char>, Vec<char>) = (a.chars().collect(), b.chars().collect());
    let mut memo = vec![vec![None; b.len() + 1]; a.len() + 1];
    go(&a, &b, 0, 0, &mut memo)
}

/// IAM-style match: `*` for any run of characters, `?` for one (never a value the route
/// leaves open).
pub(crate) fn glob(pattern: &str, text: &str) -> bool {
    let (p, t): (Vec<char>, Vec<char>) = (pattern.chars().collect(), text.chars().collect());
    let (mut pi, mut ti, mut star, mut mark) = (0, 0, None, 0);
    while ti < t.len() {
        if pi < p.len() && p[pi] != '*' && (p[pi] == t[ti] || (p[pi] == '?' && t[ti] != ANY_VALUE))
        {
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
