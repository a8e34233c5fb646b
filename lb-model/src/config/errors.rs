//! Why a configuration is refused, and how a refusal reads: the file, the line and column,
//! the field path (`service[0].backend[1].weight`), the value and what is accepted.
//!
//! serde reports a bad value with its span (from `toml_edit`) and its path (from
//! `serde_path_to_error`); the value types of [`super::values`] word the message. serde's own
//! messages for what it checks itself (unknown keys, missing keys, a table where a value
//! belongs) are reworded here to say what is accepted, with a suggestion for a misspelt key.

use std::{fmt, path::PathBuf};

use crate::plan::PlanError;

/// One step of a field path.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Seg {
    Key(String),
    Index(usize),
}

/// A field path, e.g. `service[0].backend[1].weight` (indices from 0).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Path(pub Vec<Seg>);

impl Path {
    /// `self.key`.
    pub fn key(&self, key: &str) -> Path {
        let mut p = self.clone();
        p.0.push(Seg::Key(key.to_string()));
        p
    }

    /// `self[i]`.
    pub fn index(&self, i: usize) -> Path {
        let mut p = self.clone();
        p.0.push(Seg::Index(i));
        p
    }

    /// `self` followed by `rest`.
    pub fn join(&self, rest: &Path) -> Path {
        let mut p = self.clone();
        p.0.extend(rest.0.iter().cloned());
        p
    }

    /// A path of keys: `Path::of(&["health", "timeout"])`.
    pub fn of(keys: &[&str]) -> Path {
        Path(keys.iter().map(|k| Seg::Key(k.to_string())).collect())
    }

    /// The path serde_path_to_error tracked (enum variants left out: they are the command
    /// of a control request, not a field).
    pub fn from_serde(p: &serde_path_to_error::Path) -> Path {
        use serde_path_to_error::Segment;
        Path(
            p.iter()
                .filter_map(|s| match s {
                    Segment::Seq { index } => Some(Seg::Index(*index)),
                    Segment::Map { key } => Some(Seg::Key(key.clone())),
                    Segment::Enum { .. } => None,
                    Segment::Unknown => Some(Seg::Key("?".into())),
                })
                .collect(),
        )
    }
}

impl fmt::Display for Path {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, s) in self.0.iter().enumerate() {
            match s {
                Seg::Key(k) if i == 0 => write!(f, "{k}")?,
                Seg::Key(k) => write!(f, ".{k}")?,
                Seg::Index(n) => write!(f, "[{n}]")?,
            }
        }
        Ok(())
    }
}

/// A field refused by a check that involves several fields (made after serde read the
/// values), at `path` relative to the service (or control request) checked.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Invalid {
    pub path: Path,
    pub message: String,
}

/// Why a configuration cannot be used. Every variant names the file; all but `Read` name the
/// line, and `Syntax` / `Field` the column too.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("{}: cannot read the configuration: {error}", path.display())]
    Read {
        path: PathBuf,
        error: std::io::Error,
    },
    /// Not TOML.
    #[error("{origin}:{line}:{column}: not valid TOML: {message}")]
    Syntax {
        origin: String,
        line: usize,
        column: usize,
        message: String,
    },
    /// A key or value the configuration format does not accept (unknown key, missing key,
    /// wrong type, value out of range, ...).
    #[error("{origin}:{line}:{column}: field `{field}`: {message}")]
    Field {
        origin: String,
        line: usize,
        column: usize,
        /// Path of the field, e.g. `service[0].backend[1].weight` (indices from 0).
        field: String,
        message: String,
    },
    /// A definition refused by the planner ([`crate::plan`]), at the line of the service (or
    /// backend, or `maglev_size`) it concerns.
    #[error("{origin}:{line}: service {service:?}: {}", plan_message(.service, .error))]
    Plan {
        origin: String,
        line: usize,
        service: String,
        /// Boxed: the other variants are much smaller.
        error: Box<PlanError>,
    },
}

impl ConfigError {
    /// The line the error is about (1-based), if any.
    pub fn line(&self) -> Option<usize> {
        match self {
            ConfigError::Read { .. } => None,
            ConfigError::Syntax { line, .. }
            | ConfigError::Field { line, .. }
            | ConfigError::Plan { line, .. } => Some(*line),
        }
    }

    /// The field path the error is about, for [`ConfigError::Field`].
    pub fn field(&self) -> Option<&str> {
        match self {
            ConfigError::Field { field, .. } => Some(field),
            _ => None,
        }
    }
}

/// A [`PlanError`]'s message without the leading `service "x"` already given by the prefix.
pub fn plan_message(service: &str, error: &PlanError) -> String {
    let msg = error.to_string();
    let quoted = format!("service {service:?}");
    match msg.strip_prefix(&quoted) {
        Some(rest) if rest.starts_with(": ") => rest[2..].to_string(),
        Some(rest) if rest.starts_with(' ') => rest[1..].to_string(),
        _ => msg,
    }
}

/// 1-based line and column (in characters) of a byte offset of `text`.
pub fn line_col(text: &str, offset: usize) -> (usize, usize) {
    let mut offset = offset.min(text.len());
    while !text.is_char_boundary(offset) {
        offset -= 1;
    }
    let before = &text[..offset];
    let line = before.matches('\n').count() + 1;
    let line_start = before.rfind('\n').map_or(0, |i| i + 1);
    (line, before[line_start..].chars().count() + 1)
}

/// Examples for keys that must be given, in "is required but missing: add e.g. …".
const REQUIRED: &[(&str, &str)] = &[
    ("name", "name = \"web\""),
    ("listen", "listen = \"10.0.0.100:80\""),
    ("address", "address = \"192.168.1.2:80\""),
];

/// Names people coming from HAProxy or other balancers may try, and the key they mean.
const ALIASES: &[(&str, &str)] = &[
    ("vip", "listen"),
    ("bind", "listen"),
    ("balance", "scheduler"),
    ("algorithm", "scheduler"),
    ("mode", "forwarding"),
    ("server", "backend"),
    ("servers", "backend"),
    ("backends", "backend"),
    ("stick-table", "stick_table"),
    ("check", "health"),
    ("addr", "address"),
    ("inter", "interval"),
    ("type", "kind"),
    ("check-ssl", "kind"),
    ("check-sni", "sni"),
    ("ca-file", "ca"),
];

/// What serde said, reworded for the config file: `(path, message)`. `path` is where
/// serde was (for a missing key: the table; it gets the key appended).
pub fn reword(path: &Path, message: &str) -> (Path, String) {
    if let Some(rest) = message.strip_prefix("unknown field `") {
        if let Some((key, expected)) = rest.split_once('`') {
            let accepted = backticked(expected);
            let hint = match suggest(key, &accepted) {
                Some(k) => format!(": did you mean `{k}`?"),
                None => String::new(),
            };
            let list: Vec<String> = accepted.iter().map(|k| format!("`{k}`")).collect();
            let list = if list.is_empty() {
                "none".to_string()
            } else {
                list.join(", ")
            };
            return (
                path.clone(),
                format!("unknown key{hint} (accepted here: {list})"),
            );
        }
    }
    if let Some(rest) = message.strip_prefix("missing field `") {
        if let Some((key, _)) = rest.split_once('`') {
            let example = REQUIRED
                .iter()
                .find(|(k, _)| *k == key)
                .map_or_else(|| format!("{key} = ..."), |(_, e)| e.to_string());
            return (
                path.key(key),
                format!("is required but missing: add e.g. {example}"),
            );
        }
    }
    (path.clone(), plain(message))
}

/// serde's "invalid type: X, expected Y" as "X is not accepted: use Y"; other messages as
/// they are.
pub fn plain(message: &str) -> String {
    let Some(rest) = message.strip_prefix("invalid type: ") else {
        return message.to_string();
    };
    let Some((unexpected, expected)) = rest.split_once(", expected ") else {
        return message.to_string();
    };
    let shown = if let Some(s) = unexpected.strip_prefix("string ") {
        s.to_string()
    } else if let Some(v) = ["integer `", "floating point `", "boolean `", "character `"]
        .iter()
        .find_map(|p| unexpected.strip_prefix(p))
    {
        v.trim_end_matches('`').to_string()
    } else {
        match unexpected {
            "map" => "a table".to_string(),
            "sequence" => "an array".to_string(),
            "unit value" | "Option value" => "null".to_string(),
            other => other.to_string(),
        }
    };
    format!("{shown} is not accepted: use {expected}")
}

/// The words in backticks of serde's "expected one of `a`, `b`".
fn backticked(s: &str) -> Vec<String> {
    s.split('`')
        .enumerate()
        .filter(|(i, _)| i % 2 == 1)
        .map(|(_, w)| w.to_string())
        .collect()
}

/// The known key closest to an unknown one, if any is close.
pub fn suggest<'k>(key: &str, known: &'k [String]) -> Option<&'k str> {
    let lower = key.to_ascii_lowercase();
    if let Some(&(_, to)) = ALIASES.iter().find(|(from, _)| *from == lower) {
        if let Some(k) = known.iter().find(|k| *k == to) {
            return Some(k);
        }
    }
    let normalised = lower.replace('-', "_");
    known
        .iter()
        .map(|k| (edit_distance(&normalised, k), k.as_str()))
        .filter(|(d, _)| *d <= 2.max(key.len() / 4))
        .min_by_key(|(d, _)| *d)
        .map(|(_, k)| k)
}

fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut cur = vec![i + 1; b.len() + 1];
        for (j, cb) in b.iter().enumerate() {
            cur[j + 1] = (prev[j] + usize::from(ca != *cb))
                .min(prev[j + 1] + 1)
                .min(cur[j] + 1);
        }
        prev = cur;
    }
    prev[b.len()]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn serde_messages_are_reworded() {
        let p = Path::of(&["service"]).index(0);
        let (at, msg) = reword(
            &p.key("weigth"),
            "unknown field `weigth`, expected one of `address`, `weight`, `state`",
        );
        assert_eq!(at.to_string(), "service[0].weigth");
        assert_eq!(
            msg,
            "unknown key: did you mean `weight`? (accepted here: `address`, `weight`, `state`)"
        );
        let (_, msg) = reword(&p, "unknown field `x`, expected `service`");
        assert_eq!(msg, "unknown key (accepted here: `service`)");
        let (at, msg) = reword(&p, "missing field `listen`");
        assert_eq!(at.to_string(), "service[0].listen");
        assert!(
            msg.ends_with("add e.g. listen = \"10.0.0.100:80\""),
            "{msg}"
        );
        assert_eq!(
            plain("invalid type: string \"big\", expected a table"),
            "\"big\" is not accepted: use a table"
        );
        assert_eq!(
            plain("invalid type: integer `1`, expected a table"),
            "1 is not accepted: use a table"
        );
        assert_eq!(
            plain("invalid type: map, expected [[service]] sections"),
            "a table is not accepted: use [[service]] sections"
        );
        assert_eq!(plain("something else"), "something else");
        assert_eq!(line_col("ab\ncé d", 7), (2, 4));
    }
}
