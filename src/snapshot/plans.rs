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

/// Compiles `usage_plans`: throttles (per key), per-route throttles (by route index), quotas.
pub(super) fn compile_plans(
    parsed: &Parsed,
    registry: &Registry,
    routes: &[Route],
    errs: &mut Errors,
) -> Vec<Plan> {
    let mut plans = Vec::new();
    for (name, p) in &parsed.file.usage_plans {
        let path = format!("usage_plans.{name}");
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
            match routes.iter().find(|r| &*r.key == key.as_str()) {
                Some(r) => {
                    route_throttles.insert(
                        r.index,
                        registry
                            .limits()
                            .throttle(&format!("plan:{name}:route:{key}"), spec),
                    );
                }
                None => errs.at_key(
                    &format!("{path}.route_throttle"),
                    key,
                    format!("no route {key:?} is defined"),
                ),
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
                records.push((
                    KeyRecord {
                        id: k.id.clone(),
                        hash,
                        plan: k.plan.clone(),
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
        let plan = match &rec.plan {
            Some(name) => match plans.iter().position(|p| &*p.name == name.as_str()) {
                Some(i) => Some(i),
                None => {
                    at(
                        errs,
                        "plan",
                        format!("key {:?}: usage plan {name:?} is not defined", rec.id),
                    );
                    continue;
                }
            },
            None => None,
        };
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
            plan,
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
