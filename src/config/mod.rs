//! Reading `gateway.yaml`: the file schema ([`schema`]), the units it is written in ([`units`]),
//! where each value sits in the text ([`source_map`]), and [`ConfigError`], the one error shape
//! every load and validation problem is reported in (`FILE:LINE:COL: message`).
//!
//! This module only reads and parses. Turning a parsed file into something that serves requests
//! is `crate::snapshot`'s job.

pub mod schema;
pub mod source_map;
pub mod units;

use std::fmt;
use std::path::{Path, PathBuf};

use self::schema::FileConfig;
use self::source_map::{Pos, SourceMap};

/// One problem in a config file, located to a line and column.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    /// The file the problem is in.
    pub file: PathBuf,
    /// 1-based line (0 when the problem is the file as a whole, e.g. unreadable).
    pub line: usize,
    /// 1-based column.
    pub col: usize,
    /// What is wrong, for an operator.
    pub message: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.line == 0 {
            write!(f, "{}: {}", self.file.display(), self.message)
        } else {
            write!(
                f,
                "{}:{}:{}: {}",
                self.file.display(),
                self.line,
                self.col,
                self.message
            )
        }
    }
}

/// A parsed config file together with what is needed to locate its values.
#[derive(Debug)]
pub struct Parsed {
    /// The typed file contents.
    pub file: FileConfig,
    /// Positions of every value in the text.
    pub map: SourceMap,
    /// The path the file was read from.
    pub path: PathBuf,
    /// The directory relative paths in the file are resolved against.
    pub base_dir: PathBuf,
    /// SHA-256 of the file's bytes, hex (shown at `/config`).
    pub hash: String,
}

impl Parsed {
    /// An error located at the value under `path` (`routes.2.upstream`).
    pub fn error_at(&self, path: &str, message: impl Into<String>) -> ConfigError {
        let Pos { line, col } = self.map.locate(path);
        ConfigError {
            file: self.path.clone(),
            line,
            col,
            message: message.into(),
        }
    }

    /// `FILE:LINE:COL` of the value under `path`, for warnings.
    pub fn location(&self, path: &str) -> String {
        let Pos { line, col } = self.map.locate(path);
        format!("{}:{line}:{col}", self.path.display())
    }

    /// An error located at a mapping key (`authorizers` / `cognito`).
    pub fn error_at_key(&self, parent: &str, key: &str, message: impl Into<String>) -> ConfigError {
        let Pos { line, col } = self.map.locate_key(parent, key);
        ConfigError {
            file: self.path.clone(),
            line,
            col,
            message: message.into(),
        }
    }

    /// Resolves a path named in the config relative to the config file's directory.
    pub fn resolve(&self, p: &Path) -> PathBuf {
        if p.is_absolute() {
            p.to_path_buf()
        } else {
            self.base_dir.join(p)
        }
    }
}

/// Reads and parses a config file. Refuses an unreadable file, YAML that does not parse, and any
/// key or value the schema does not accept, each as a located [`ConfigError`].
pub fn read(path: &Path) -> Result<Parsed, ConfigError> {
    let bytes = std::fs::read(path).map_err(|e| ConfigError {
        file: path.to_path_buf(),
        line: 0,
        col: 0,
        message: format!("cannot read config: {e}"),
    })?;
    let text = String::from_utf8(bytes).map_err(|e| ConfigError {
        file: path.to_path_buf(),
        line: 0,
        col: 0,
        message: format!("config is not UTF-8: {e}"),
    })?;
    parse(path, &text)
}

/// Parses config text as if read from `path`. Refuses a line break other than LF or CRLF (see
/// `odd_line_break`) before anything else.
pub fn parse(path: &Path, text: &str) -> Result<Parsed, ConfigError> {
    if let Some((line, col, what)) = odd_line_break(text) {
        return Err(ConfigError {
            file: path.to_path_buf(),
            line,
            col,
            message: format!(
                "{what} is a line break in YAML; tollgate counts lines by LF, so use LF or CRLF line ends"
            ),
        });
    }
    let file: FileConfig = serde_norway::from_str(text).map_err(|e| {
        let (line, col) = e
            .location()
            .map(|l| (l.line(), l.column()))
            .unwrap_or((1, 1));
        ConfigError {
            file: path.to_path_buf(),
            line,
            col,
            message: strip_location(&e.to_string()),
        }
    })?;
    let map = SourceMap::build(text);
    if let Some((key, Pos { line, col })) = map.duplicates.first() {
        return Err(ConfigError {
            file: path.to_path_buf(),
            line: *line,
            col: *col,
            message: format!("duplicate key `{key}`: each key may appear once"),
        });
    }
    let base_dir = crate::util::parent_dir(path).to_path_buf();
    Ok(Parsed {
        file,
        map,
        path: path.to_path_buf(),
        base_dir,
        hash: crate::util::sha256_hex(text.as_bytes()),
    })
}

/// The first line break YAML (1.1, as libyaml reads it) sees but an editor counting LF does not:
/// a CR not followed by LF, NEL (U+0085), LINE SEPARATOR (U+2028) or PARAGRAPH SEPARATOR
/// (U+2029), with its line and column counted by LF. Refused because every location tollgate
/// reports would otherwise point past the line the operator sees (found by fuzzing).
fn odd_line_break(text: &str) -> Option<(usize, usize, &'static str)> {
    let mut line = 1;
    let mut col = 1;
    let mut chars = text.chars().peekable();
    while let Some(c) = chars.next() {
        let odd = match c {
            '\n' => {
                line += 1;
                col = 1;
                continue;
            }
            '\r' if chars.peek() != Some(&'\n') => {
                Some("a carriage return (CR) without a line feed")
            }
            '\u{85}' => Some("NEL (U+0085)"),
            '\u{2028}' => Some("LINE SEPARATOR (U+2028)"),
            '\u{2029}' => Some("PARAGRAPH SEPARATOR (U+2029)"),
            _ => None,
        };
        if let Some(what) = odd {
            return Some((line, col, what));
        }
        col += 1;
    }
    None
}

/// serde_norway appends " at line L column C" to messages; we print the location ourselves.
fn strip_location(msg: &str) -> String {
    match msg.find(" at line ") {
        Some(i) => msg[..i].to_string(),
        None => msg.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn line_breaks_yaml_sees_but_editors_do_not_are_refused_where_they_are() {
        let path = Path::new("gateway.yaml");
        for (text, line, col) in [
            ("listeners: []\nroutes:\r  x: 1\n", 2, 8),
            ("a: 1\r\nb: \u{85}\n", 2, 4),
            ("a: \"x\u{2028}y\"\n", 1, 6),
            ("\u{2029}", 1, 1),
        ] {
            let Err(e) = parse(path, text) else {
                panic!("{text:?} accepted")
            };
            assert_eq!((e.line, e.col), (line, col), "{text:?}: {e}");
            assert!(e.message.contains("line break"), "{e}");
        }
        // CRLF files are fine: the error (if any) is not about line breaks.
        let Err(e) = parse(path, "listeners: []\r\nnope: 1\r\n") else {
            panic!("an unknown key accepted")
        };
        assert!(!e.message.contains("line break"), "{e}");
        assert_eq!(e.line, 2);
    }
}
