//! Compiling `usage_plans` and `api_keys`: throttles, per-route throttles and quotas by
//! plan, and the key table with plans resolved (config keys and the CSV import).

use super::errors::*;
use super::model::*;
use super::registry::Registry;
use std::collections::HashMap;
use std::str::FromStr;

use http::{HeaderName, HeaderValue};

use crate::apikeys::{ApiKey, KeyRecord, KeyTable};
use crate::config::{ConfigError, Parsed};
use crate::limits::{BucketSpec, QuotaSpec};

/// A bucket spec from config, or an error at `at`.
pub(super) fn spec_at(
    t: &crate::config::schema::ThrottleCfg,
    at: &str,
    errs: &mut Errors,
) -> Option<BucketSpec> {
    BucketSpec::new(t.rate, t.burst)
        .map_err(|e| errs.at(at, e))
        .ok()
}

/// The APIs a plan's `apis` list names: `NAME/STAGE` (the entry of API `NAME` at that stage)
/// or `NAME` (every entry of API `NAME`, whatever its stage).
fn plan_apis(list: &[String], path: &str, apis: &[Api], errs: &mut Errors) -> Box<[usize]> {
    let mut out = Vec::new();
    for (i, item) in list.iter().enumerate() {
        let at = format!("{path}.apis.{i}");
        let chosen = match api_entries(apis, item) {
            Ok(c) => c,
            Err(e) => {
                let name = item.split_once('/').map_or(item.as_str(), |(n, _)| n);
                let msg = match e {
                    ApiRefError::NoApi => format!("API {name:?} is not defined (see `apis`)"),
                    ApiRefError::NoStage(stages) => {
                        let has = if stages.is_empty() {
                            "no stage".to_string()
                        } else {
                            let list: Vec<String> =
                                stages.iter().map(|s| format!("{s:?}")).collect();
                            format!("stage {}", list.join(", "))
                        };
                        let stage = item.split_once('/').map_or("", |(_, s)| s);
                        format!(
                            "API {name:?} has {has}, not {stage:?}; write {name:?} for the API whatever its stage"
                        )
                    }
                };
                errs.at(&at, msg);
                continue;
            }
        };
        if chosen.iter().any(|i| out.contains(i)) {
            errs.at(&at, format!("{item:?} is listed twice"));
            continue;
        }
        out.extend(chosen);
    }
    out.into_boxed_slice()
}

/// Compiles `usage_plans`: the APIs each plan covers, throttles (per key), per-route throttles
/// (by route index, for the route of that key in each API the plan covers), quotas.
pub(super) fn compile_plans(
    parsed: &Parsed,
    registry: &Registry,
    apis: &[Api],
    routes: &[Route],
    errs: &mut Errors,
) -> Vec<Plan> {
    let mut plans = Vec::new();
    for (name, p) in &parsed.file.usage_plans {
        let path = format!("usage_plans.{name}");
        let covered = p.apis.as_ref().map(|l| plan_apis(l, &path, apis, errs));
        let throttle = p
            .throttle
            .as_ref()
            .and_then(|t| spec_at(t, &format!("{path}.throttle"), errs))
            .map(|spec| registry.limits().throttle(&format!("plan:{name}"), spec));
        let mut route_throttles = HashMap::new();
        for (key, t) in &p.route_throttle {
            let at = format!("{path}.route_throttle.{key}");
            let Some(spec) = spec_at(t, &at, errs) else {
                continue;
            };
            let mut found = false;
            for r in routes.iter().filter(|r| {
                &*r.key == key.as_str() && covered.as_ref().is_none_or(|c| c.contains(&r.api))
            }) {
                found = true;
                // The default API's buckets keep the names they had before `apis` existed.
                let bucket = match r.api {
                    0 => format!("plan:{name}:route:{key}"),
                    api => format!("plan:{name}:api:{}:route:{key}", apis[api].entry),
                };
                route_throttles.insert(r.index, registry.limits().throttle(&bucket, spec));
            }
            if !found {
                errs.at_key(
                    &format!("{path}.route_throttle"),
                    key,
                    format!("no route {key:?} is defined in the APIs this plan covers"),
                );
            }
        }
        let quota = p.quota.map(|q| QuotaSpec {
            limit: q.limit,
            period: q.period.into(),
        });
        if quota.is_some_and(|q| q.limit == 0) {
            errs.at(
                &format!("{path}.quota.limit"),
                "a quota limit must be at least 1",
            );
        }
        let m = &registry.metrics().plan_requests;
        plans.push(Plan {
            name: name.as_str().into(),
            throttle,
            route_throttles,
            quota,
            outcomes: PlanOutcomes {
                admitted: m.with_label_values(&[name.as_str(), "admitted"]),
                throttled: m.with_label_values(&[name.as_str(), "throttled"]),
                quota_exceeded: m.with_label_values(&[name.as_str(), "quota_exceeded"]),
            },
            apis: covered,
        });
    }
    plans
}

/// Compiles `api_keys`: the keys in the config and the CSV import, with their plans resolved.
/// Refuses unknown plans, duplicate ids and duplicate keys, each at its line.
pub(super) fn compile_keys(
    parsed: &Parsed,
    cfg: &crate::config::schema::ApiKeysCfg,
    plans: &[Plan],
    apis: &[Api],
    errs: &mut Errors,
) -> Option<KeyTable> {
    let header = match HeaderName::from_str(cfg.header.as_deref().unwrap_or("x-api-key")) {
        Ok(h) => h,
        Err(_) => {
            errs.at("api_keys.header", "not a valid header name");
            return None;
        }
    };
    let mut records: Vec<(KeyRecord, Option<String>)> = Vec::new();
    let mut literal = 0;
    for (i, k) in cfg.keys.iter().enumerate() {
        let path = format!("api_keys.keys.{i}");
        match crate::apikeys::parse_key(&k.key) {
            Ok((hash, was_literal)) => {
                if was_literal {
                    literal += 1;
                }
                if k.plan.is_some() && !k.plans.is_empty() {
                    errs.at(
                        &format!("{path}.plans"),
                        "write either `plan` or `plans`, not both",
                    );
                    continue;
                }
                records.push((
                    KeyRecord {
                        id: k.id.clone(),
                        hash,
                        plans: k.plan.iter().chain(&k.plans).cloned().collect(),
                        enabled: k.enabled,
                        line: None,
                    },
                    Some(path),
                ));
            }
            Err(e) => errs.at(&format!("{path}.key"), e),
        }
    }
    if literal > 0 {
        tracing::warn!(keys = literal, at = %parsed.location("api_keys.keys"), "API keys written in plain text are hashed at load; write them as sha256:<hex> (tollgate hash-key)");
    }
    let csv_path = cfg.import.as_ref().map(|p| parsed.resolve(p));
    if let Some(p) = &csv_path {
        match crate::apikeys::read_csv(p) {
            Ok((recs, literal)) => {
                if literal > 0 {
                    tracing::info!(keys = literal, file = %p.display(), "imported API keys hashed at load");
                }
                records.extend(recs.into_iter().map(|r| (r, None)));
            }
            Err(list) => {
                for e in list {
                    if e.line == 0 {
                        // The file as a whole (missing, unreadable): the key naming it is where
                        // the operator looks.
                        errs.at("api_keys.import", format!("{}: {}", p.display(), e.message));
                    } else {
                        errs.list.push(e);
                    }
                }
            }
        }
    }
    let mut by_hash = HashMap::with_capacity(records.len());
    let mut ids = std::collections::HashSet::with_capacity(records.len());
    for (rec, path) in records {
        let at = |errs: &mut Errors, field: &str, msg: String| match (&path, rec.line, &csv_path) {
            (Some(p), _, _) => errs.at(&format!("{p}.{field}"), msg),
            (None, Some(line), Some(csv)) => errs.list.push(ConfigError {
                file: csv.clone(),
                line,
                col: 1,
                message: msg,
            }),
            _ => errs.at("api_keys", msg),
        };
        let field = if rec.plans.len() > 1 { "plans" } else { "plan" };
        let mut key_plans: Vec<usize> = Vec::with_capacity(rec.plans.len());
        let mut bad = false;
        for name in &rec.plans {
            match plans.iter().position(|p| &*p.name == name.as_str()) {
                Some(i) if key_plans.contains(&i) => {
                    at(
                        errs,
                        field,
                        format!("key {:?}: usage plan {name:?} is listed twice", rec.id),
                    );
                    bad = true;
                }
                Some(i) => {
                    if let Some((j, clash)) = key_plans
                        .iter()
                        .find_map(|&j| overlap(&plans[j], &plans[i], apis).map(|c| (j, c)))
                    {
                        at(
                            errs,
                            field,
                            format!(
                                "key {:?}: usage plans {:?} and {name:?} both cover {clash}; a key's plans must cover different APIs",
                                rec.id, plans[j].name
                            ),
                        );
                        bad = true;
                    }
                    key_plans.push(i);
                }
                None => {
                    at(
                        errs,
                        field,
                        format!("key {:?}: usage plan {name:?} is not defined", rec.id),
                    );
                    bad = true;
                }
            }
        }
        if bad {
            continue;
        }
        if rec.id.is_empty() {
            at(errs, "id", "a key id cannot be empty".to_string());
            continue;
        }
        let Ok(id_header) = HeaderValue::from_str(&rec.id) else {
            at(
                errs,
                "id",
                format!("key id {:?} cannot be sent in a header", rec.id),
            );
            continue;
        };
        if !ids.insert(rec.id.clone()) {
            at(errs, "id", format!("key id {:?} is used twice", rec.id));
            continue;
        }
        let key = ApiKey {
            id: rec.id.as_str().into(),
            id_header,
            plans: key_plans.into_boxed_slice(),
            enabled: rec.enabled,
        };
        if by_hash.insert(rec.hash, key).is_some() {
            at(
                errs,
                "key",
                format!("key {:?} has the same key as another", rec.id),
            );
        }
    }
    Some(KeyTable::new(header, by_hash))
}

/// An API both plans cover, named for an error (`every API` when neither lists any).
fn overlap(a: &Plan, b: &Plan, apis: &[Api]) -> Option<String> {
    let name = |i: usize| match &apis[i].stage {
        Some(s) => format!("API {:?} at stage {s:?}", apis[i].name),
        None => format!("API {:?}", apis[i].name),
    };
    match (&a.apis, &b.apis) {
        (None, None) => Some("every API".to_string()),
        (None, Some(l)) | (Some(l), None) => l.first().map(|&i| name(i)),
        (Some(x), Some(y)) => x.iter().find(|i| y.contains(i)).map(|&i| name(i)),
    }
}
