//! The route table: parsing route keys (`GET /products/{id}`, `ANY /public/{proxy+}`,
//! `$default`) and finding the route for a request.
//!
//! Priority, as the contract sets it: literal segments over `{name}` over `{name+}` over
//! `$default`, and a route for the request's method over an `ANY` route with the same path.
//! Non-greedy templates live in one radix tree (matchit gives literals priority over parameters)
//! and greedy ones in a second, consulted only when the first has no match, so a `{name}` route
//! always beats a `{name+}` route. A greedy `{name+}` also matches the empty tail (`/public` and
//! `/public/` for `/public/{proxy+}`).

use std::collections::HashMap;

use http::Method;

/// Which methods a route serves.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum MethodSel {
    /// `ANY`
    Any,
    /// One method.
    One(Method),
}

/// A parsed route key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RouteKey {
    /// `$default`: requests no other route takes.
    Default,
    /// `METHOD /path`
    Path {
        /// The method selector.
        method: MethodSel,
        /// Segments of the path template.
        segments: Vec<Segment>,
    },
}

/// One path segment of a template.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Segment {
    /// Matches itself.
    Literal(String),
    /// `{name}`: one segment.
    Param(String),
    /// `{name+}`: the rest of the path, possibly empty; only last.
    Greedy(String),
}

impl RouteKey {
    /// Parses a route key. Refuses: a missing method or path, lower-case or non-token methods,
    /// a path not starting with `/`, empty segments, braces inside literals, bad parameter
    /// names, a greedy parameter that is not last, and a parameter name used twice.
    pub fn parse(s: &str) -> Result<RouteKey, String> {
        if s == "$default" {
            return Ok(RouteKey::Default);
        }
        let (m, path) = s.split_once(' ').ok_or_else(|| {
            format!("route key {s:?} must be `METHOD /path`, `ANY /path` or `$default`")
        })?;
        let method = if m == "ANY" {
            MethodSel::Any
        } else if !m.is_empty() && m.bytes().all(|b| b.is_ascii_uppercase()) {
            MethodSel::One(
                Method::from_bytes(m.as_bytes()).map_err(|_| format!("bad method {m:?}"))?,
            )
        } else {
            return Err(format!(
                "method {m:?} must be an upper-case HTTP method or ANY"
            ));
        };
        if !path.starts_with('/') {
            return Err(format!("route path {path:?} must start with /"));
        }
        let mut segments = Vec::new();
        let parts: Vec<&str> = if path == "/" {
            Vec::new()
        } else {
            path[1..].split('/').collect()
        };
        let mut names = Vec::new();
        for (i, part) in parts.iter().enumerate() {
            if part.is_empty() {
                return Err(format!("route path {path:?} has an empty segment"));
            }
            let seg = if let Some(inner) = part.strip_prefix('{').and_then(|p| p.strip_suffix('}'))
            {
                let (name, greedy) = match inner.strip_suffix('+') {
                    Some(n) => (n, true),
                    None => (inner, false),
                };
                if name.is_empty()
                    || !name
                        .bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
                {
                    return Err(format!("bad parameter {part:?} in route path {path:?}"));
                }
                if names.contains(&name) {
                    return Err(format!("parameter {name:?} appears twice in {path:?}"));
                }
                names.push(name);
                if greedy {
                    if i + 1 != parts.len() {
                        return Err(format!(
                            "greedy parameter {part:?} must be the last segment"
                        ));
                    }
                    Segment::Greedy(name.to_string())
                } else {
                    Segment::Param(name.to_string())
                }
            } else if part.contains(['{', '}', '*']) {
                return Err(format!(
                    "segment {part:?} in {path:?}: use {{name}} or {{name+}} for parameters"
                ));
            } else if part.contains(['%', ';', '\\']) || part.bytes().any(|b| b < 0x21 || b == 0x7f)
            {
                // Requests are matched on their decoded canonical path (crate::canonical), so a
                // literal is written as the characters it matches, never as escapes.
                return Err(format!(
                    "segment {part:?} in {path:?}: write characters, not percent-escapes, and no `;`, `\\` or control characters"
                ));
            } else {
                Segment::Literal((*part).to_string())
            };
            segments.push(seg);
        }
        Ok(RouteKey::Path { method, segments })
    }
}

/// The tree templates of one route: its matchit form, and whether it is greedy. A greedy route
/// also yields the templates matching its empty tail.
fn templates(segments: &[Segment]) -> (bool, Vec<String>) {
    let mut t = String::new();
    let mut greedy = false;
    for (i, s) in segments.iter().enumerate() {
        match s {
            Segment::Literal(l) => {
                t.push('/');
                t.push_str(l);
            }
            Segment::Param(_) => t.push_str(&format!("/{{p{i}}}")),
            Segment::Greedy(_) => {
                greedy = true;
                let base = t.clone();
                let mut with_slash = base.clone();
                with_slash.push('/');
                t.push_str(&format!("/{{*p{i}}}"));
                let mut all = vec![t];
                if !base.is_empty() {
                    all.push(base);
                }
                all.push(with_slash);
                return (greedy, all);
            }
        }
    }
    if t.is_empty() {
        t.push('/');
    }
    (greedy, vec![t])
}

#[derive(Clone, Default)]
struct Trees {
    exact: matchit::Router<usize>,
    greedy: matchit::Router<usize>,
}

impl Trees {
    fn find(&self, path: &str) -> Option<usize> {
        if let Ok(m) = self.exact.at(path) {
            return Some(*m.value);
        }
        self.greedy.at(path).ok().map(|m| *m.value)
    }
}

/// An immutable route table mapping requests to indexes of the routes given at build time.
#[derive(Clone, Default)]
pub struct RouteTable {
    /// Trees of each method some route names, searched in order: a table names a handful of
    /// methods, and comparing standard methods is cheaper than hashing one.
    by_method: Vec<(Method, Trees)>,
    any: Trees,
    default: Option<usize>,
}

impl std::fmt::Debug for RouteTable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RouteTable")
            .field(
                "methods",
                &self.by_method.iter().map(|(m, _)| m).collect::<Vec<_>>(),
            )
            .field("default", &self.default)
            .finish()
    }
}

/// A route table that could not be built: which key (by index) and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RouteConflict {
    /// Index of the offending route.
    pub index: usize,
    /// Index of the earlier route it collides with, if any.
    pub first: Option<usize>,
    /// What is wrong.
    pub message: String,
}

impl RouteTable {
    /// Builds a table from parsed keys; route `i` is reported by lookups as `i`. Refuses two
    /// routes with the same method and the same path shape (`/a/{x}` and `/a/{y}` are the same
    /// shape) and a second `$default`.
    pub fn build(keys: &[RouteKey]) -> Result<RouteTable, RouteConflict> {
        RouteTable::build_from(keys, 0)
    }

    /// [`RouteTable::build`], with lookups reporting route `i` as `first + i` (one API's routes
    /// inside the snapshot's list of all routes). Conflicts name positions in `keys`.
    pub fn build_from(keys: &[RouteKey], first: usize) -> Result<RouteTable, RouteConflict> {
        let mut table = RouteTable::default();
        let mut seen: HashMap<(MethodSel, String), usize> = HashMap::new();
        let mut parsed = Vec::new();
        for (i, key) in keys.iter().enumerate() {
            match key {
                RouteKey::Default => {
                    if let Some(earlier) = table.default {
                        return Err(RouteConflict {
                            index: i,
                            first: Some(earlier - first),
                            message: "$default is defined twice".to_string(),
                        });
                    }
                    table.default = Some(first + i);
                }
                RouteKey::Path { method, segments } => {
                    let (greedy, tpls) = templates(segments);
                    if let Some(earlier) = seen.insert((method.clone(), tpls[0].clone()), i) {
                        return Err(RouteConflict {
                            index: i,
                            first: Some(earlier),
                            message:
                                "duplicate route: same method and path shape as an earlier route"
                                    .to_string(),
                        });
                    }
                    parsed.push((i, method.clone(), greedy, tpls));
                }
            }
        }
        let methods: Vec<Method> = parsed
            .iter()
            .filter_map(|(_, m, _, _)| match m {
                MethodSel::One(m) => Some(m.clone()),
                MethodSel::Any => None,
            })
            .collect();
        for m in methods {
            if table.by_method.iter().any(|(seen, _)| *seen == m) {
                continue;
            }
            let mut trees = Trees::default();
            // The method's own routes first, so they win over ANY routes of the same shape.
            for (i, sel, greedy, tpls) in &parsed {
                if *sel == MethodSel::One(m.clone()) {
                    insert(&mut trees, first, *i, *greedy, tpls)?;
                }
            }
            for (i, sel, greedy, tpls) in &parsed {
                if *sel == MethodSel::Any {
                    insert(&mut trees, first, *i, *greedy, tpls)?;
                }
            }
            table.by_method.push((m, trees));
        }
        for (i, sel, greedy, tpls) in &parsed {
            if *sel == MethodSel::Any {
                insert(&mut table.any, first, *i, *greedy, tpls)?;
            }
        }
        Ok(table)
    }

    /// The index of the route serving `method` on `path`, if any (falling back to `$default`).
    pub fn find(&self, method: &Method, path: &str) -> Option<usize> {
        let trees = self
            .by_method
            .iter()
            .find(|(m, _)| m == method)
            .map_or(&self.any, |(_, t)| t);
        trees.find(path).or(self.default)
    }
}

/// Inserts a route's templates; a template already present (from a more specific route of the
/// same method, or a literal route for a greedy route's empty tail) keeps its first owner.
fn insert(
    trees: &mut Trees,
    first: usize,
    i: usize,
    greedy: bool,
    tpls: &[String],
) -> Result<(), RouteConflict> {
    let tree = if greedy {
        &mut trees.greedy
    } else {
        &mut trees.exact
    };
    for t in tpls {
        match tree.insert(t.clone(), first + i) {
            Ok(()) => {}
            Err(matchit::InsertError::Conflict { .. }) => {}
            Err(e) => {
                return Err(RouteConflict {
                    index: i,
                    first: None,
                    message: format!("route cannot be added to the table: {e}"),
                });
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn table(keys: &[&str]) -> RouteTable {
        let parsed: Vec<RouteKey> = keys.iter().map(|k| RouteKey::parse(k).unwrap()).collect();
        RouteTable::build(&parsed).unwrap()
    }

    fn find(t: &RouteTable, m: &str, p: &str) -> Option<usize> {
        t.find(&Method::from_bytes(m.as_bytes()).unwrap(), p)
    }

    #[test]
    fn parses_keys_and_refuses_bad_ones() {
        assert_eq!(RouteKey::parse("$default").unwrap(), RouteKey::Default);
        assert!(matches!(
            RouteKey::parse("GET /products/{id}").unwrap(),
            RouteKey::Path { method: MethodSel::One(m), segments } if m == Method::GET && segments.len() == 2
        ));
        for bad in [
            "GET",
            "get /x",
            "GET x",
            "GET /a//b",
            "GET /{proxy+}/x",
            "GET /a{b}",
            "GET /{}",
            "GET /{a}/{a}",
            "GET /a*",
            "GE-T /a",
            "$other",
        ] {
            assert!(RouteKey::parse(bad).is_err(), "{bad} should be refused");
        }
    }

    #[test]
    fn literal_beats_param_beats_greedy_beats_default() {
        let t = table(&[
            "GET /products/special",
            "GET /products/{id}",
            "GET /products/{proxy+}",
            "$default",
        ]);
        assert_eq!(find(&t, "GET", "/products/special"), Some(0));
        assert_eq!(find(&t, "GET", "/products/42"), Some(1));
        assert_eq!(find(&t, "GET", "/products/42/reviews"), Some(2));
        assert_eq!(
            find(&t, "GET", "/products"),
            Some(2),
            "greedy matches the empty tail"
        );
        assert_eq!(find(&t, "GET", "/products/"), Some(2));
        assert_eq!(find(&t, "GET", "/elsewhere"), Some(3));
        assert_eq!(find(&t, "POST", "/products/42"), Some(3));
    }

    #[test]
    fn method_beats_any_for_the_same_path_but_not_a_more_specific_path() {
        let t = table(&["ANY /items/{id}", "GET /items/{id}", "ANY /items/latest"]);
        assert_eq!(find(&t, "GET", "/items/7"), Some(1));
        assert_eq!(find(&t, "DELETE", "/items/7"), Some(0));
        assert_eq!(
            find(&t, "GET", "/items/latest"),
            Some(2),
            "literal path first"
        );
        assert_eq!(find(&t, "GET", "/nothing"), None);
    }

    #[test]
    fn root_and_root_greedy() {
        let t = table(&["GET /", "ANY /{proxy+}"]);
        assert_eq!(find(&t, "GET", "/"), Some(0));
        assert_eq!(find(&t, "POST", "/"), Some(1));
        assert_eq!(find(&t, "GET", "/a/b/c"), Some(1));
    }

    #[test]
    fn duplicates_are_refused() {
        let keys: Vec<RouteKey> = ["GET /a/{x}", "GET /a/{y}"]
            .iter()
            .map(|k| RouteKey::parse(k).unwrap())
            .collect();
        let e = RouteTable::build(&keys).unwrap_err();
        assert_eq!(e.index, 1);
        let keys = vec![RouteKey::Default, RouteKey::Default];
        assert!(RouteTable::build(&keys).is_err());
        // Same path, different methods: fine.
        table(&["GET /a", "POST /a", "ANY /a"]);
    }

    #[test]
    fn literal_route_takes_a_greedy_routes_empty_tail() {
        let t = table(&["GET /public", "GET /public/{rest+}"]);
        assert_eq!(find(&t, "GET", "/public"), Some(0));
        assert_eq!(find(&t, "GET", "/public/"), Some(1));
        assert_eq!(find(&t, "GET", "/public/x"), Some(1));
    }
}
