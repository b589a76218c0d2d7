//! Usage plans bound to the imported API stage, their API keys (as `sha256:` hashes only),
//! and the user pool's resource servers and app clients as the embedded issuer.

use std::collections::BTreeMap;

use serde_json::Value;
use serde_norway::{Mapping, Value as Y};

use super::api::{Api, Imported};
use super::cx::{
    Cx, DEFAULT_ISSUER_URL, Sources, env_part, file_name, items, map, s, slug, stage_name, strings,
    unique,
};

/// The embedded issuer's token lifetime bounds (`issuer.token_ttl`), in seconds.
const MIN_TTL_SECS: u64 = 300;
const MAX_TTL_SECS: u64 = 86_400;

/// A user pool app client's default access token lifetime: 60 minutes.
const COGNITO_DEFAULT_TTL_SECS: u64 = 3_600;

/// The imported usage plans.
#[derive(Debug, Default)]
pub(crate) struct Plans {
    /// Plans by name, in the config's shape.
    pub(crate) plans: BTreeMap<String, Y>,
    /// The managed plan id of each imported plan → its name.
    pub(crate) by_id: BTreeMap<String, String>,
    /// How many API keys were imported.
    pub(crate) key_count: usize,
}

/// The plans of `src.usage_plans` that cover this API's stage, bound to it (`apis:`).
pub(crate) fn usage_plans(cx: &mut Cx, api: &Api, imported: &Imported, src: &Sources) -> Plans {
    let mut out = Plans::default();
    let Some((path, doc)) = &src.usage_plans else {
        return out;
    };
    let file = file_name(path);
    if api.api_id.is_none() {
        // Matching by stage name alone would let keys of other APIs' plans call this one.
        cx.report_in(
            &file,
            "$",
            "the export names no execute-api URL, so no plan can be told to belong to this API",
            "not imported: export the API with its execute-api server URL, or write the plans \
             and keys by hand",
        );
        return out;
    }
    for (i, plan) in items(doc).iter().enumerate() {
        let at = format!("$.items[{i}]");
        let id = plan.get("id").and_then(Value::as_str).unwrap_or("");
        let title = plan.get("name").and_then(Value::as_str).unwrap_or(id);
        let stages: Vec<&Value> = plan
            .get("apiStages")
            .and_then(Value::as_array)
            .map(|a| {
                a.iter()
                    .filter(|st| {
                        let same_api = match (&api.api_id, st.get("apiId").and_then(Value::as_str))
                        {
                            (Some(want), Some(have)) => want == have,
                            _ => true,
                        };
                        let stage = st.get("stage").and_then(Value::as_str).unwrap_or("");
                        let same_stage = match &api.stage {
                            Some(want) => stage_name(stage) == *want,
                            None => stage.is_empty() || stage == "$default",
                        };
                        same_api && same_stage
                    })
                    .collect()
            })
            .unwrap_or_default();
        if stages.is_empty() {
            cx.report_in(
                &file,
                &at,
                format!("plan {title:?} covers no stage of this API"),
                "not imported (import it with the export of the API it covers)",
            );
            continue;
        }
        let name = unique(&slug(title, "plan"), |n| out.plans.contains_key(n));
        let mut p = Mapping::new();
        if let Some(t) = plan.get("throttle") {
            match throttle(t) {
                Some(t) => {
                    p.insert(s("throttle"), t);
                }
                None => cx.report_in(
                    &file,
                    &format!("{at}.throttle"),
                    "a throttle with a rate or burst of 0",
                    "not imported: a tollgate throttle admits at least one request",
                ),
            }
        }
        if let Some(q) = plan.get("quota") {
            let limit = q.get("limit").and_then(Value::as_u64).unwrap_or(0);
            let period = q.get("period").and_then(Value::as_str).unwrap_or("");
            let period = period.to_ascii_lowercase();
            if limit > 0 && matches!(period.as_str(), "day" | "week" | "month") {
                p.insert(
                    s("quota"),
                    map([("limit", Y::Number(limit.into())), ("period", s(&period))]),
                );
                if q.get("offset").and_then(Value::as_u64).unwrap_or(0) != 0 {
                    cx.report_in(
                        &file,
                        &format!("{at}.quota.offset"),
                        "the quota's first period is shortened by an offset",
                        "tollgate's periods start at 00:00 UTC (weeks on Monday): nothing to do \
                         unless clients rely on the offset",
                    );
                }
            } else {
                cx.report_in(
                    &file,
                    &format!("{at}.quota"),
                    format!("quota {limit} per {period:?}"),
                    "not imported: a quota needs a limit of at least 1 per DAY, WEEK or MONTH",
                );
            }
        }
        let mut per_route = Mapping::new();
        for st in &stages {
            let Some(t) = st.get("throttle").and_then(Value::as_object) else {
                continue;
            };
            for (k, v) in t {
                let key = k
                    .rsplit_once('/')
                    .map(|(p, m)| format!("{m} {}", if p.is_empty() { "/" } else { p }));
                match (key, throttle(v)) {
                    (Some(key), Some(t)) if imported.route_keys.contains(&key) => {
                        per_route.insert(s(&key), t);
                    }
                    _ => cx.report_in(
                        &file,
                        &format!(
                            "{at}.apiStages.throttle[{}]",
                            serde_json::to_string(k).expect("a string serialises")
                        ),
                        format!("a method throttle on {k} names no imported route"),
                        "not imported: add it to `route_throttle` by hand",
                    ),
                }
            }
        }
        if !per_route.is_empty() {
            p.insert(s("route_throttle"), Y::Mapping(per_route));
        }
        p.insert(s("apis"), strings([api.plan_ref()]));
        out.plans.insert(name.clone(), Y::Mapping(p));
        out.by_id.insert(id.to_string(), name);
    }
    out
}

/// `{burstLimit, rateLimit}` as `{rate, burst}`; `None` when either is 0.
fn throttle(t: &Value) -> Option<Y> {
    let rate = t.get("rateLimit").and_then(Value::as_f64).unwrap_or(0.0);
    let burst = t.get("burstLimit").and_then(Value::as_u64).unwrap_or(0);
    if rate <= 0.0 || burst == 0 {
        return None;
    }
    let rate = if rate.fract() == 0.0 && rate < 1e15 {
        Y::Number((rate as u64).into())
    } else {
        Y::Number(rate.into())
    };
    Some(map([("rate", rate), ("burst", Y::Number(burst.into()))]))
}

/// A managed API key on its way to the config.
#[derive(Debug, Default)]
struct Key {
    name: String,
    value: Option<String>,
    /// Whether `--api-keys` said it is enabled (`get-usage-plan-keys` does not say).
    enabled: bool,
    plans: Vec<String>,
}

/// The keys of the imported plans, each as its `sha256:` hash with its plans and `enabled`.
/// Keys of no imported plan are left out: on the managed gateway they could not call this API.
pub(crate) fn api_keys(cx: &mut Cx, plans: &mut Plans, src: &Sources) -> Option<Vec<Y>> {
    if src.api_keys.is_none() && src.usage_plan_keys.is_empty() {
        return None;
    }
    let mut keys: BTreeMap<String, Key> = BTreeMap::new();
    if let Some((_, doc)) = &src.api_keys {
        for k in items(doc) {
            let Some(id) = k.get("id").and_then(Value::as_str) else {
                continue;
            };
            keys.insert(
                id.to_string(),
                Key {
                    name: k
                        .get("name")
                        .and_then(Value::as_str)
                        .unwrap_or(id)
                        .to_string(),
                    value: k.get("value").and_then(Value::as_str).map(str::to_string),
                    enabled: k.get("enabled").and_then(Value::as_bool).unwrap_or(true),
                    plans: Vec::new(),
                },
            );
        }
    }
    for (named, path, doc) in &src.usage_plan_keys {
        let file = file_name(path);
        let stem = path.file_stem().map(|s| s.to_string_lossy().into_owned());
        let plan = match named {
            Some(n) => plans
                .by_id
                .get(n)
                .cloned()
                .or_else(|| plans.by_id.values().find(|v| *v == n).cloned()),
            None => plans
                .by_id
                .iter()
                .find(|(id, _)| {
                    !id.is_empty() && stem.as_deref().is_some_and(|s| s.contains(id.as_str()))
                })
                .map(|(_, n)| n.clone()),
        };
        let Some(plan) = plan else {
            cx.report_in(
                &file,
                "$",
                "these usage plan keys belong to no imported plan",
                "pass them as --usage-plan-keys PLAN_ID=FILE (or put the plan id in the file \
                 name) for a plan of this API",
            );
            continue;
        };
        for k in items(doc) {
            let Some(id) = k.get("id").and_then(Value::as_str) else {
                continue;
            };
            let key = keys.entry(id.to_string()).or_insert_with(|| Key {
                name: k
                    .get("name")
                    .and_then(Value::as_str)
                    .unwrap_or(id)
                    .to_string(),
                value: None,
                // Not in `--api-keys`: it may be disabled there, so it is imported disabled.
                enabled: false,
                plans: Vec::new(),
            });
            if key.value.is_none() {
                key.value = k.get("value").and_then(Value::as_str).map(str::to_string);
            }
            if !key.plans.contains(&plan) {
                key.plans.push(plan.clone());
            }
        }
    }
    let mut out = Vec::new();
    let mut ids: Vec<String> = Vec::new();
    let mut planless = Vec::new();
    for (aws_id, k) in &keys {
        if k.plans.is_empty() {
            planless.push(k.name.clone());
            continue;
        }
        let Some(value) = &k.value else {
            cx.report_in(
                "api keys",
                &format!("key {}", k.name),
                "the key's value is not in the input",
                "export the keys with `aws apigateway get-api-keys --include-values`",
            );
            continue;
        };
        let base = if k.name.is_empty() { aws_id } else { &k.name };
        let id = unique(base, |n| ids.iter().any(|i| i == n));
        ids.push(id.clone());
        let mut m = vec![
            ("id", s(&id)),
            (
                "key",
                s(&format!(
                    "sha256:{}",
                    crate::util::sha256_hex(value.as_bytes())
                )),
            ),
        ];
        if k.plans.len() == 1 {
            m.push(("plan", s(&k.plans[0])));
        } else {
            m.push(("plans", strings(&k.plans)));
        }
        if !k.enabled {
            m.push(("enabled", Y::Bool(false)));
            if src.api_keys.as_ref().is_none_or(|(_, d)| {
                !items(d)
                    .iter()
                    .any(|i| i.get("id").and_then(Value::as_str) == Some(aws_id))
            }) {
                cx.report_in(
                    "api keys",
                    &format!("key {id}"),
                    "the key is in a usage plan, but whether it is enabled is not in the input",
                    "imported disabled: pass --api-keys (get-api-keys --include-values), or set \
                     `enabled: true` once you have checked it",
                );
            }
        }
        out.push(map(m));
    }
    if !planless.is_empty() {
        cx.report_in(
            "api keys",
            "$",
            format!(
                "{} keys are in no imported plan: {}",
                planless.len(),
                planless.join(", ")
            ),
            "not imported: on the managed gateway they could not call this API stage either",
        );
    }
    plans.key_count = out.len();
    Some(out)
}

/// The `issuer:` section from the user pool's resource servers and app clients, for teams
/// replacing the pool too. Client secrets become `{env: ...}` placeholders; clients without
/// the client-credentials flow are reported, not imported.
pub(crate) fn user_pool(cx: &mut Cx, src: &Sources) -> Option<Y> {
    if src.resource_servers.is_none() && src.user_pool_clients.is_empty() {
        return None;
    }
    let mut servers: Vec<(String, Vec<String>)> = Vec::new();
    if let Some((_, doc)) = &src.resource_servers {
        for r in doc
            .get("ResourceServers")
            .and_then(Value::as_array)
            .map(Vec::as_slice)
            .unwrap_or_default()
        {
            let Some(id) = r.get("Identifier").and_then(Value::as_str) else {
                continue;
            };
            let scopes = r
                .get("Scopes")
                .and_then(Value::as_array)
                .map(|a| {
                    a.iter()
                        .filter_map(|s| s.get("ScopeName").and_then(Value::as_str))
                        .map(str::to_string)
                        .collect()
                })
                .unwrap_or_default();
            servers.push((id.to_string(), scopes));
        }
    }
    let mut clients = Vec::new();
    let mut ttl: Option<u64> = None;
    for (path, doc) in &src.user_pool_clients {
        let file = file_name(path);
        let c = doc.get("UserPoolClient").unwrap_or(doc);
        let Some(id) = c.get("ClientId").and_then(Value::as_str) else {
            cx.report_in(&file, "$", "no UserPoolClient.ClientId", "not imported");
            continue;
        };
        let label = c.get("ClientName").and_then(Value::as_str).unwrap_or(id);
        let flows: Vec<&str> = c
            .get("AllowedOAuthFlows")
            .and_then(Value::as_array)
            .map(|a| a.iter().filter_map(Value::as_str).collect())
            .unwrap_or_default();
        if !flows.contains(&"client_credentials") {
            cx.report_in(
                &file,
                "$.UserPoolClient.AllowedOAuthFlows",
                format!(
                    "client {label} uses {} (no client_credentials)",
                    flows.join(", ")
                ),
                "not imported: the embedded issuer serves the client-credentials grant only; \
                 keep the user pool for this client",
            );
            continue;
        }
        let mut scopes = Vec::new();
        for sc in c
            .get("AllowedOAuthScopes")
            .and_then(Value::as_array)
            .map(Vec::as_slice)
            .unwrap_or_default()
            .iter()
            .filter_map(Value::as_str)
        {
            match sc.split_once('/') {
                Some((server, name)) => {
                    match servers.iter_mut().find(|(s, _)| s == server) {
                        Some((_, have)) if have.iter().any(|h| h == name) => {}
                        Some((_, have)) => have.push(name.to_string()),
                        None => servers.push((server.to_string(), vec![name.to_string()])),
                    }
                    scopes.push(sc.to_string());
                }
                None => cx.report_in(
                    &file,
                    "$.UserPoolClient.AllowedOAuthScopes",
                    format!("scope {sc} of client {label} is not a resource server scope"),
                    "not imported: client-credentials tokens carry custom scopes only",
                ),
            }
        }
        let var = format!("TOLLGATE_CLIENT_SECRET_{}", env_part(label));
        let secret = cx.env(
            &var,
            format!("the client secret of app client {label} ({id}), e.g. its current one"),
        );
        let mut m = vec![("client_id", s(id)), ("client_secret", secret)];
        if !scopes.is_empty() {
            m.push(("scopes", strings(&scopes)));
        }
        clients.push(map(m));
        let validity = c.get("AccessTokenValidity").and_then(Value::as_u64);
        let unit = c
            .pointer("/TokenValidityUnits/AccessToken")
            .and_then(Value::as_str)
            .unwrap_or("hours");
        let secs = validity.map_or(COGNITO_DEFAULT_TTL_SECS, |v| {
            v * match unit {
                "seconds" => 1,
                "minutes" => 60,
                "days" => 86_400,
                _ => 3_600,
            }
        });
        if ttl.is_some_and(|t| t != secs) {
            cx.report_in(
                &file,
                "$.UserPoolClient.AccessTokenValidity",
                "app clients have different access token lifetimes",
                "the embedded issuer has one token_ttl: the shortest was kept",
            );
        }
        ttl = Some(ttl.map_or(secs, |t| t.min(secs)));
    }
    let url = match &cx.opts.issuer_url {
        Some(u) => u.clone(),
        None => {
            cx.report_in(
                "command line",
                "--issuer-url",
                format!("issuer.url is {DEFAULT_ISSUER_URL}"),
                "set it (or --issuer-url) to the URL clients reach the gateway at: it is the \
                 tokens' `iss`",
            );
            DEFAULT_ISSUER_URL.to_string()
        }
    };
    let mut m = vec![("url", s(&url))];
    if let Some(t) = ttl {
        let clamped = t.clamp(MIN_TTL_SECS, MAX_TTL_SECS);
        if clamped != t {
            cx.report_in(
                "user pool clients",
                "AccessTokenValidity",
                format!("access tokens live {t}s"),
                format!("the embedded issuer's token_ttl is 5m to 1d: {clamped}s was written"),
            );
        }
        m.push(("token_ttl", s(&format!("{clamped}s"))));
    }
    if !servers.is_empty() {
        m.push((
            "resource_servers",
            Y::Sequence(
                servers
                    .iter()
                    .map(|(id, scopes)| map([("identifier", s(id)), ("scopes", strings(scopes))]))
                    .collect(),
            ),
        ));
    }
    m.push(("clients", Y::Sequence(clients)));
    Some(map(m))
}
