//! The device twin: two JSON documents per device, `desired` (what operators want the device
//! to be) and `reported` (what the device says it is), each with its own version.
//!
//! - A document is a JSON object. Keys are 1–128 characters and not `$`-prefixed (reserved);
//!   nesting is at most [`MAX_DEPTH`] deep; the canonical serialisation is at most the
//!   configured byte limit ([`TwinLimits`], default 64 KiB, eight times the 8 KB some clouds
//!   stop at).
//! - Updates are JSON merge patches (RFC 7396): an object merges key by key, `null` removes a
//!   key, anything else replaces. A full replace is a plain document.
//! - Versions start at 0 (nothing written yet) and grow by one on every write that changes the
//!   document; a write that changes nothing keeps the version. Writers that name the version
//!   they read are refused when it moved on ([`check_version`]): concurrent writers get a
//!   conflict, never a silent overwrite.
//! - The **delta** is what the device still has to do: every leaf of `desired` whose value is
//!   not the same in `reported`, with the desired value ([`delta`]).

use serde_json::{Map, Value};

/// A twin document.
pub type Document = Map<String, Value>;

/// How deep objects may nest in a document.
pub const MAX_DEPTH: usize = 16;
/// Longest key, in characters.
pub const MAX_KEY_CHARS: usize = 128;
/// The default limit on a document's size.
pub const DEFAULT_MAX_BYTES: usize = 64 * 1024;

/// Limits on twin documents.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TwinLimits {
    /// Largest serialised document, in bytes.
    pub max_bytes: usize,
}

impl Default for TwinLimits {
    fn default() -> Self {
        TwinLimits {
            max_bytes: DEFAULT_MAX_BYTES,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TwinError {
    #[error("the document must be a JSON object")]
    NotAnObject,
    #[error("not JSON: {0}")]
    NotJson(String),
    #[error("the document is {size} bytes; the limit is {max} bytes")]
    TooLarge { size: usize, max: usize },
    #[error("{path}: objects nest more than {MAX_DEPTH} levels deep")]
    TooDeep { path: String },
    #[error("{path}: a key must be 1 to {MAX_KEY_CHARS} characters")]
    BadKey { path: String },
    #[error("{path}: keys starting with `$` are reserved")]
    ReservedKey { path: String },
    #[error("version {expected} was expected but the document is at version {actual}")]
    VersionMismatch { expected: u64, actual: u64 },
}

/// Parses a document (or a merge patch, which has the same shape) from bytes.
pub fn parse_document(bytes: &[u8], limits: TwinLimits) -> Result<Document, TwinError> {
    if bytes.len() > limits.max_bytes.saturating_mul(4).max(1024) {
        // Far past the limit even with generous whitespace: don't parse it at all.
        return Err(TwinError::TooLarge {
            size: bytes.len(),
            max: limits.max_bytes,
        });
    }
    let value: Value =
        serde_json::from_slice(bytes).map_err(|e| TwinError::NotJson(e.to_string()))?;
    match value {
        Value::Object(doc) => {
            check_keys(&doc, "", 1)?;
            Ok(doc)
        }
        _ => Err(TwinError::NotAnObject),
    }
}

/// Checks a document that is about to be stored: keys, depth and size.
pub fn validate(doc: &Document, limits: TwinLimits) -> Result<(), TwinError> {
    check_keys(doc, "", 1)?;
    let size = serialized_len(doc);
    if size > limits.max_bytes {
        return Err(TwinError::TooLarge {
            size,
            max: limits.max_bytes,
        });
    }
    Ok(())
}

/// The canonical text of a document (keys in order, so equal documents are equal text).
pub fn to_text(doc: &Document) -> String {
    // Serialising a map of JSON values cannot fail (keys are strings, numbers finite).
    serde_json::to_string(doc).unwrap_or_else(|_| "{}".to_owned())
}

/// A document back from its stored text.
pub fn from_text(text: &str) -> Result<Document, TwinError> {
    serde_json::from_str(text).map_err(|e| TwinError::NotJson(e.to_string()))
}

/// The canonical serialisation's length in bytes.
pub fn serialized_len(doc: &Document) -> usize {
    serde_json::to_vec(doc)
        .map(|v| v.len())
        .unwrap_or(usize::MAX)
}

fn check_keys(doc: &Document, path: &str, depth: usize) -> Result<(), TwinError> {
    if depth > MAX_DEPTH {
        return Err(TwinError::TooDeep {
            path: display_path(path),
        });
    }
    for (key, value) in doc {
        let here = format!("{path}/{}", escape_pointer(key));
        let chars = key.chars().count();
        if chars == 0 || chars > MAX_KEY_CHARS {
            return Err(TwinError::BadKey {
                path: display_path(&here),
            });
        }
        if key.starts_with('$') {
            return Err(TwinError::ReservedKey {
                path: display_path(&here),
            });
        }
        if let Value::Object(inner) = value {
            check_keys(inner, &here, depth + 1)?;
        }
        if let Value::Array(items) = value {
            check_array(items, &here, depth + 1)?;
        }
    }
    Ok(())
}

fn check_array(items: &[Value], path: &str, depth: usize) -> Result<(), TwinError> {
    if depth > MAX_DEPTH {
        return Err(TwinError::TooDeep {
            path: display_path(path),
        });
    }
    for item in items {
        match item {
            Value::Object(inner) => check_keys(inner, path, depth + 1)?,
            Value::Array(inner) => check_array(inner, path, depth + 1)?,
            _ => {}
        }
    }
    Ok(())
}

fn display_path(p: &str) -> String {
    if p.is_empty() { "/".into() } else { p.into() }
}

/// A key as a JSON Pointer segment (RFC 6901: `~` → `~0`, `/` → `~1`).
pub fn escape_pointer(key: &str) -> String {
    key.replace('~', "~0").replace('/', "~1")
}

/// Applies a JSON merge patch (RFC 7396) to `doc`. Returns whether anything changed.
pub fn merge_patch(doc: &mut Document, patch: &Document) -> bool {
    let mut changed = false;
    for (key, value) in patch {
        match value {
            Value::Null => changed |= doc.remove(key).is_some(),
            Value::Object(inner_patch) => {
                let entry = doc
                    .entry(key.clone())
                    .or_insert_with(|| Value::Object(Map::new()));
                if !entry.is_object() {
                    *entry = Value::Object(Map::new());
                    changed = true;
                }
                if let Value::Object(inner) = entry {
                    changed |= merge_patch(inner, inner_patch);
                }
            }
            other => {
                if doc.get(key) != Some(other) {
                    doc.insert(key.clone(), other.clone());
                    changed = true;
                }
            }
        }
    }
    changed
}

/// The merge patch that turns `from` into `to`.
pub fn diff(from: &Document, to: &Document) -> Document {
    let mut patch = Document::new();
    for key in from.keys() {
        if !to.contains_key(key) {
            patch.insert(key.clone(), Value::Null);
        }
    }
    for (key, new) in to {
        match (from.get(key), new) {
            (Some(old), new) if old == new => {}
            (Some(Value::Object(old)), Value::Object(new)) => {
                patch.insert(key.clone(), Value::Object(diff(old, new)));
            }
            (_, Value::Object(new)) => {
                // A new object: every key of it (an empty object must still appear).
                patch.insert(key.clone(), Value::Object(diff(&Document::new(), new)));
            }
            (_, new) => {
                patch.insert(key.clone(), new.clone());
            }
        }
    }
    patch
}

/// What the device still has to do: the leaves of `desired` whose value differs from
/// `reported` (objects compared key by key, everything else by equality).
pub fn delta(desired: &Document, reported: &Document) -> Document {
    let mut out = Document::new();
    for (key, want) in desired {
        match (want, reported.get(key)) {
            (Value::Object(want), Some(Value::Object(have))) => {
                let inner = delta(want, have);
                if !inner.is_empty() {
                    out.insert(key.clone(), Value::Object(inner));
                }
            }
            (want, Some(have)) if want == have => {}
            (want, _) => {
                out.insert(key.clone(), want.clone());
            }
        }
    }
    out
}

/// A device's twin as stored.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Twin {
    /// The device's own configuration layer, written by operators.
    pub desired: Document,
    pub desired_version: u64,
    pub desired_at: Option<crate::Timestamp>,
    /// What the device says it is.
    pub reported: Document,
    pub reported_version: u64,
    pub reported_at: Option<crate::Timestamp>,
    /// The version of the effective configuration last rendered for the device.
    pub rendered_version: u64,
}

/// How a reported value is indexed for device queries: by JSON type, so a comparison only
/// meets values of its own type (see the query language).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IndexKind {
    String,
    Number,
    Bool,
    /// An object: present for `exists`, equal to nothing. (`null` is not indexed: a query
    /// treats it as absent.)
    Other,
}

impl IndexKind {
    /// The attribute scope the store files this kind under.
    pub fn scope(self) -> &'static str {
        match self {
            IndexKind::String => "reported.s",
            IndexKind::Number => "reported.n",
            IndexKind::Bool => "reported.b",
            IndexKind::Other => "reported.o",
        }
    }

    pub const ALL: [IndexKind; 4] = [
        IndexKind::String,
        IndexKind::Number,
        IndexKind::Bool,
        IndexKind::Other,
    ];
}

/// One searchable row of a reported document.
#[derive(Debug, Clone, PartialEq)]
pub struct IndexRow {
    pub kind: IndexKind,
    /// [`index_path`] of the value's keys.
    pub path: String,
    /// Position in an array; 0 otherwise.
    pub seq: i64,
    pub text: String,
    pub number: Option<f64>,
}

/// The name a value at `segments` is indexed under: the keys as a JSON Pointer.
pub fn index_path<S: AsRef<str>>(segments: &[S]) -> String {
    let mut out = String::new();
    for s in segments {
        out.push('/');
        out.push_str(&escape_pointer(s.as_ref()));
    }
    out
}

/// The longest indexed text; longer strings are cut (on a character boundary).
pub const MAX_INDEXED_TEXT: usize = 1024;
/// At most this many rows are indexed per document (the rest are not searchable).
pub const MAX_INDEX_ROWS: usize = 2048;

/// The searchable rows of a reported document: every value by its key path, array elements
/// by position (arrays are not indexed inside arrays or objects inside arrays).
pub fn index_rows(doc: &Document) -> Vec<IndexRow> {
    let mut rows = Vec::new();
    let mut path = Vec::new();
    index_into(doc, &mut path, &mut rows);
    rows.truncate(MAX_INDEX_ROWS);
    rows
}

fn clip(text: &str) -> String {
    if text.len() <= MAX_INDEXED_TEXT {
        return text.to_owned();
    }
    let mut end = MAX_INDEXED_TEXT;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    text[..end].to_owned()
}

fn scalar_row(value: &Value, path: String, seq: i64) -> Option<IndexRow> {
    let (kind, text, number) = match value {
        Value::String(s) => (IndexKind::String, clip(s), None),
        Value::Number(n) => (IndexKind::Number, n.to_string(), n.as_f64()),
        Value::Bool(b) => (IndexKind::Bool, b.to_string(), None),
        // `null` is absent for queries.
        Value::Null | Value::Object(_) | Value::Array(_) => return None,
    };
    Some(IndexRow {
        kind,
        path,
        seq,
        text,
        number,
    })
}

fn index_into<'a>(doc: &'a Document, path: &mut Vec<&'a str>, rows: &mut Vec<IndexRow>) {
    for (key, value) in doc {
        if rows.len() >= MAX_INDEX_ROWS {
            return;
        }
        path.push(key);
        let here = index_path(path);
        match value {
            Value::Object(inner) => {
                rows.push(IndexRow {
                    kind: IndexKind::Other,
                    path: here,
                    seq: 0,
                    text: String::new(),
                    number: None,
                });
                index_into(inner, path, rows);
            }
            Value::Array(items) => {
                for (i, item) in items.iter().enumerate() {
                    let seq = i64::try_from(i).unwrap_or(i64::MAX);
                    if let Some(row) = scalar_row(item, here.clone(), seq) {
                        rows.push(row);
                    }
                }
            }
            scalar => rows.extend(scalar_row(scalar, here, 0)),
        }
        path.pop();
    }
}

/// Refuses a write that names a version other than the current one.
pub fn check_version(expected: Option<u64>, actual: u64) -> Result<(), TwinError> {
    match expected {
        Some(expected) if expected != actual => {
            Err(TwinError::VersionMismatch { expected, actual })
        }
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn doc(v: Value) -> Document {
        match v {
            Value::Object(m) => m,
            _ => panic!("not an object"),
        }
    }

    #[test]
    fn merge_patch_follows_rfc_7396() {
        // The examples of RFC 7396, appendix A, that apply to objects.
        let cases = [
            (json!({"a":"b"}), json!({"a":"c"}), json!({"a":"c"})),
            (json!({"a":"b"}), json!({"b":"c"}), json!({"a":"b","b":"c"})),
            (json!({"a":"b"}), json!({"a":null}), json!({})),
            (
                json!({"a":"b","b":"c"}),
                json!({"a":null}),
                json!({"b":"c"}),
            ),
            (json!({"a":["b"]}), json!({"a":"c"}), json!({"a":"c"})),
            (json!({"a":"c"}), json!({"a":["b"]}), json!({"a":["b"]})),
            (
                json!({"a":{"b":"c"}}),
                json!({"a":{"b":"d","c":null}}),
                json!({"a":{"b":"d"}}),
            ),
            (json!({"a":[{"b":"c"}]}), json!({"a":[1]}), json!({"a":[1]})),
            (json!({"e":null}), json!({"a":1}), json!({"e":null,"a":1})),
            (
                json!({}),
                json!({"a":{"bb":{"ccc":null}}}),
                json!({"a":{"bb":{}}}),
            ),
        ];
        for (target, patch, result) in cases {
            let mut d = doc(target);
            merge_patch(&mut d, &doc(patch.clone()));
            assert_eq!(Value::Object(d), result, "patch {patch}");
        }
    }

    #[test]
    fn merge_patch_says_whether_it_changed_anything() {
        let mut d = doc(json!({"a": 1, "b": {"c": 2}}));
        assert!(!merge_patch(
            &mut d,
            &doc(json!({"a": 1, "b": {"c": 2}, "x": null}))
        ));
        assert!(merge_patch(&mut d, &doc(json!({"b": {"c": 3}}))));
        assert!(merge_patch(&mut d, &doc(json!({"a": null}))));
        assert_eq!(Value::Object(d), json!({"b": {"c": 3}}));
    }

    #[test]
    fn diff_is_the_patch_between_two_documents() {
        let pairs = [
            (json!({}), json!({"a": 1, "b": {"c": [1, 2]}})),
            (
                json!({"a": 1, "b": {"c": 2, "d": 3}}),
                json!({"b": {"c": 2}}),
            ),
            (json!({"a": {"x": 1}}), json!({"a": 5})),
            (json!({"a": 5}), json!({"a": {"x": 1}})),
            (json!({"a": 1}), json!({"a": {}})),
        ];
        for (from, to) in pairs {
            let (from, to) = (doc(from), doc(to));
            let patch = diff(&from, &to);
            let mut applied = from.clone();
            merge_patch(&mut applied, &patch);
            assert_eq!(applied, to, "patch {}", Value::Object(patch));
        }
        assert!(diff(&doc(json!({"a": 1})), &doc(json!({"a": 1}))).is_empty());
    }

    #[test]
    fn delta_lists_what_the_device_has_not_done() {
        let desired = doc(json!({
            "log_level": "debug",
            "ntp": {"servers": ["a", "b"], "enabled": true},
            "same": 1,
            "nested": {"same": {"x": 1}}
        }));
        let reported = doc(json!({
            "log_level": "info",
            "ntp": {"servers": ["a", "b"], "enabled": false},
            "same": 1,
            "nested": {"same": {"x": 1}},
            "extra": "reported only"
        }));
        assert_eq!(
            Value::Object(delta(&desired, &reported)),
            json!({"log_level": "debug", "ntp": {"enabled": true}})
        );
        assert!(delta(&reported, &reported).is_empty());
        assert_eq!(
            Value::Object(delta(&doc(json!({"a": {"b": 1}})), &doc(json!({"a": 3})))),
            json!({"a": {"b": 1}})
        );
    }

    #[test]
    fn documents_are_objects_with_sane_keys_depth_and_size() {
        let limits = TwinLimits { max_bytes: 100 };
        assert_eq!(parse_document(b"[1]", limits), Err(TwinError::NotAnObject));
        assert!(matches!(
            parse_document(b"{", limits),
            Err(TwinError::NotJson(_))
        ));
        assert_eq!(
            parse_document(br#"{"a": {"$x": 1}}"#, limits),
            Err(TwinError::ReservedKey {
                path: "/a/$x".into()
            })
        );
        assert_eq!(
            parse_document(br#"{"": 1}"#, limits),
            Err(TwinError::BadKey { path: "/".into() })
        );
        let mut deep = String::new();
        for _ in 0..=MAX_DEPTH {
            deep.push_str("{\"a\":");
        }
        deep.push('1');
        for _ in 0..=MAX_DEPTH {
            deep.push('}');
        }
        assert!(matches!(
            parse_document(deep.as_bytes(), TwinLimits::default()),
            Err(TwinError::TooDeep { .. })
        ));
        let big = doc(json!({"a": "x".repeat(200)}));
        assert!(matches!(
            validate(&big, limits),
            Err(TwinError::TooLarge { max: 100, .. })
        ));
        assert!(validate(&doc(json!({"a/b~": 1})), limits).is_ok());
        assert!(parse_document(&vec![b' '; 5000], limits).is_err());
    }

    #[test]
    fn reported_values_are_indexed_by_path_and_type() {
        let rows = index_rows(&doc(json!({
            "fw": {"channel": "beta", "build": 12},
            "ok": true,
            "tags": ["a", 2],
            "a/b": null
        })));
        let got: Vec<(&str, &str, i64, &str, Option<f64>)> = rows
            .iter()
            .map(|r| {
                (
                    r.kind.scope(),
                    r.path.as_str(),
                    r.seq,
                    r.text.as_str(),
                    r.number,
                )
            })
            .collect();
        assert_eq!(
            got,
            [
                ("reported.o", "/fw", 0, "", None),
                ("reported.n", "/fw/build", 0, "12", Some(12.0)),
                ("reported.s", "/fw/channel", 0, "beta", None),
                ("reported.b", "/ok", 0, "true", None),
                ("reported.s", "/tags", 0, "a", None),
                ("reported.n", "/tags", 1, "2", Some(2.0)),
            ]
        );
        assert_eq!(index_path(&["fw", "channel"]), "/fw/channel");
    }

    #[test]
    fn a_stale_version_is_a_conflict() {
        assert!(check_version(None, 7).is_ok());
        assert!(check_version(Some(7), 7).is_ok());
        assert_eq!(
            check_version(Some(6), 7),
            Err(TwinError::VersionMismatch {
                expected: 6,
                actual: 7
            })
        );
    }
}
