//! API keys: the table of keys a snapshot accepts, built from `api_keys.keys` and an optional
//! CSV import in the managed gateway's export format, looked up by the SHA-256 of the presented
//! key (so the cost does not grow with the number of keys and no comparison of secrets leaks
//! timing). Keys are kept only as hashes; literal keys are hashed at load.

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;

use http::{HeaderMap, HeaderName, HeaderValue};

use crate::config::ConfigError;

/// Longest API key accepted in a request; longer values are refused without hashing.
pub const MAX_KEY_LEN: usize = 1024;

/// One API key as the gateway keeps it.
#[derive(Debug)]
pub struct ApiKey {
    /// The key's id (name).
    pub id: Arc<str>,
    /// The id, ready for `x-tollgate-api-key-id`.
    pub id_header: HeaderValue,
    /// Indexes of its usage plans in the snapshot's plans (none, one, or several that cover
    /// different APIs).
    pub plans: Box<[usize]>,
    /// Disabled keys are refused.
    pub enabled: bool,
}

/// Why a key was refused (all answer 403; the reason goes to the log).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyError {
    /// No key header.
    Missing,
    /// Not a key we know.
    Unknown,
    /// Known but disabled.
    Disabled,
    /// Known, but none of its usage plans covers the API called.
    NotForApi,
}

impl KeyError {
    /// The `reason` label.
    pub fn reason(self) -> &'static str {
        match self {
            KeyError::Missing => "api_key_missing",
            KeyError::Unknown => "api_key_unknown",
            KeyError::Disabled => "api_key_disabled",
            KeyError::NotForApi => "key_not_for_api",
        }
    }
}

/// A key as read from config or CSV, before plans are resolved.
#[derive(Debug)]
pub struct KeyRecord {
    /// Id.
    pub id: String,
    /// SHA-256 of the key.
    pub hash: [u8; 32],
    /// Plan names.
    pub plans: Vec<String>,
    /// Enabled.
    pub enabled: bool,
    /// Line in the CSV it came from (`None` for keys written in the config).
    pub line: Option<usize>,
}

/// The accepted keys.
#[derive(Debug)]
pub struct KeyTable {
    header: HeaderName,
    by_hash: HashMap<[u8; 32], ApiKey>,
}

impl KeyTable {
    /// A table reading keys from `header`.
    pub fn new(header: HeaderName, keys: HashMap<[u8; 32], ApiKey>) -> KeyTable {
        KeyTable {
            header,
            by_hash: keys,
        }
    }

    /// The header keys are read from.
    pub fn header(&self) -> &HeaderName {
        &self.header
    }

    /// The key presented in `headers`. Refuses a missing, unknown or disabled key.
    pub fn lookup(&self, headers: &HeaderMap) -> Result<&ApiKey, KeyError> {
        let presented = headers
            .get(&self.header)
            .ok_or(KeyError::Missing)?
            .as_bytes();
        if presented.is_empty() {
            return Err(KeyError::Missing);
        }
        if presented.len() > MAX_KEY_LEN {
            return Err(KeyError::Unknown);
        }
        let key = self
            .by_hash
            .get(&crate::util::sha256(presented))
            .ok_or(KeyError::Unknown)?;
        if !key.enabled {
            return Err(KeyError::Disabled);
        }
        Ok(key)
    }

    /// The key with this id (admin `/usage`; a linear scan, fine for an admin call).
    pub fn by_id(&self, id: &str) -> Option<&ApiKey> {
        self.by_hash.values().find(|k| &*k.id == id)
    }

    /// Number of keys.
    pub fn len(&self) -> usize {
        self.by_hash.len()
    }

    /// Whether there are no keys.
    pub fn is_empty(&self) -> bool {
        self.by_hash.is_empty()
    }
}

/// Parses a configured key: `sha256:<64 hex>` as is; anything else is a literal key, hashed
/// (the caller warns). Returns the hash and whether it was literal.
pub fn parse_key(s: &str) -> Result<([u8; 32], bool), String> {
    if let Some(hex_part) = s.strip_prefix("sha256:") {
        let bytes = hex::decode(hex_part)
            .map_err(|_| "sha256: must be followed by 64 hex digits".to_string())?;
        let arr: [u8; 32] = bytes
            .try_into()
            .map_err(|_| "sha256: must be followed by 64 hex digits".to_string())?;
        Ok((arr, false))
    } else if s.is_empty() {
        Err("an API key cannot be empty".into())
    } else {
        Ok((crate::util::sha256(s.as_bytes()), true))
    }
}

/// Reads a CSV of keys in the managed gateway's export format: columns `Name`, `Key`,
/// `Description`, `Enabled`, `UsagePlanIds` in any order and case; other columns ignored.
/// `Name` and `Key` are required; `Enabled` false (any case) disables; `UsagePlanIds` names
/// plans, separated by `,` or `;`. Each bad row is an error naming its line. Returns the records and how many
/// keys were literal (to warn once).
pub fn read_csv(path: &Path) -> Result<(Vec<KeyRecord>, usize), Vec<ConfigError>> {
    let err = |line: usize, message: String| ConfigError {
        file: path.to_path_buf(),
        line,
        col: if line == 0 { 0 } else { 1 },
        message,
    };
    let mut reader = csv::ReaderBuilder::new()
        .flexible(true)
        .trim(csv::Trim::All)
        .from_path(path)
        .map_err(|e| vec![err(0, format!("cannot read API key import: {e}"))])?;
    let headers = reader
        .headers()
        .map_err(|e| vec![err(1, format!("cannot read the header row: {e}"))])?
        .clone();
    let col = |name: &str| headers.iter().position(|h| h.eq_ignore_ascii_case(name));
    let (Some(name_col), Some(key_col)) = (col("name"), col("key")) else {
        return Err(vec![err(
            1,
            "the header row needs at least the columns Name and Key".into(),
        )]);
    };
    let enabled_col = col("enabled");
    let plans_col = col("usageplanids");
    let mut out = Vec::new();
    let mut errors = Vec::new();
    let mut literal = 0;
    for (i, row) in reader.records().enumerate() {
        // The reader's own line count (by LF): a record count would drift from the lines an
        // editor shows when fields span lines or a lone CR ends a record (found by fuzzing).
        let line = match &row {
            Ok(r) => r.position(),
            Err(e) => e.position(),
        }
        .map_or(i + 2, |p| p.line() as usize);
        let row = match row {
            Ok(r) => r,
            Err(e) => {
                errors.push(err(line, format!("unreadable row: {e}")));
                continue;
            }
        };
        let get = |c: Option<usize>| c.and_then(|c| row.get(c)).unwrap_or("");
        let id = get(Some(name_col));
        if id.is_empty() {
            errors.push(err(line, "Name is empty".into()));
            continue;
        }
        let (hash, was_literal) = match parse_key(get(Some(key_col))) {
            Ok(x) => x,
            Err(e) => {
                errors.push(err(line, format!("key {id:?}: {e}")));
                continue;
            }
        };
        literal += usize::from(was_literal);
        let enabled = match get(enabled_col).to_ascii_lowercase().as_str() {
            "" | "true" | "yes" | "1" => true,
            "false" | "no" | "0" => false,
            other => {
                errors.push(err(
                    line,
                    format!("key {id:?}: Enabled must be true or false, not {other:?}"),
                ));
                continue;
            }
        };
        let plans: Vec<&str> = get(plans_col)
            .split([',', ';'])
            .map(str::trim)
            .filter(|p| !p.is_empty())
            .collect();
        out.push(KeyRecord {
            id: id.to_string(),
            hash,
            plans: plans.iter().map(|p| p.to_string()).collect(),
            enabled,
            line: Some(line),
        });
    }
    if errors.is_empty() {
        Ok((out, literal))
    } else {
        Err(errors)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn configured_keys_hashed_or_literal() {
        let (h, lit) =
            parse_key("sha256:9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08")
                .unwrap();
        assert!(!lit);
        assert_eq!(h, crate::util::sha256(b"test"));
        let (h2, lit) = parse_key("test").unwrap();
        assert!(lit);
        assert_eq!(h, h2);
        assert!(parse_key("sha256:abc").is_err());
        assert!(parse_key("").is_err());
    }

    #[test]
    fn csv_in_any_column_order_and_case() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("keys.csv");
        std::fs::write(
            &p,
            "usageplanids,KEY,Extra,name,Enabled,Description\n\
             gold,key-one,x,partner-a,TRUE,first\n\
             ,key-two,x,partner-b,false,second\n\
             \"gold\",sha256:9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08,,partner-c,,\n",
        )
        .unwrap();
        let (recs, literal) = read_csv(&p).unwrap();
        assert_eq!(literal, 2);
        assert_eq!(recs.len(), 3);
        assert_eq!(
            (recs[0].id.as_str(), recs[0].plans.clone(), recs[0].enabled),
            ("partner-a", vec!["gold".to_string()], true)
        );
        assert_eq!((recs[1].plans.is_empty(), recs[1].enabled), (true, false));
        assert_eq!(recs[2].hash, crate::util::sha256(b"test"));
    }

    #[test]
    fn csv_errors_name_their_line() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("keys.csv");
        std::fs::write(&p, "Name,Key,Enabled,UsagePlanIds\na,k1,true,gold\n,k2,true,\nc,k3,maybe,\nd,k4,true,\"gold, silver;bronze\"\ne,k5,true,x\n,k6,true,\n").unwrap();
        let errs = read_csv(&p).unwrap_err();
        let lines: Vec<usize> = errs.iter().map(|e| e.line).collect();
        assert_eq!(lines, vec![3, 4, 7]);
        assert!(errs[1].message.contains("Enabled must be true or false"));
        std::fs::write(&p, "Name,Key,UsagePlanIds\nd,k4,\"gold, silver;bronze\"\n").unwrap();
        assert_eq!(
            read_csv(&p).unwrap().0[0].plans,
            ["gold", "silver", "bronze"]
        );
        std::fs::write(&p, "Id,Secret\na,b\n").unwrap();
        assert!(
            read_csv(&p).unwrap_err()[0]
                .message
                .contains("Name and Key")
        );
    }
}
