//! Where each value of a YAML document sits, so that errors found after deserialisation
//! (an undefined upstream, a route key that does not parse) can still name `FILE:LINE:COL`.
//!
//! serde_norway reports positions for syntax and type errors itself but keeps no spans on the
//! values it produces. This module walks the same text once with yaml-rust2's event parser and
//! records the position of every node under its path (`routes.3.upstream`).

use std::collections::HashMap;

use yaml_rust2::parser::{Event, MarkedEventReceiver, Parser};
use yaml_rust2::scanner::Marker;

/// Line and column (both 1-based) of a node in the source text.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Pos {
    /// 1-based line.
    pub line: usize,
    /// 1-based column.
    pub col: usize,
}

/// Maps dotted paths (`routes.0.route`, `authorizers.cognito`) to positions. Mapping keys map to
/// the position of their value; `path!key` maps to the position of the key itself.
#[derive(Debug, Default, Clone)]
pub struct SourceMap {
    positions: HashMap<String, Pos>,
    /// Mapping keys that appear twice in the same mapping (`upstreams.a`), at their second
    /// occurrence. YAML parsers silently keep the last one; tollgate refuses the file.
    pub duplicates: Vec<(String, Pos)>,
}

impl SourceMap {
    /// Builds the map from YAML text. Text that does not parse yields an empty map: the serde
    /// pass reports the syntax error with its own position.
    pub fn build(text: &str) -> SourceMap {
        let mut walker = Walker::default();
        let mut parser = Parser::new_from_str(text);
        if parser.load(&mut walker, false).is_err() {
            return SourceMap::default();
        }
        SourceMap {
            positions: walker.positions,
            duplicates: walker.duplicates,
        }
    }

    /// The position of the node at `path`, or of its nearest recorded ancestor; line 1 col 1
    /// when nothing is known (an empty file).
    pub fn locate(&self, path: &str) -> Pos {
        let mut p = path;
        loop {
            if let Some(pos) = self.positions.get(p) {
                return *pos;
            }
            match p.rfind(['.', '!']) {
                Some(i) => p = &p[..i],
                None => {
                    return self
                        .positions
                        .get("")
                        .copied()
                        .unwrap_or(Pos { line: 1, col: 1 });
                }
            }
        }
    }

    /// The position of a mapping key itself (`authorizers!cognito`), else of its value.
    pub fn locate_key(&self, parent: &str, key: &str) -> Pos {
        let k = if parent.is_empty() {
            format!("!{key}")
        } else {
            format!("{parent}!{key}")
        };
        match self.positions.get(&k) {
            Some(p) => *p,
            None => self.locate(&join(parent, key)),
        }
    }
}

/// Joins a parent path and a child segment with a dot.
pub fn join(parent: &str, child: &str) -> String {
    if parent.is_empty() {
        child.to_string()
    } else {
        format!("{parent}.{child}")
    }
}

enum Frame {
    /// A mapping; `key` is the pending key once read, `None` while expecting one.
    Map { path: String, key: Option<String> },
    /// A sequence and the index of its next item.
    Seq { path: String, next: usize },
}

#[derive(Default)]
struct Walker {
    stack: Vec<Frame>,
    positions: HashMap<String, Pos>,
    duplicates: Vec<(String, Pos)>,
}

impl Walker {
    /// The path of the node that starts now, or `None` when this scalar is a mapping key.
    fn child_path(&mut self, scalar: Option<&str>, mark: Marker) -> Option<String> {
        let pos = Pos {
            line: mark.line(),
            col: mark.col() + 1,
        };
        match self.stack.last_mut() {
            None => Some(String::new()),
            Some(Frame::Seq { path, next }) => {
                let p = join(path, &next.to_string());
                *next += 1;
                Some(p)
            }
            Some(Frame::Map { path, key }) => match key.take() {
                Some(k) => Some(join(path, &k)),
                None => {
                    // This node is a key.
                    let k = scalar.unwrap_or("?").to_string();
                    let key_path = if path.is_empty() {
                        format!("!{k}")
                    } else {
                        format!("{path}!{k}")
                    };
                    if self.positions.insert(key_path, pos).is_some() {
                        self.duplicates.push((join(path, &k), pos));
                    }
                    *key = Some(k);
                    None
                }
            },
        }
    }
}

impl MarkedEventReceiver for Walker {
    fn on_event(&mut self, ev: Event, mark: Marker) {
        let pos = Pos {
            line: mark.line(),
            col: mark.col() + 1,
        };
        match ev {
            Event::Scalar(value, ..) => {
                if let Some(p) = self.child_path(Some(&value), mark) {
                    self.positions.insert(p, pos);
                }
            }
            Event::Alias(_) => {
                if let Some(p) = self.child_path(None, mark) {
                    self.positions.insert(p, pos);
                }
            }
            Event::MappingStart(..) => {
                let path = self.child_path(None, mark).unwrap_or_default();
                self.positions.entry(path.clone()).or_insert(pos);
                self.stack.push(Frame::Map { path, key: None });
            }
            Event::SequenceStart(..) => {
                let path = self.child_path(None, mark).unwrap_or_default();
                self.positions.entry(path.clone()).or_insert(pos);
                self.stack.push(Frame::Seq { path, next: 0 });
            }
            Event::MappingEnd | Event::SequenceEnd => {
                self.stack.pop();
            }
            Event::Nothing
            | Event::StreamStart
            | Event::StreamEnd
            | Event::DocumentStart
            | Event::DocumentEnd => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_nested_values_keys_and_sequence_items() {
        let text = "listeners:\n  - bind: 0.0.0.0:8080\nroutes:\n  - { route: \"GET /a\", upstream: x }\n  - route: GET /b\n    upstream: y\n";
        let m = SourceMap::build(text);
        assert_eq!(m.locate("listeners.0.bind"), Pos { line: 2, col: 11 });
        assert_eq!(m.locate("routes.1.upstream"), Pos { line: 6, col: 15 });
        assert_eq!(m.locate("routes.0.upstream").line, 4);
        assert_eq!(m.locate_key("", "routes"), Pos { line: 3, col: 1 });
        // Unknown child falls back to the nearest ancestor.
        assert_eq!(m.locate("routes.1.nothing"), m.locate("routes.1"));
    }

    #[test]
    fn duplicate_keys_are_found() {
        let m = SourceMap::build("upstreams:\n  a: {}\n  b: {}\n  a: {}\nroutes: []\n");
        assert_eq!(
            m.duplicates,
            vec![("upstreams.a".to_string(), Pos { line: 4, col: 3 })]
        );
        let m = SourceMap::build("routes:\n  - { route: x }\n  - { route: y }\n");
        assert!(
            m.duplicates.is_empty(),
            "same key in different sequence items is fine"
        );
    }

    #[test]
    fn broken_yaml_gives_an_empty_map() {
        let m = SourceMap::build("a: [1, 2\n");
        assert_eq!(m.locate("a"), Pos { line: 1, col: 1 });
    }
}
