//! The device query language: one small language to select devices, used for device search,
//! dynamic groups (a saved query), deployment targets and alert scopes.
//!
//! ```text
//! state = "accepted" and inventory.os.id = "debian" and inventory.cpu.count >= 4
//! tag.site in ("lyon", "paris") and not group = "canary"
//! online = false and last_seen < now - 1d
//! name ~ "kiosk-*" or device_type = "rpi4-kiosk"
//! exists inventory.net.wlan0.ipv4 and reported.firmware.channel != "beta"
//! ```
//!
//! [`parse`] turns the text into a [`Query`], a checked syntax tree ([`Expr`]) that the store
//! compiles to SQL and that [`Query::matches`] evaluates in memory against one device's
//! [`DeviceFacts`], with the same result. A query's `Display` is its *canonical text*, which
//! parses back to the same tree (save that text, not what the operator typed).
//!
//! # Grammar
//!
//! ```text
//! query     = or-expr
//! or-expr   = and-expr { "or" and-expr }
//! and-expr  = unary { "and" unary }
//! unary     = "not" unary | primary
//! primary   = "(" or-expr ")"
//!           | "exists" field
//!           | field cmp-op value
//!           | field [ "not" ] "in" "(" value { "," value } ")"
//!           | field "~" string
//! cmp-op    = "=" | "!=" | "<" | "<=" | ">" | ">="
//! value     = string | number | "true" | "false" | time
//! number    = [ "+" | "-" ] digits [ "." digits ]
//! time      = "now" [ ( "+" | "-" ) digits unit ]
//! unit      = "ms" | "s" | "m" | "h" | "d" | "w"
//! string    = '"' { any character except '"' and '\' | '\"' | '\\' } '"'
//! field     = "id" | "name" | "device_type" | "state" | "online" | "last_seen" | "created_at"
//!           | "group"
//!           | "inventory." attribute | "tag." attribute
//!           | "reported." segment { "." segment }
//! attribute = 1 to 128 of [A-Za-z0-9_.:-], starting with a letter or a digit
//! segment   = 1 or more of [A-Za-z0-9_:-] | string
//! digits    = 1 or more of [0-9]
//! ```
//!
//! The parts of an `inventory.` or `tag.` name may also be quoted like reported segments
//! (`inventory."os.id"` is `inventory.os.id`); the parts, joined with `.`, must form a valid
//! name.
//!
//! Whitespace (ASCII: space, tab, CR, LF, form feed) may separate any two tokens and is needed only between two
//! words, or a number and a word: `online=true` is `online = true`. A field is one token, with
//! no whitespace inside: since attribute names may hold `-`, `:` and `.`,
//! `inventory.hw-rev:a` is one field (there is no arithmetic, so `-` is never ambiguous;
//! `now-1h` is read as `now - 1h`). The operators have no other spellings: `==`, `<>`, `&&`,
//! `||` and `!` are refused with a hint.
//!
//! Keywords (`and or not in exists true false now`), built-in field names and the prefixes
//! `inventory.`, `tag.` and `reported.` are case-insensitive. Everything else is
//! case-sensitive: attribute names, tag keys, reported path segments, string values, units.
//!
//! `not` binds tighter than `and`, which binds tighter than `or`: `a or b and not c` means
//! `a or (b and (not c))`.
//!
//! # Fields
//!
//! | field                   | type      | absent when                    |
//! |-------------------------|-----------|--------------------------------|
//! | `id`                    | text      | never                          |
//! | `name`                  | text      | never                          |
//! | `device_type`           | text      | the device has none            |
//! | `state`                 | state     | never                          |
//! | `online`                | boolean   | never                          |
//! | `last_seen`             | time      | never heard from               |
//! | `created_at`            | time      | never                          |
//! | `group`                 | group     | (see below)                    |
//! | `inventory.<attribute>` | attribute | not reported, or an empty list |
//! | `tag.<key>`             | attribute | no such tag                    |
//! | `reported.<path>`       | JSON      | no such key, or JSON `null`    |
//!
//! - `state` takes one of `"pending"`, `"preauthorized"`, `"accepted"`, `"rejected"`,
//!   `"decommissioned"`, compared with `=`, `!=`, `in`, `not in`.
//! - `online` takes `true` or `false`, compared with `=`, `!=`, `in`, `not in`.
//! - Time fields take `now`, `now - <n><unit>`, `now + <n><unit>` (resolved when the query is
//!   evaluated) or an RFC 3339 time in quotes (`"2026-01-01T00:00:00Z"`, any offset; kept to the
//!   millisecond); every comparison and `in` apply, `~` does not.
//! - `group = "kiosks"` means "member of the static or dynamic group named kiosks";
//!   `group != "kiosks"` means "not a member"; `group in (...)` a member of any of them and
//!   `group not in (...)` of none. Only those four forms apply to `group`.
//! - Text fields (`id`, `name`, `device_type`) take strings, with every comparison (ordered
//!   byte by byte), `in` and `~`.
//! - Attributes (`inventory.*`, `tag.*`) and `reported.*` take strings, numbers and
//!   `true`/`false` (see the type rules below), `true`/`false` only with `=`, `!=`, `in`,
//!   `not in`.
//! - A `reported` path names object keys from the root of the device's reported twin state:
//!   `reported.firmware.channel` is `{"firmware": {"channel": ...}}`. A key that is not made of
//!   `[A-Za-z0-9_:-]` is quoted: `reported."wi-fi ssid".name`. Arrays are not indexed.
//!
//! # Values
//!
//! - Strings are in double quotes; inside, `\"` is a quote and `\\` a backslash (no other
//!   escapes). Any other character stands for itself.
//! - Numbers are decimals: `4`, `-2`, `0.5`, `+1.25` (no exponent); stored as the nearest 64-bit
//!   float.
//! - Durations (only after `now +` or `now -`) are a whole number and a unit: `ms`, `s`, `m`
//!   (minutes), `h`, `d`, `w` (7 days): `now - 90m`, `now + 2w`.
//!
//! # Operators
//!
//! - `field = value`, `!=`, `<`, `<=`, `>`, `>=`.
//! - `field in (v1, v2, ...)`, `field not in (v1, v2, ...)`: one to 256 values.
//! - `exists field`, and so `not exists field`: whether the field is present.
//! - `field ~ "pattern"`: a glob matched against the whole text (anchored at both ends). `*`
//!   matches any run of characters (also none), `?` exactly one character; `\*`, `\?` and `\\`
//!   stand for `*`, `?` and `\`. Since the pattern is itself a string, the backslash is written
//!   twice in the query: `name ~ "what\\?*"` matches names starting with `what?`. Case matters.
//!   Only on text: `id`, `name`, `device_type`, the text of attributes, and string values of
//!   `reported.*`.
//!
//! # Semantics
//!
//! **Absent fields.** A comparison with an absent field is false, whatever the operator:
//! `inventory.x = 1`, `inventory.x != 1`, `inventory.x not in (1)` and `inventory.x ~ "*"` are
//! all false for a device without `x`. `not` is plain boolean negation, so
//! `not inventory.x = 1` *is* true for that device. `exists` tests presence.
//!
//! **Several values.** An inventory list, or a JSON array in `reported`, holds several values.
//! `=`, `<`, `<=`, `>`, `>=`, `in` and `~` hold when *some* value satisfies them. The negated
//! forms are the negation of the positive one on a present field: `field != v` is
//! `exists field and not field = v` (no value equals `v`), and `field not in (...)` is
//! `exists field and not field in (...)`. A field with one value is just the one-value case.
//!
//! **Attribute types.** Inventory values and tag values are *attribute values*. Each has a
//! *text*: a string (a tag value, a list item) is its own text, `true` and `false` are `"true"`
//! and `"false"`, and a number's text is [`canonical_number_text`] (`4`, `0.5`). Some also have
//! a *number*: a number its value, and a text that reads as a number by [`number_of_text`]
//! (`"12"`, `"-0.5"`; not `"12.1.3"` or `"1e3"`) that number.
//! - A string value compares with the text, byte by byte: `inventory.cpu.count = "4"` holds for
//!   the number 4, and `inventory.version < "9"` holds for `"10"`.
//! - A number value compares numerically with the number, and never holds for a value without
//!   one: `inventory.os.version > 9` holds for the number 12 and for the strings `"12"` and
//!   `"12.1"`, not for `"12.1.3"`, `"v12"` or `true`.
//! - `true`/`false` equal the text `"true"`/`"false"` (so the string `"true"` is equal too).
//!
//! `reported` values are typed as JSON: a string value compares only with JSON strings, a
//! number only with JSON numbers, `true`/`false` only with JSON booleans; objects are present
//! (for `exists`) but equal nothing. Built-in fields are typed strictly (see the table).
//!
//! # Limits
//!
//! The text is at most [`MAX_QUERY_LEN`] bytes, and so is its canonical text (which differs
//! only in whitespace, letter case and the spelling of numbers, times and durations). At most
//! [`MAX_DEPTH`] levels of parentheses and `not` nest, a query has at most
//! [`MAX_COMPARISONS`] comparisons (each `=`, `in`, `exists`, `~`... counts one) and an `in`
//! list at most [`MAX_IN_VALUES`] values.
//!
//! # Errors
//!
//! A [`QueryError`] carries the byte offset where the problem is and a one-line message, shown
//! as `at 7: expected a value after "=", found ")"`; [`QueryError::render`] draws a caret under
//! the query for the CLI.
//!
//! # Canonical text
//!
//! `Display` writes keywords, built-ins and prefixes in lower case, one space around operators
//! and keywords, `not in`, `(a, b)` lists, numbers as [`canonical_number_text`], absolute times
//! as RFC 3339 UTC strings, durations in the largest unit that divides them (`now - 2h`), and
//! parentheses exactly where the tree has a nested `and`/`or` (an `or` inside an `and`, or an
//! operator inside the same operator); `a and b and c` is one [`Expr::And`] of three.
//!
//! # How the store evaluates it
//!
//! Each leaf compiles to a predicate on the device row `d` that is true or false, never NULL, so
//! that `and`/`or`/`not` compile to `AND`/`OR`/`NOT` unchanged. With the attribute table
//! `device_attributes(device_id, scope, name, text_value, num_value)` (scope `inventory` or
//! `tag`; one row per list item, none for an empty list; `text_value` the text defined above,
//! [`canonical_number_text`] for a number; `num_value` the number, [`number_of_text`] for a
//! text, NULL when there is none), let `A(cond)` be
//! `EXISTS (SELECT 1 FROM device_attributes a WHERE a.device_id = d.id AND a.scope = ? AND
//! a.name = ? AND cond)`:
//! - `inventory.n = "x"` is `A(a.text_value = 'x')`; `<` etc. the same with the operator
//!   (`COLLATE "C"` on PostgreSQL, for byte order); `= 4` is `A(a.num_value = 4)`; `= true` is
//!   `A(a.text_value = 'true')`; `in (...)` is `A(c1 OR c2 ...)` with those conditions.
//! - `inventory.n != v` is `A(TRUE) AND NOT A(cond for = v)`; `not in` likewise.
//! - `inventory.n ~ "p"` is `A(a.text_value LIKE ? ESCAPE '\')` with
//!   [`GlobPattern::to_like`] (SQLite's `LIKE` ignores ASCII case: use `GLOB` with
//!   [`GlobPattern::to_sqlite_glob`] there).
//! - `exists inventory.n` is `A(TRUE)`. Tags are the same with scope `tag`.
//! - Built-ins are columns; a nullable one (`device_type`, `last_seen`) is guarded:
//!   `(d.device_type IS NOT NULL AND d.device_type = ?)`, also for `!=`; `exists` is
//!   `IS NOT NULL`. `state` compares its stored name; `online = true` is "has an open
//!   connection". Times resolve with [`TimeValue::resolve`] and the `now` of the request, and
//!   compare as Unix milliseconds.
//! - `group = "g"` is membership of the static group `g` or of the dynamic group `g` (its own
//!   query, compiled in place); `!=` and `not in` are `NOT` of the positive form (a device is in
//!   no group: `group != "g"` holds). [`Query::groups`] lists the groups a query names, to
//!   refuse cycles when a dynamic group is saved.
//! - `reported.a.b` reads the JSON at that path (SQLite `json_extract`/`json_type`,
//!   PostgreSQL `#>`); JSON `null` is absent; a string value requires a JSON string, a number a
//!   JSON number, a boolean a JSON boolean; an array is matched through its elements
//!   (`json_each`, `jsonb_array_elements`) with the same `some value` rule.
use std::borrow::Cow;
use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::Timestamp;
use crate::device::DeviceState;
use crate::inventory::{AttributeName, AttributeValue};

/// Longest query text, and longest canonical text, in bytes.
pub const MAX_QUERY_LEN: usize = 4096;
/// Most levels of parentheses and `not` that may nest.
pub const MAX_DEPTH: usize = 32;
/// Most comparisons (leaves) in one query.
pub const MAX_COMPARISONS: usize = 64;
/// Most values in one `in` list.
pub const MAX_IN_VALUES: usize = 256;

/// A parsed, checked query. Made by [`parse`] only, so its limits hold.
#[derive(Debug, Clone, PartialEq)]
pub struct Query {
    expr: Expr,
}

/// The syntax tree of a query.
///
/// Trees made by [`parse`] have at least two operands in every `And` and `Or`, and values fit
/// their field: `state` and `group` hold [`Value::Text`] (a valid state name; a group name),
/// `online` [`Value::Bool`], time fields [`Value::Time`] only (quoted RFC 3339 times are read
/// at parse), text fields [`Value::Text`]; attributes and `reported` any but [`Value::Time`].
#[derive(Debug, Clone, PartialEq)]
pub enum Expr {
    /// All hold.
    And(Vec<Expr>),
    /// At least one holds.
    Or(Vec<Expr>),
    /// Boolean negation.
    Not(Box<Expr>),
    /// `field op value`. `Ne` is "present, and no value equal" (see the module documentation).
    Compare {
        field: Field,
        op: CmpOp,
        value: Value,
    },
    /// `field in (values)`, or `field not in (values)` when `negated` ("present, and no value
    /// in the list").
    In {
        field: Field,
        values: Vec<Value>,
        negated: bool,
    },
    /// `exists field`.
    Exists { field: Field },
    /// `field ~ "pattern"`.
    Glob { field: Field, pattern: GlobPattern },
}

/// What a comparison looks at.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Field {
    Builtin(Builtin),
    /// Group membership.
    Group,
    /// A reported inventory attribute (a valid [`AttributeName`]).
    Inventory(String),
    /// An operator tag (a key with the attribute-name syntax).
    Tag(String),
    /// A path of object keys into the reported twin state; at least one non-empty key.
    Reported(Vec<String>),
}

/// The built-in fields.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Builtin {
    Id,
    Name,
    DeviceType,
    State,
    Online,
    LastSeen,
    CreatedAt,
}

impl Builtin {
    pub const ALL: [Builtin; 7] = [
        Builtin::Id,
        Builtin::Name,
        Builtin::DeviceType,
        Builtin::State,
        Builtin::Online,
        Builtin::LastSeen,
        Builtin::CreatedAt,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Builtin::Id => "id",
            Builtin::Name => "name",
            Builtin::DeviceType => "device_type",
            Builtin::State => "state",
            Builtin::Online => "online",
            Builtin::LastSeen => "last_seen",
            Builtin::CreatedAt => "created_at",
        }
    }
}

/// A comparison operator.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum CmpOp {
    Eq,
    Ne,
    Lt,
    Le,
    Gt,
    Ge,
}

impl CmpOp {
    pub fn as_str(self) -> &'static str {
        match self {
            CmpOp::Eq => "=",
            CmpOp::Ne => "!=",
            CmpOp::Lt => "<",
            CmpOp::Le => "<=",
            CmpOp::Gt => ">",
            CmpOp::Ge => ">=",
        }
    }

    /// Whether `a op b` holds, given how `a` compares with `b`.
    pub fn holds(self, ord: std::cmp::Ordering) -> bool {
        use std::cmp::Ordering::*;
        match self {
            CmpOp::Eq => ord == Equal,
            CmpOp::Ne => ord != Equal,
            CmpOp::Lt => ord == Less,
            CmpOp::Le => ord != Greater,
            CmpOp::Gt => ord == Greater,
            CmpOp::Ge => ord != Less,
        }
    }

    fn is_ordering(self) -> bool {
        matches!(self, CmpOp::Lt | CmpOp::Le | CmpOp::Gt | CmpOp::Ge)
    }
}

/// A literal value.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    Text(String),
    /// Always finite.
    Number(f64),
    Bool(bool),
    Time(TimeValue),
}

/// A time: fixed, or relative to the moment of evaluation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum TimeValue {
    Absolute(Timestamp),
    /// `now + millis` (negative for the past).
    RelativeToNow {
        millis: i64,
    },
}

impl TimeValue {
    /// The time this value means when evaluated at `now` (saturating).
    pub fn resolve(self, now: Timestamp) -> Timestamp {
        match self {
            TimeValue::Absolute(t) => t,
            TimeValue::RelativeToNow { millis } => now.plus_millis(millis),
        }
    }
}

/// One piece of a glob pattern.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum GlobPart {
    /// These characters exactly.
    Literal(String),
    /// `?`: exactly one character.
    AnyChar,
    /// `*`: any run of characters, also none.
    AnyString,
}

/// A checked glob pattern: the text as written (escapes included) and its pieces.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct GlobPattern {
    source: String,
    parts: Vec<GlobPart>,
}

impl GlobPattern {
    /// Reads a pattern (`*`, `?`, and `\*`, `\?`, `\\` for the characters themselves). On error,
    /// the byte offset in `source` and a message.
    pub fn parse(source: &str) -> Result<GlobPattern, (usize, String)> {
        let mut parts = Vec::new();
        let mut lit = String::new();
        let mut chars = source.char_indices();
        let flush = |lit: &mut String, parts: &mut Vec<GlobPart>| {
            if !lit.is_empty() {
                parts.push(GlobPart::Literal(std::mem::take(lit)));
            }
        };
        while let Some((i, c)) = chars.next() {
            match c {
                '*' => {
                    flush(&mut lit, &mut parts);
                    parts.push(GlobPart::AnyString);
                }
                '?' => {
                    flush(&mut lit, &mut parts);
                    parts.push(GlobPart::AnyChar);
                }
                '\\' => match chars.next() {
                    Some((_, e @ ('*' | '?' | '\\'))) => lit.push(e),
                    Some((_, e)) => {
                        return Err((
                            i,
                            format!(
                                "unknown escape \\{} in a pattern: only \\*, \\? and \\\\ are allowed",
                                e.escape_debug()
                            ),
                        ));
                    }
                    None => {
                        return Err((i, "a pattern cannot end with a lone \\".to_owned()));
                    }
                },
                c => lit.push(c),
            }
        }
        flush(&mut lit, &mut parts);
        Ok(GlobPattern {
            source: source.to_owned(),
            parts,
        })
    }

    /// The pattern as written.
    pub fn as_str(&self) -> &str {
        &self.source
    }

    pub fn parts(&self) -> &[GlobPart] {
        &self.parts
    }

    /// Whether the whole of `text` matches. Time O(pattern × text), no recursion.
    pub fn matches(&self, text: &str) -> bool {
        let parts = &self.parts;
        let (mut p, mut t) = (0usize, 0usize);
        // After the last `*`: the part following it and where in the text it was tried.
        let mut star: Option<(usize, usize)> = None;
        loop {
            let rest = text.get(t..).unwrap_or("");
            let advanced = match parts.get(p) {
                Some(GlobPart::AnyString) => {
                    star = Some((p + 1, t));
                    p += 1;
                    continue;
                }
                Some(GlobPart::AnyChar) => rest.chars().next().map(|c| t + c.len_utf8()),
                Some(GlobPart::Literal(l)) => rest.starts_with(l.as_str()).then(|| t + l.len()),
                None if rest.is_empty() => return true,
                None => None,
            };
            match advanced {
                Some(next) => {
                    t = next;
                    p += 1;
                }
                None => {
                    let Some((sp, st)) = star else {
                        return false;
                    };
                    let Some(c) = text.get(st..).and_then(|r| r.chars().next()) else {
                        return false;
                    };
                    star = Some((sp, st + c.len_utf8()));
                    p = sp;
                    t = st + c.len_utf8();
                }
            }
        }
    }

    /// The pattern for SQL `LIKE ... ESCAPE '\'`: `%` for `*`, `_` for `?`, and `%`, `_`, `\`
    /// of the literal text escaped with `\`.
    pub fn to_like(&self) -> String {
        let mut out = String::new();
        for part in &self.parts {
            match part {
                GlobPart::AnyString => out.push('%'),
                GlobPart::AnyChar => out.push('_'),
                GlobPart::Literal(l) => {
                    for c in l.chars() {
                        if matches!(c, '%' | '_' | '\\') {
                            out.push('\\');
                        }
                        out.push(c);
                    }
                }
            }
        }
        out
    }

    /// The pattern for SQLite `GLOB` (case-sensitive): literal `*`, `?` and `[` are written
    /// `[*]`, `[?]` and `[[]`.
    pub fn to_sqlite_glob(&self) -> String {
        let mut out = String::new();
        for part in &self.parts {
            match part {
                GlobPart::AnyString => out.push('*'),
                GlobPart::AnyChar => out.push('?'),
                GlobPart::Literal(l) => {
                    for c in l.chars() {
                        match c {
                            '*' => out.push_str("[*]"),
                            '?' => out.push_str("[?]"),
                            '[' => out.push_str("[[]"),
                            c => out.push(c),
                        }
                    }
                }
            }
        }
        out
    }
}

/// The text of an inventory number, as the query language compares it (and as the store keeps
/// it in `text_value`): Rust's shortest round-trip decimal, never an exponent (`4`, `0.5`,
/// `-3`, `1000000000000000000000`).
pub fn canonical_number_text(n: f64) -> String {
    format!("{n}")
}

/// The number an attribute's text reads as, if it is written as the query language writes
/// numbers: an optional sign, digits, and an optional fraction (`12`, `-0.5`, `+3`, `007`; not
/// `12.1.3`, `1e3`, `.5`, ` 4` or `0x10`). The store sets `num_value` from it for text values.
pub fn number_of_text(s: &str) -> Option<f64> {
    let b = s.as_bytes();
    let unsigned = match b.first() {
        Some(b'+' | b'-') => b.get(1..).unwrap_or(&[]),
        _ => b,
    };
    let mut parts = unsigned.splitn(2, |&c| c == b'.');
    let whole = parts.next().unwrap_or(&[]);
    let fraction_ok = parts
        .next()
        .is_none_or(|f| !f.is_empty() && f.iter().all(u8::is_ascii_digit));
    if whole.is_empty() || !whole.iter().all(u8::is_ascii_digit) || !fraction_ok {
        return None;
    }
    s.parse::<f64>().ok().filter(|n| n.is_finite())
}

/// Why a query was refused: where (a byte offset into the text) and why (one line).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("at {position}: {message}")]
pub struct QueryError {
    pub position: usize,
    pub message: String,
}

impl QueryError {
    fn new(position: usize, message: impl Into<String>) -> Self {
        QueryError {
            position,
            message: message.into(),
        }
    }

    /// Two lines for a terminal: the query (control characters shown as spaces), then a caret
    /// under the offending character followed by the message.
    pub fn render(&self, query: &str) -> String {
        let line: String = query
            .chars()
            .map(|c| if c.is_control() { ' ' } else { c })
            .collect();
        let at = floor_char_boundary(query, self.position);
        let column = query.get(..at).map_or(0, |s| s.chars().count());
        format!("{line}\n{}^ {}", " ".repeat(column), self.message)
    }
}

fn floor_char_boundary(s: &str, at: usize) -> usize {
    let mut at = at.min(s.len());
    while !s.is_char_boundary(at) {
        at -= 1;
    }
    at
}

/// What the evaluator needs to know about one device.
pub trait DeviceFacts {
    /// The value of a built-in field: [`FactValue::Text`] for `id`, `name`, `device_type`;
    /// [`FactValue::State`] for `state`; [`FactValue::Bool`] for `online`; [`FactValue::Time`]
    /// for `last_seen`, `created_at`. `None` when the device has none (`device_type`,
    /// `last_seen`). A value of another kind compares as nothing.
    fn builtin(&self, field: Builtin) -> Option<FactValue<'_>>;
    /// A reported inventory attribute.
    fn inventory(&self, name: &str) -> Option<&AttributeValue>;
    /// An operator tag's value.
    fn tag(&self, key: &str) -> Option<&str>;
    /// The reported twin value at this path of object keys ([`json_at`] walks it).
    fn reported(&self, path: &[String]) -> Option<&serde_json::Value>;
    /// Whether the device is a member of the static or dynamic group with this name.
    fn in_group(&self, name: &str) -> bool;
}

/// The value of a built-in field of a device.
#[derive(Debug, Clone, PartialEq)]
pub enum FactValue<'a> {
    Text(Cow<'a, str>),
    State(DeviceState),
    Bool(bool),
    Time(Timestamp),
}

/// The value at a path of object keys under `root`; `None` when a key is missing or a step is
/// not an object.
pub fn json_at<'v>(root: &'v serde_json::Value, path: &[String]) -> Option<&'v serde_json::Value> {
    path.iter()
        .try_fold(root, |v, key| v.as_object()?.get(key.as_str()))
}

/// Parses and checks a query (see the module documentation).
pub fn parse(text: &str) -> Result<Query, QueryError> {
    if text.len() > MAX_QUERY_LEN {
        return Err(QueryError::new(
            floor_char_boundary(text, MAX_QUERY_LEN),
            format!(
                "a query is at most {MAX_QUERY_LEN} bytes; this one has {}",
                text.len()
            ),
        ));
    }
    let mut parser = Parser {
        text,
        toks: lex(text),
        i: 0,
        depth: 0,
        comparisons: 0,
    };
    if matches!(parser.peek().tok, Tok::Eof) {
        return Err(QueryError::new(parser.peek().start, "the query is empty"));
    }
    let expr = parser.parse_or()?;
    parser.cur()?;
    if !matches!(parser.peek().tok, Tok::Eof) {
        return Err(parser.expected("\"and\", \"or\" or the end of the query"));
    }
    let query = Query { expr };
    let canonical = query.to_string().len();
    if canonical > MAX_QUERY_LEN {
        return Err(QueryError::new(
            0,
            format!(
                "the query is {canonical} bytes written canonically; the limit is {MAX_QUERY_LEN}"
            ),
        ));
    }
    Ok(query)
}

impl Query {
    pub fn expr(&self) -> &Expr {
        &self.expr
    }

    pub fn into_expr(self) -> Expr {
        self.expr
    }

    /// Whether the device these facts describe is selected, evaluated at `now`.
    pub fn matches<F: DeviceFacts + ?Sized>(&self, facts: &F, now: Timestamp) -> bool {
        self.expr.eval(facts, now)
    }

    /// The group names the query tests membership of, in order of appearance, without repeats.
    pub fn groups(&self) -> Vec<&str> {
        let mut out: Vec<&str> = Vec::new();
        self.expr.walk(&mut |e| {
            let values: &[Value] = match e {
                Expr::Compare {
                    field: Field::Group,
                    value,
                    ..
                } => std::slice::from_ref(value),
                Expr::In {
                    field: Field::Group,
                    values,
                    ..
                } => values,
                _ => &[],
            };
            for v in values {
                if let Value::Text(g) = v
                    && !out.contains(&g.as_str())
                {
                    out.push(g);
                }
            }
        });
        out
    }

    /// Whether the result may change with time alone: the query uses `now`.
    pub fn uses_now(&self) -> bool {
        let mut found = false;
        self.expr.walk(&mut |e| {
            let values: &[Value] = match e {
                Expr::Compare { value, .. } => std::slice::from_ref(value),
                Expr::In { values, .. } => values,
                _ => &[],
            };
            found |= values
                .iter()
                .any(|v| matches!(v, Value::Time(TimeValue::RelativeToNow { .. })));
        });
        found
    }
}

impl fmt::Display for Query {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.expr.fmt(f)
    }
}

impl FromStr for Query {
    type Err = QueryError;
    fn from_str(s: &str) -> Result<Self, QueryError> {
        parse(s)
    }
}

/// A query serialises as its canonical text.
impl Serialize for Query {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Query {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        parse(&s).map_err(serde::de::Error::custom)
    }
}

// ---------------------------------------------------------------------------------------------
// Display (the canonical text)

fn write_quoted(f: &mut fmt::Formatter<'_>, s: &str) -> fmt::Result {
    f.write_str("\"")?;
    for c in s.chars() {
        if matches!(c, '"' | '\\') {
            f.write_str("\\")?;
        }
        fmt::Write::write_char(f, c)?;
    }
    f.write_str("\"")
}

fn is_bare(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'_' | b':' | b'-')
}

fn is_attribute_name(s: &str) -> bool {
    AttributeName::parse(s).is_ok()
}

impl fmt::Display for Builtin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl fmt::Display for CmpOp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl fmt::Display for Field {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let name = |f: &mut fmt::Formatter<'_>, prefix: &str, name: &str| {
            f.write_str(prefix)?;
            if !name.is_empty() && name.bytes().all(|b| is_bare(b) || b == b'.') {
                f.write_str(name)
            } else {
                write_quoted(f, name)
            }
        };
        match self {
            Field::Builtin(b) => f.write_str(b.as_str()),
            Field::Group => f.write_str("group"),
            Field::Inventory(n) => name(f, "inventory.", n),
            Field::Tag(k) => name(f, "tag.", k),
            Field::Reported(path) => {
                f.write_str("reported")?;
                for seg in path {
                    f.write_str(".")?;
                    if !seg.is_empty() && seg.bytes().all(is_bare) {
                        f.write_str(seg)?;
                    } else {
                        write_quoted(f, seg)?;
                    }
                }
                Ok(())
            }
        }
    }
}

const UNITS: [(&str, i64); 6] = [
    ("w", 7 * 24 * 3_600_000),
    ("d", 24 * 3_600_000),
    ("h", 3_600_000),
    ("m", 60_000),
    ("s", 1000),
    ("ms", 1),
];

impl fmt::Display for TimeValue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            TimeValue::Absolute(t) => write_quoted(f, &t.to_rfc3339()),
            TimeValue::RelativeToNow { millis: 0 } => f.write_str("now"),
            TimeValue::RelativeToNow { millis } => {
                let sign = if millis < 0 { '-' } else { '+' };
                let abs = millis.unsigned_abs();
                let (unit, size) = UNITS
                    .iter()
                    .map(|&(u, ms)| (u, ms.unsigned_abs()))
                    .find(|&(_, ms)| abs % ms == 0)
                    .unwrap_or(("ms", 1));
                write!(f, "now {sign} {}{unit}", abs / size)
            }
        }
    }
}

impl fmt::Display for Value {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Value::Text(s) => write_quoted(f, s),
            Value::Number(n) => f.write_str(&canonical_number_text(*n)),
            Value::Bool(b) => write!(f, "{b}"),
            Value::Time(t) => t.fmt(f),
        }
    }
}

impl fmt::Display for GlobPattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write_quoted(f, &self.source)
    }
}

impl fmt::Display for Expr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fn join(
            f: &mut fmt::Formatter<'_>,
            items: &[Expr],
            sep: &str,
            parens: impl Fn(&Expr) -> bool,
        ) -> fmt::Result {
            for (i, e) in items.iter().enumerate() {
                if i > 0 {
                    f.write_str(sep)?;
                }
                if parens(e) {
                    write!(f, "({e})")?;
                } else {
                    write!(f, "{e}")?;
                }
            }
            Ok(())
        }
        match self {
            // Never made by the parser; written as equivalent conditions.
            Expr::And(items) if items.is_empty() => f.write_str("exists id"),
            Expr::Or(items) if items.is_empty() => f.write_str("not exists id"),
            Expr::And(items) => join(f, items, " and ", |e| {
                matches!(e, Expr::And(_) | Expr::Or(_))
            }),
            Expr::Or(items) => join(f, items, " or ", |e| matches!(e, Expr::Or(_))),
            Expr::Not(inner) => match **inner {
                Expr::And(_) | Expr::Or(_) => write!(f, "not ({inner})"),
                _ => write!(f, "not {inner}"),
            },
            Expr::Compare { field, op, value } => write!(f, "{field} {op} {value}"),
            Expr::In {
                field,
                values,
                negated,
            } => {
                write!(f, "{field} {}in (", if *negated { "not " } else { "" })?;
                for (i, v) in values.iter().enumerate() {
                    if i > 0 {
                        f.write_str(", ")?;
                    }
                    write!(f, "{v}")?;
                }
                f.write_str(")")
            }
            Expr::Exists { field } => write!(f, "exists {field}"),
            Expr::Glob { field, pattern } => write!(f, "{field} ~ {pattern}"),
        }
    }
}

impl Expr {
    /// Calls `visit` on this node and every node below it.
    fn walk<'a>(&'a self, visit: &mut impl FnMut(&'a Expr)) {
        visit(self);
        match self {
            Expr::And(items) | Expr::Or(items) => {
                for e in items {
                    e.walk(visit);
                }
            }
            Expr::Not(inner) => inner.walk(visit),
            _ => {}
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Lexer

#[derive(Debug, Clone, PartialEq)]
enum Tok {
    /// A field or a keyword: the head, then one segment per `.`.
    Word(Vec<Segment>),
    Str(String),
    /// `digits` (maybe with a fraction) and the letters right after them (a unit, or empty).
    Num {
        digits: String,
        unit: String,
    },
    Op(CmpOp),
    Tilde,
    LParen,
    RParen,
    Comma,
    Plus,
    Minus,
    /// The lexer stopped here with this message.
    Error(String),
    Eof,
}

#[derive(Debug, Clone, PartialEq)]
struct Segment {
    text: String,
    quoted: bool,
}

#[derive(Debug, Clone)]
struct Token {
    tok: Tok,
    start: usize,
    end: usize,
}

/// Reads a string literal whose opening quote is at `start`: its value and the offset after the
/// closing quote, or where and why it is wrong.
fn lex_string(text: &str, start: usize) -> Result<(String, usize), (usize, String)> {
    let mut out = String::new();
    let body = text.get(start + 1..).unwrap_or("");
    let mut chars = body.char_indices();
    while let Some((off, c)) = chars.next() {
        let at = start + 1 + off;
        match c {
            '"' => return Ok((out, at + 1)),
            '\\' => match chars.next() {
                Some((_, e @ ('"' | '\\'))) => out.push(e),
                Some((_, e)) => {
                    return Err((
                        at,
                        format!(
                            "unknown escape \\{} in a string: only \\\" and \\\\ are allowed",
                            e.escape_debug()
                        ),
                    ));
                }
                None => break,
            },
            c => out.push(c),
        }
    }
    Err((
        start,
        "unterminated string: the closing \" is missing".to_owned(),
    ))
}

fn lex(text: &str) -> Vec<Token> {
    let b = text.as_bytes();
    let at = |i: usize| b.get(i).copied().unwrap_or(0);
    let mut out = Vec::new();
    let mut i = 0;
    loop {
        while at(i).is_ascii_whitespace() {
            i += 1;
        }
        let start = i;
        if i >= b.len() {
            out.push(Token {
                tok: Tok::Eof,
                start: b.len(),
                end: b.len(),
            });
            return out;
        }
        let c = at(i);
        let (tok, end) = match c {
            b'(' => (Tok::LParen, i + 1),
            b')' => (Tok::RParen, i + 1),
            b',' => (Tok::Comma, i + 1),
            b'~' => (Tok::Tilde, i + 1),
            b'+' => (Tok::Plus, i + 1),
            b'-' => (Tok::Minus, i + 1),
            b'=' if at(i + 1) == b'=' => (Tok::Error("write = to compare, not ==".into()), i),
            b'=' => (Tok::Op(CmpOp::Eq), i + 1),
            b'!' if at(i + 1) == b'=' => (Tok::Op(CmpOp::Ne), i + 2),
            b'!' => (Tok::Error("write not, not !".into()), i),
            b'<' if at(i + 1) == b'=' => (Tok::Op(CmpOp::Le), i + 2),
            b'<' if at(i + 1) == b'>' => (Tok::Error("write !=, not <>".into()), i),
            b'<' => (Tok::Op(CmpOp::Lt), i + 1),
            b'>' if at(i + 1) == b'=' => (Tok::Op(CmpOp::Ge), i + 2),
            b'>' => (Tok::Op(CmpOp::Gt), i + 1),
            b'&' => (Tok::Error("write and, not &&".into()), i),
            b'|' => (Tok::Error("write or, not ||".into()), i),
            b'"' => match lex_string(text, i) {
                Ok((s, end)) => (Tok::Str(s), end),
                Err((pos, msg)) => {
                    out.push(Token {
                        tok: Tok::Error(msg),
                        start: pos,
                        end: pos,
                    });
                    out.push(Token {
                        tok: Tok::Eof,
                        start: b.len(),
                        end: b.len(),
                    });
                    return out;
                }
            },
            b'0'..=b'9' => {
                let mut j = i;
                while at(j).is_ascii_digit() {
                    j += 1;
                }
                if at(j) == b'.' && at(j + 1).is_ascii_digit() {
                    j += 1;
                    while at(j).is_ascii_digit() {
                        j += 1;
                    }
                }
                let mut k = j;
                while at(k).is_ascii_alphabetic() {
                    k += 1;
                }
                let digits = text.get(i..j).unwrap_or("").to_owned();
                let unit = text.get(j..k).unwrap_or("").to_owned();
                (Tok::Num { digits, unit }, k)
            }
            c if c.is_ascii_alphabetic() || c == b'_' => {
                let mut j = i;
                while is_bare(at(j)) {
                    j += 1;
                }
                let head = text.get(i..j).unwrap_or("");
                let mut segments = Vec::new();
                if head.len() > 3
                    && head
                        .get(..4)
                        .is_some_and(|h| h.eq_ignore_ascii_case("now-"))
                {
                    // `now-1h`: `now`, then the rest.
                    j = i + 3;
                    segments.push(Segment {
                        text: text.get(i..j).unwrap_or("").to_owned(),
                        quoted: false,
                    });
                } else {
                    segments.push(Segment {
                        text: head.to_owned(),
                        quoted: false,
                    });
                    let mut failed = None;
                    while at(j) == b'.' {
                        j += 1;
                        if at(j) == b'"' {
                            match lex_string(text, j) {
                                Ok((s, end)) => {
                                    segments.push(Segment {
                                        text: s,
                                        quoted: true,
                                    });
                                    j = end;
                                }
                                Err(e) => {
                                    failed = Some(e);
                                    break;
                                }
                            }
                        } else {
                            let k = j;
                            while is_bare(at(j)) {
                                j += 1;
                            }
                            segments.push(Segment {
                                text: text.get(k..j).unwrap_or("").to_owned(),
                                quoted: false,
                            });
                        }
                    }
                    if let Some((pos, msg)) = failed {
                        out.push(Token {
                            tok: Tok::Error(msg),
                            start: pos,
                            end: pos,
                        });
                        out.push(Token {
                            tok: Tok::Eof,
                            start: b.len(),
                            end: b.len(),
                        });
                        return out;
                    }
                }
                (Tok::Word(segments), j)
            }
            _ => {
                let ch = text.get(i..).and_then(|s| s.chars().next()).unwrap_or('?');
                (
                    Tok::Error(format!("unexpected character \"{}\"", ch.escape_debug())),
                    i,
                )
            }
        };
        let is_error = matches!(tok, Tok::Error(_));
        out.push(Token { tok, start, end });
        if is_error {
            out.push(Token {
                tok: Tok::Eof,
                start: b.len(),
                end: b.len(),
            });
            return out;
        }
        i = end;
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kw {
    And,
    Or,
    Not,
    In,
    Exists,
    True,
    False,
    Now,
}

fn keyword(tok: &Tok) -> Option<Kw> {
    let Tok::Word(segs) = tok else {
        return None;
    };
    let [seg] = segs.as_slice() else {
        return None;
    };
    let words = [
        ("and", Kw::And),
        ("or", Kw::Or),
        ("not", Kw::Not),
        ("in", Kw::In),
        ("exists", Kw::Exists),
        ("true", Kw::True),
        ("false", Kw::False),
        ("now", Kw::Now),
    ];
    words
        .iter()
        .find(|(w, _)| seg.text.eq_ignore_ascii_case(w))
        .map(|&(_, k)| k)
}

// ---------------------------------------------------------------------------------------------
// Parser

/// How a field's values are typed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Text,
    State,
    Bool,
    Time,
    Group,
    /// Inventory: strings, numbers and booleans, compared through their text.
    Mixed,
    /// Reported: strings, numbers and booleans, typed as JSON.
    Json,
}

fn kind(field: &Field) -> Kind {
    match field {
        Field::Builtin(Builtin::Id | Builtin::Name | Builtin::DeviceType) => Kind::Text,
        Field::Builtin(Builtin::State) => Kind::State,
        Field::Builtin(Builtin::Online) => Kind::Bool,
        Field::Builtin(Builtin::LastSeen | Builtin::CreatedAt) => Kind::Time,
        Field::Group => Kind::Group,
        Field::Inventory(_) | Field::Tag(_) => Kind::Mixed,
        Field::Reported(_) => Kind::Json,
    }
}

/// How a field is being tested.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Use {
    Cmp(CmpOp),
    In,
    Exists,
    Glob,
}

/// Whether `field` may be tested this way; the message when not.
fn check_use(field: &Field, how: Use) -> Result<(), String> {
    let k = kind(field);
    let equality_only = matches!(k, Kind::Group | Kind::State | Kind::Bool);
    match how {
        Use::Exists if k == Kind::Group => {
            Err("group cannot be tested with exists: write group = \"name\"".to_owned())
        }
        Use::Cmp(op) if op.is_ordering() && equality_only => Err(format!(
            "{field} is compared only with =, !=, in and not in"
        )),
        Use::Glob if !matches!(k, Kind::Text | Kind::Mixed | Kind::Json) => {
            Err(format!("~ matches only text, and {field} is not text"))
        }
        _ => Ok(()),
    }
}

const STATE_LIST: &str = "pending, preauthorized, accepted, rejected or decommissioned";

/// A value as written, before it is checked against its field.
enum Raw {
    Text(String),
    Number(f64),
    Bool(bool),
    Now(i64),
}

/// Checks a value against its field (`op` is `None` inside an `in` list) and gives its typed
/// form.
fn check_value(field: &Field, op: Option<CmpOp>, raw: Raw, shown: &str) -> Result<Value, String> {
    let ordering = op.is_some_and(CmpOp::is_ordering);
    let now_misplaced = || "now is only for last_seen and created_at".to_owned();
    match (kind(field), raw) {
        (_, Raw::Now(_)) if kind(field) != Kind::Time => Err(now_misplaced()),
        (Kind::Text | Kind::Group, Raw::Text(s)) => Ok(Value::Text(s)),
        (Kind::Text | Kind::Group, _) => Err(format!(
            "{field} is text: put the value in quotes, like \"{shown}\""
        )),
        (Kind::State, Raw::Text(s)) => {
            if s.parse::<DeviceState>().is_ok() {
                Ok(Value::Text(s))
            } else {
                Err(format!(
                    "unknown state \"{}\": expected {STATE_LIST}",
                    clip(&s)
                ))
            }
        }
        (Kind::State, _) => Err(format!("state is one of {STATE_LIST}, in quotes")),
        (Kind::Bool, Raw::Bool(b)) => Ok(Value::Bool(b)),
        (Kind::Bool, _) => Err(format!("{field} is true or false")),
        (Kind::Time, Raw::Now(millis)) => Ok(Value::Time(TimeValue::RelativeToNow { millis })),
        (Kind::Time, Raw::Text(s)) => match Timestamp::parse_rfc3339(&s) {
            Ok(t) if (MIN_TIME..=MAX_TIME).contains(&t.unix_millis()) => {
                Ok(Value::Time(TimeValue::Absolute(t)))
            }
            Ok(_) => Err(format!(
                "\"{}\" is out of range: years 0 to 9999 UTC",
                clip(&s)
            )),
            Err(_) => Err(format!(
                "\"{}\" is not a time: write now - 1d, or an RFC 3339 time like \"2026-01-31T08:00:00Z\"",
                clip(&s)
            )),
        },
        (Kind::Time, _) => Err(format!(
            "{field} is a time: write now - 1d, or an RFC 3339 time like \"2026-01-31T08:00:00Z\""
        )),
        (Kind::Mixed | Kind::Json, Raw::Bool(_)) if ordering => {
            Err("true and false are compared only with =, !=, in and not in".to_owned())
        }
        (Kind::Mixed | Kind::Json, Raw::Bool(b)) => Ok(Value::Bool(b)),
        (Kind::Mixed | Kind::Json, Raw::Number(n)) => Ok(Value::Number(n)),
        (Kind::Mixed | Kind::Json, Raw::Text(s)) => Ok(Value::Text(s)),
        (Kind::Mixed | Kind::Json, Raw::Now(_)) => Err(now_misplaced()),
    }
}

/// 0000-01-01T00:00:00Z and 9999-12-31T23:59:59.999Z: the times RFC 3339 can write.
const MIN_TIME: i64 = -62_167_219_200_000;
const MAX_TIME: i64 = 253_402_300_799_999;

/// Some text for a message: at most 40 characters, control characters escaped.
fn clip(s: &str) -> String {
    let mut out = String::new();
    for (n, c) in s.chars().enumerate() {
        if n == 40 {
            out.push_str("...");
            break;
        }
        if c.is_control() {
            out.extend(c.escape_default());
        } else {
            out.push(c);
        }
    }
    out
}

struct Parser<'t> {
    text: &'t str,
    toks: Vec<Token>,
    i: usize,
    depth: usize,
    comparisons: usize,
}

impl Parser<'_> {
    fn peek(&self) -> &Token {
        // `lex` always ends with Eof and `bump` never moves past it.
        const EOF: Token = Token {
            tok: Tok::Eof,
            start: 0,
            end: 0,
        };
        self.toks.get(self.i).or(self.toks.last()).unwrap_or(&EOF)
    }

    /// The current token, or the lexer's error if it stopped here.
    fn cur(&self) -> Result<&Token, QueryError> {
        let t = self.peek();
        match &t.tok {
            Tok::Error(msg) => Err(QueryError::new(t.start, msg.clone())),
            _ => Ok(t),
        }
    }

    fn bump(&mut self) -> Token {
        let t = self.peek().clone();
        if !matches!(t.tok, Tok::Eof) {
            self.i += 1;
        }
        t
    }

    fn at_kw(&self, kw: Kw) -> bool {
        keyword(&self.peek().tok) == Some(kw)
    }

    /// A token as a message shows it.
    fn shown(&self, t: &Token) -> String {
        match &t.tok {
            Tok::Eof => "the end of the query".to_owned(),
            Tok::Str(_) => clip(self.text.get(t.start..t.end).unwrap_or("")),
            _ => format!("\"{}\"", clip(self.text.get(t.start..t.end).unwrap_or(""))),
        }
    }

    /// `expected <what> after <previous token>, found <current token>`, at the current token.
    fn expected(&self, what: &str) -> QueryError {
        let cur = self.peek();
        if let Tok::Error(msg) = &cur.tok {
            return QueryError::new(cur.start, msg.clone());
        }
        let found = self.shown(cur);
        let message = match self.i.checked_sub(1).and_then(|p| self.toks.get(p)) {
            Some(prev) => format!("expected {what} after {}, found {found}", self.shown(prev)),
            None => format!("expected {what}, found {found}"),
        };
        QueryError::new(cur.start, message)
    }

    fn enter(&mut self, at: usize) -> Result<(), QueryError> {
        self.depth += 1;
        if self.depth > MAX_DEPTH {
            return Err(QueryError::new(
                at,
                format!("the query nests more than {MAX_DEPTH} levels of parentheses and not"),
            ));
        }
        Ok(())
    }

    fn count(&mut self, at: usize) -> Result<(), QueryError> {
        self.comparisons += 1;
        if self.comparisons > MAX_COMPARISONS {
            return Err(QueryError::new(
                at,
                format!("a query has at most {MAX_COMPARISONS} comparisons"),
            ));
        }
        Ok(())
    }

    fn parse_or(&mut self) -> Result<Expr, QueryError> {
        let first = self.parse_and()?;
        if !self.at_kw(Kw::Or) {
            return Ok(first);
        }
        let mut items = vec![first];
        while self.at_kw(Kw::Or) {
            self.bump();
            items.push(self.parse_and()?);
        }
        Ok(Expr::Or(items))
    }

    fn parse_and(&mut self) -> Result<Expr, QueryError> {
        let first = self.parse_unary()?;
        if !self.at_kw(Kw::And) {
            return Ok(first);
        }
        let mut items = vec![first];
        while self.at_kw(Kw::And) {
            self.bump();
            items.push(self.parse_unary()?);
        }
        Ok(Expr::And(items))
    }

    fn parse_unary(&mut self) -> Result<Expr, QueryError> {
        if self.at_kw(Kw::Not) {
            let not = self.bump();
            self.enter(not.start)?;
            let inner = self.parse_unary()?;
            self.depth -= 1;
            return Ok(Expr::Not(Box::new(inner)));
        }
        self.parse_primary()
    }

    fn parse_primary(&mut self) -> Result<Expr, QueryError> {
        let tok = self.cur()?.clone();
        match &tok.tok {
            Tok::LParen => {
                self.bump();
                self.enter(tok.start)?;
                let inner = self.parse_or()?;
                self.cur()?;
                if !matches!(self.peek().tok, Tok::RParen) {
                    return Err(
                        self.expected(&format!("\")\" to close the \"(\" at {}", tok.start))
                    );
                }
                self.bump();
                self.depth -= 1;
                Ok(inner)
            }
            Tok::Word(_) if keyword(&tok.tok) == Some(Kw::Exists) => {
                self.bump();
                let ftok = self.cur()?.clone();
                if !matches!(ftok.tok, Tok::Word(_)) || keyword(&ftok.tok).is_some() {
                    return Err(self.expected("a field"));
                }
                self.bump();
                let field = self.field(&ftok)?;
                check_use(&field, Use::Exists).map_err(|m| QueryError::new(ftok.start, m))?;
                self.count(tok.start)?;
                Ok(Expr::Exists { field })
            }
            Tok::Word(_) if keyword(&tok.tok).is_none() => self.parse_condition(),
            _ => Err(self.expected("a condition")),
        }
    }

    /// A field token's meaning.
    fn field(&self, tok: &Token) -> Result<Field, QueryError> {
        let Tok::Word(segs) = &tok.tok else {
            return Err(QueryError::new(tok.start, "expected a field"));
        };
        let err = |m: String| Err(QueryError::new(tok.start, m));
        let head = segs.first().map_or("", |s| s.text.as_str());
        let rest = segs.get(1..).unwrap_or(&[]);
        let lower = head.to_ascii_lowercase();
        if rest.is_empty() {
            if let Some(b) = Builtin::ALL.iter().find(|b| b.as_str() == lower) {
                return Ok(Field::Builtin(*b));
            }
            if lower == "group" {
                return Ok(Field::Group);
            }
            if matches!(lower.as_str(), "inventory" | "tag" | "reported") {
                return err(format!("expected {lower}.<name>, found \"{}\"", clip(head)));
            }
            let alike = lower.replace('-', "_");
            if let Some(b) = Builtin::ALL.iter().find(|b| b.as_str() == alike) {
                return err(format!(
                    "unknown field \"{}\": did you mean {b}?",
                    clip(head)
                ));
            }
            return err(format!(
                "unknown field \"{}\": built-in fields are id, name, device_type, state, online, \
                 last_seen, created_at and group; others start with inventory., tag. or reported.",
                clip(head)
            ));
        }
        let joined = || {
            rest.iter()
                .map(|s| s.text.as_str())
                .collect::<Vec<_>>()
                .join(".")
        };
        match lower.as_str() {
            "inventory" | "tag" => {
                let name = joined();
                if !is_attribute_name(&name) {
                    let what = if lower == "tag" {
                        "tag key"
                    } else {
                        "attribute name"
                    };
                    return err(format!(
                        "\"{}\" is not a valid {what}: 1 to 128 of letters, digits and _ . - :, \
                         starting with a letter or digit",
                        clip(&name)
                    ));
                }
                Ok(if lower == "tag" {
                    Field::Tag(name)
                } else {
                    Field::Inventory(name)
                })
            }
            "reported" => {
                if rest.iter().any(|s| s.text.is_empty()) {
                    return err("a reported path has an empty key".to_owned());
                }
                Ok(Field::Reported(
                    rest.iter().map(|s| s.text.clone()).collect(),
                ))
            }
            _ => {
                let raw = self.text.get(tok.start..tok.end).unwrap_or("");
                err(format!(
                    "unknown field \"{}\": only inventory., tag. and reported. have sub-fields",
                    clip(raw)
                ))
            }
        }
    }

    fn parse_condition(&mut self) -> Result<Expr, QueryError> {
        let ftok = self.bump();
        let field = self.field(&ftok)?;
        let optok = self.cur()?.clone();
        let usage = |how| check_use(&field, how).map_err(|m| QueryError::new(optok.start, m));
        match &optok.tok {
            Tok::Op(op) => {
                let op = *op;
                usage(Use::Cmp(op))?;
                self.count(ftok.start)?;
                self.bump();
                let value = self.parse_value(&field, Some(op))?;
                Ok(Expr::Compare { field, op, value })
            }
            Tok::Tilde => {
                usage(Use::Glob)?;
                self.count(ftok.start)?;
                self.bump();
                let ptok = self.cur()?.clone();
                let Tok::Str(source) = &ptok.tok else {
                    return Err(self.expected("a pattern in quotes"));
                };
                let pattern =
                    GlobPattern::parse(source).map_err(|(_, m)| QueryError::new(ptok.start, m))?;
                self.bump();
                Ok(Expr::Glob { field, pattern })
            }
            _ if self.at_kw(Kw::In) => {
                usage(Use::In)?;
                self.count(ftok.start)?;
                self.bump();
                let values = self.parse_list(&field)?;
                Ok(Expr::In {
                    field,
                    values,
                    negated: false,
                })
            }
            _ if self.at_kw(Kw::Not) => {
                usage(Use::In)?;
                self.count(ftok.start)?;
                self.bump();
                self.cur()?;
                if !self.at_kw(Kw::In) {
                    return Err(self.expected("\"in\""));
                }
                self.bump();
                let values = self.parse_list(&field)?;
                Ok(Expr::In {
                    field,
                    values,
                    negated: true,
                })
            }
            _ if self.at_kw(Kw::Exists) => Err(QueryError::new(
                optok.start,
                format!(
                    "exists goes before the field: exists {}",
                    clip(&field.to_string())
                ),
            )),
            _ => Err(self.expected("an operator (=, !=, <, <=, >, >=, in, not in, ~)")),
        }
    }

    fn parse_list(&mut self, field: &Field) -> Result<Vec<Value>, QueryError> {
        self.cur()?;
        if !matches!(self.peek().tok, Tok::LParen) {
            return Err(self.expected("\"(\""));
        }
        self.bump();
        let mut values = Vec::new();
        loop {
            if values.len() == MAX_IN_VALUES {
                return Err(QueryError::new(
                    self.peek().start,
                    format!("an in list has at most {MAX_IN_VALUES} values"),
                ));
            }
            values.push(self.parse_value(field, None)?);
            let t = self.cur()?;
            match t.tok {
                Tok::Comma => {
                    self.bump();
                }
                Tok::RParen => {
                    self.bump();
                    return Ok(values);
                }
                _ => return Err(self.expected("\",\" or \")\"")),
            }
        }
    }

    fn parse_value(&mut self, field: &Field, op: Option<CmpOp>) -> Result<Value, QueryError> {
        let tok = self.cur()?.clone();
        let raw = match &tok.tok {
            Tok::Str(s) => {
                self.bump();
                Raw::Text(s.clone())
            }
            Tok::Num { .. } => {
                self.bump();
                Raw::Number(self.number(&tok, false)?)
            }
            Tok::Plus | Tok::Minus => {
                self.bump();
                let num = self.cur()?.clone();
                if !matches!(num.tok, Tok::Num { .. }) {
                    return Err(self.expected("a number"));
                }
                self.bump();
                Raw::Number(self.number(&num, matches!(tok.tok, Tok::Minus))?)
            }
            Tok::Word(_) => match keyword(&tok.tok) {
                Some(Kw::True) => {
                    self.bump();
                    Raw::Bool(true)
                }
                Some(Kw::False) => {
                    self.bump();
                    Raw::Bool(false)
                }
                Some(Kw::Now) => {
                    self.bump();
                    Raw::Now(self.parse_offset()?)
                }
                Some(_) => return Err(self.expected("a value")),
                None => {
                    let word = clip(self.text.get(tok.start..tok.end).unwrap_or(""));
                    let e = self.expected("a value");
                    return Err(QueryError::new(
                        e.position,
                        format!("{} (text goes in quotes: \"{word}\")", e.message),
                    ));
                }
            },
            _ => return Err(self.expected("a value")),
        };
        let shown = self.text.get(tok.start..self.peek_prev_end()).unwrap_or("");
        check_value(field, op, raw, &clip(shown)).map_err(|m| QueryError::new(tok.start, m))
    }

    /// Where the last consumed token ends.
    fn peek_prev_end(&self) -> usize {
        self.i
            .checked_sub(1)
            .and_then(|p| self.toks.get(p))
            .map_or(0, |t| t.end)
    }

    fn number(&self, tok: &Token, negative: bool) -> Result<f64, QueryError> {
        let Tok::Num { digits, unit } = &tok.tok else {
            return Err(QueryError::new(tok.start, "expected a number"));
        };
        if !unit.is_empty() {
            let message = if UNITS.iter().any(|(u, _)| u == unit) {
                format!("a duration counts from now: write now - {digits}{unit}")
            } else {
                format!(
                    "\"{}{}\" is not a number: write numbers like 42 or 1.5",
                    clip(digits),
                    clip(unit)
                )
            };
            return Err(QueryError::new(tok.start, message));
        }
        match digits.parse::<f64>() {
            Ok(n) if n.is_finite() => Ok(if negative { -n } else { n }),
            _ => Err(QueryError::new(tok.start, "the number is out of range")),
        }
    }

    /// After `now`: an optional `+ <duration>` or `- <duration>`, in milliseconds.
    fn parse_offset(&mut self) -> Result<i64, QueryError> {
        let negative = match self.peek().tok {
            Tok::Plus => false,
            Tok::Minus => true,
            _ => return Ok(0),
        };
        self.bump();
        let tok = self.cur()?.clone();
        let Tok::Num { digits, unit } = &tok.tok else {
            return Err(self.expected("a duration like 1h"));
        };
        if unit.is_empty() {
            return Err(QueryError::new(
                tok.start,
                format!("a duration needs a unit (ms, s, m, h, d or w), like {digits}h"),
            ));
        }
        if digits.contains('.') {
            return Err(QueryError::new(
                tok.start,
                "a duration is a whole number of units, like 90m",
            ));
        }
        let Some(&(_, size)) = UNITS.iter().find(|(u, _)| u == unit) else {
            return Err(QueryError::new(
                tok.start,
                format!("unknown unit \"{}\": use ms, s, m, h, d or w", clip(unit)),
            ));
        };
        let too_long = || QueryError::new(tok.start, "the duration is too long");
        let count = digits.parse::<u64>().map_err(|_| too_long())?;
        let millis = i128::from(count) * i128::from(size);
        let millis = if negative { -millis } else { millis };
        let millis = i64::try_from(millis).map_err(|_| too_long())?;
        self.bump();
        Ok(millis)
    }
}

// ---------------------------------------------------------------------------------------------
// Evaluation

/// One value of a field, ready to compare.
enum Item<'a> {
    /// An inventory value: its text, and its number when it is one.
    Mixed {
        text: Cow<'a, str>,
        number: Option<f64>,
    },
    Text(Cow<'a, str>),
    Number(f64),
    Bool(bool),
    Time(Timestamp),
}

/// What a leaf asks of each value.
#[derive(Clone, Copy)]
enum Test<'q> {
    Cmp(CmpOp, &'q Value),
    In(&'q [Value]),
    Glob(&'q GlobPattern),
}

impl Expr {
    fn eval<F: DeviceFacts + ?Sized>(&self, facts: &F, now: Timestamp) -> bool {
        match self {
            Expr::And(items) => items.iter().all(|e| e.eval(facts, now)),
            Expr::Or(items) => items.iter().any(|e| e.eval(facts, now)),
            Expr::Not(inner) => !inner.eval(facts, now),
            Expr::Compare {
                field,
                op: CmpOp::Ne,
                value,
            } => leaf(facts, field, Test::Cmp(CmpOp::Eq, value), true, now),
            Expr::Compare { field, op, value } => {
                leaf(facts, field, Test::Cmp(*op, value), false, now)
            }
            Expr::In {
                field,
                values,
                negated,
            } => leaf(facts, field, Test::In(values), *negated, now),
            Expr::Exists { field } => *field != Field::Group && items(facts, field).is_some(),
            Expr::Glob { field, pattern } => leaf(facts, field, Test::Glob(pattern), false, now),
        }
    }
}

/// Some value passes `test` (none when `negated`, and then the field must be present).
fn leaf<F: DeviceFacts + ?Sized>(
    facts: &F,
    field: &Field,
    test: Test<'_>,
    negated: bool,
    now: Timestamp,
) -> bool {
    if *field == Field::Group {
        let member = |v: &Value| matches!(v, Value::Text(g) if facts.in_group(g));
        let any = match test {
            Test::Cmp(CmpOp::Eq, v) => member(v),
            Test::In(vs) => vs.iter().any(member),
            _ => return false,
        };
        return any != negated;
    }
    match items(facts, field) {
        None => false,
        Some(items) => {
            let any = items.iter().any(|item| passes(item, test, now));
            any != negated
        }
    }
}

/// A field's values, or `None` when it is absent.
fn items<'a, F: DeviceFacts + ?Sized>(facts: &'a F, field: &Field) -> Option<Vec<Item<'a>>> {
    match field {
        Field::Group => None,
        Field::Builtin(b) => Some(vec![match facts.builtin(*b)? {
            FactValue::Text(s) => Item::Text(s),
            FactValue::State(s) => Item::Text(Cow::Borrowed(s.as_str())),
            FactValue::Bool(b) => Item::Bool(b),
            FactValue::Time(t) => Item::Time(t),
        }]),
        Field::Tag(k) => Some(vec![text_item(facts.tag(k)?)]),
        Field::Inventory(n) => {
            let mixed = |text: Cow<'a, str>, number| Item::Mixed { text, number };
            match facts.inventory(n)? {
                AttributeValue::Text(s) => Some(vec![text_item(s)]),
                AttributeValue::Number(x) => {
                    Some(vec![mixed(Cow::Owned(canonical_number_text(*x)), Some(*x))])
                }
                AttributeValue::Bool(b) => Some(vec![mixed(Cow::Borrowed(bool_text(*b)), None)]),
                AttributeValue::List(l) if l.is_empty() => None,
                AttributeValue::List(l) => Some(l.iter().map(|s| text_item(s)).collect()),
            }
        }
        Field::Reported(path) => {
            let scalar = |v: &'a serde_json::Value| match v {
                serde_json::Value::String(s) => Some(Item::Text(Cow::Borrowed(s))),
                serde_json::Value::Number(n) => n.as_f64().map(Item::Number),
                serde_json::Value::Bool(b) => Some(Item::Bool(*b)),
                _ => None,
            };
            match facts.reported(path)? {
                serde_json::Value::Null => None,
                serde_json::Value::Array(a) => Some(a.iter().filter_map(scalar).collect()),
                serde_json::Value::Object(_) => Some(Vec::new()),
                v => Some(scalar(v).into_iter().collect()),
            }
        }
    }
}

/// An attribute value that is text: the text, and the number it reads as.
fn text_item(s: &str) -> Item<'_> {
    Item::Mixed {
        text: Cow::Borrowed(s),
        number: number_of_text(s),
    }
}

fn bool_text(b: bool) -> &'static str {
    if b { "true" } else { "false" }
}

fn passes(item: &Item<'_>, test: Test<'_>, now: Timestamp) -> bool {
    match test {
        Test::Cmp(op, v) => compare(item, op, v, now),
        Test::In(vs) => vs.iter().any(|v| compare(item, CmpOp::Eq, v, now)),
        Test::Glob(p) => match item {
            Item::Mixed { text, .. } | Item::Text(text) => p.matches(text),
            _ => false,
        },
    }
}

/// `item op value`; false when the types do not meet.
fn compare(item: &Item<'_>, op: CmpOp, value: &Value, now: Timestamp) -> bool {
    let ord = match (item, value) {
        (Item::Mixed { text, .. } | Item::Text(text), Value::Text(s)) => {
            Some(text.as_ref().cmp(s.as_str()))
        }
        (Item::Mixed { text, .. }, Value::Bool(b)) => {
            return op == CmpOp::Eq && text.as_ref() == bool_text(*b);
        }
        (
            Item::Mixed {
                number: Some(n), ..
            }
            | Item::Number(n),
            Value::Number(m),
        ) => n.partial_cmp(m),
        (Item::Bool(a), Value::Bool(b)) => return op == CmpOp::Eq && a == b,
        (Item::Time(t), Value::Time(tv)) => Some(t.cmp(&tv.resolve(now))),
        _ => None,
    };
    ord.is_some_and(|o| op.holds(o))
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    use crate::inventory::parse_inventory;

    fn q(text: &str) -> Expr {
        match parse(text) {
            Ok(q) => q.into_expr(),
            Err(e) => panic!("{text:?}: {e}"),
        }
    }

    fn err(text: &str) -> String {
        match parse(text) {
            Ok(q) => panic!("{text:?} parsed as {q}"),
            Err(e) => e.to_string(),
        }
    }

    fn inv(name: &str) -> Field {
        Field::Inventory(name.to_owned())
    }

    fn cmp(field: Field, op: CmpOp, value: Value) -> Expr {
        Expr::Compare { field, op, value }
    }

    fn text(s: &str) -> Value {
        Value::Text(s.to_owned())
    }

    fn name_is(s: &str) -> Expr {
        cmp(Field::Builtin(Builtin::Name), CmpOp::Eq, text(s))
    }

    // -- parsing -------------------------------------------------------------------------------

    #[test]
    fn parses_every_construct() {
        use CmpOp::*;
        let cases: Vec<(&str, Expr)> = vec![
            ("name = \"kiosk-1\"", name_is("kiosk-1")),
            (
                "inventory.os.id != \"debian\"",
                cmp(inv("os.id"), Ne, text("debian")),
            ),
            (
                "inventory.cpu.count >= 4",
                cmp(inv("cpu.count"), Ge, Value::Number(4.0)),
            ),
            (
                "inventory.load<-0.5",
                cmp(inv("load"), Lt, Value::Number(-0.5)),
            ),
            ("inventory.x <= +2", cmp(inv("x"), Le, Value::Number(2.0))),
            (
                "inventory.hw-rev:a > \"b\"",
                cmp(inv("hw-rev:a"), Gt, text("b")),
            ),
            (
                "inventory.ota.enabled = true",
                cmp(inv("ota.enabled"), Eq, Value::Bool(true)),
            ),
            (
                "online = false",
                cmp(Field::Builtin(Builtin::Online), Eq, Value::Bool(false)),
            ),
            (
                "tag.site = \"lyon\"",
                cmp(Field::Tag("site".into()), Eq, text("lyon")),
            ),
            (
                "reported.firmware.channel = \"beta\"",
                cmp(
                    Field::Reported(vec!["firmware".into(), "channel".into()]),
                    Eq,
                    text("beta"),
                ),
            ),
            (
                "reported.\"wi-fi ssid\".\"a.b\" = 1",
                cmp(
                    Field::Reported(vec!["wi-fi ssid".into(), "a.b".into()]),
                    Eq,
                    Value::Number(1.0),
                ),
            ),
            (
                "inventory.\"os.id\" = \"x\"",
                cmp(inv("os.id"), Eq, text("x")),
            ),
            (
                "state in (\"accepted\", \"preauthorized\")",
                Expr::In {
                    field: Field::Builtin(Builtin::State),
                    values: vec![text("accepted"), text("preauthorized")],
                    negated: false,
                },
            ),
            (
                "group not in (\"a\",\"b\")",
                Expr::In {
                    field: Field::Group,
                    values: vec![text("a"), text("b")],
                    negated: true,
                },
            ),
            ("group = \"kiosks\"", cmp(Field::Group, Eq, text("kiosks"))),
            (
                "exists device_type",
                Expr::Exists {
                    field: Field::Builtin(Builtin::DeviceType),
                },
            ),
            (
                "not exists inventory.a",
                Expr::Not(Box::new(Expr::Exists { field: inv("a") })),
            ),
            (
                "name ~ \"rpi-*\"",
                Expr::Glob {
                    field: Field::Builtin(Builtin::Name),
                    pattern: GlobPattern::parse("rpi-*").unwrap(),
                },
            ),
            (
                "name = \"say \\\"hi\\\" \\\\ bye\"",
                name_is("say \"hi\" \\ bye"),
            ),
            (
                "last_seen < now - 1h",
                cmp(
                    Field::Builtin(Builtin::LastSeen),
                    Lt,
                    Value::Time(TimeValue::RelativeToNow { millis: -3_600_000 }),
                ),
            ),
            (
                "last_seen>now-30m",
                cmp(
                    Field::Builtin(Builtin::LastSeen),
                    Gt,
                    Value::Time(TimeValue::RelativeToNow { millis: -1_800_000 }),
                ),
            ),
            (
                "created_at <= now + 5d",
                cmp(
                    Field::Builtin(Builtin::CreatedAt),
                    Le,
                    Value::Time(TimeValue::RelativeToNow {
                        millis: 5 * 86_400_000,
                    }),
                ),
            ),
            (
                "created_at = now",
                cmp(
                    Field::Builtin(Builtin::CreatedAt),
                    Eq,
                    Value::Time(TimeValue::RelativeToNow { millis: 0 }),
                ),
            ),
            (
                "created_at > \"2026-01-01T01:00:00+01:00\"",
                cmp(
                    Field::Builtin(Builtin::CreatedAt),
                    Gt,
                    Value::Time(TimeValue::Absolute(
                        Timestamp::parse_rfc3339("2026-01-01T00:00:00Z").unwrap(),
                    )),
                ),
            ),
        ];
        for (text, want) in cases {
            assert_eq!(q(text), want, "{text}");
        }
    }

    #[test]
    fn durations_in_every_unit() {
        for (text, millis) in [
            ("now - 250ms", -250),
            ("now - 2s", -2000),
            ("now + 3m", 180_000),
            ("now - 4h", -4 * 3_600_000),
            ("now - 5d", -5 * 86_400_000),
            ("now + 1w", 7 * 86_400_000),
            ("NOW - 0s", 0),
        ] {
            assert_eq!(
                q(&format!("last_seen > {text}")),
                cmp(
                    Field::Builtin(Builtin::LastSeen),
                    CmpOp::Gt,
                    Value::Time(TimeValue::RelativeToNow { millis })
                ),
                "{text}"
            );
        }
    }

    #[test]
    fn precedence_not_and_or() {
        let a = || name_is("a");
        let b = || name_is("b");
        let c = || name_is("c");
        let not = |e: Expr| Expr::Not(Box::new(e));
        assert_eq!(
            q(r#"name = "a" or name = "b" and not name = "c""#),
            Expr::Or(vec![a(), Expr::And(vec![b(), not(c())])])
        );
        assert_eq!(
            q(r#"not name = "a" and name = "b""#),
            Expr::And(vec![not(a()), b()])
        );
        assert_eq!(
            q(r#"not (name = "a" and name = "b")"#),
            not(Expr::And(vec![a(), b()]))
        );
        assert_eq!(
            q(r#"(name = "a" or name = "b") and name = "c""#),
            Expr::And(vec![Expr::Or(vec![a(), b()]), c()])
        );
        assert_eq!(
            q(r#"name = "a" and name = "b" and name = "c""#),
            Expr::And(vec![a(), b(), c()])
        );
        assert_eq!(
            q(r#"name = "a" and (name = "b" and name = "c")"#),
            Expr::And(vec![a(), Expr::And(vec![b(), c()])])
        );
        assert_eq!(q(r#"((name = "a"))"#), a());
        assert_eq!(q(r#"not not name = "a""#), not(not(a())));
    }

    #[test]
    fn keywords_and_builtins_ignore_case_names_and_values_do_not() {
        assert_eq!(
            q(r#"NAME = "X" AND Online = TRUE Or NOT Exists Inventory.Os"#),
            q(r#"name = "X" and online = true or not exists inventory.Os"#)
        );
        assert_ne!(q("inventory.Os = 1"), q("inventory.os = 1"));
        assert_eq!(
            q("TAG.Env = \"a\""),
            cmp(Field::Tag("Env".into()), CmpOp::Eq, text("a"))
        );
        assert!(err("state = \"Accepted\"").contains("unknown state"));
        assert!(err("last_seen > now - 1H").contains("unknown unit \"H\""));
    }

    #[test]
    fn canonical_text() {
        for (input, canonical) in [
            (
                r#"NAME="a"AND(online=TRUE OR inventory.x>=-1.50)"#,
                r#"name = "a" and (online = true or inventory.x >= -1.5)"#,
            ),
            (
                "last_seen>now-60m and created_at < now + 14d",
                "last_seen > now - 1h and created_at < now + 2w",
            ),
            ("last_seen > now - 1000ms", "last_seen > now - 1s"),
            ("last_seen > now + 0h", "last_seen > now"),
            (
                r#"created_at>"2026-01-01T01:00:00.5+01:00""#,
                r#"created_at > "2026-01-01T00:00:00.5Z""#,
            ),
            (r#"group not  in("a" ,"b")"#, r#"group not in ("a", "b")"#),
            (r#"reported."a"."b c" = 1"#, r#"reported.a."b c" = 1"#),
            (r#"inventory."a.b" = 1"#, "inventory.a.b = 1"),
            (r#"not(not exists tag.x)"#, "not not exists tag.x"),
            (
                r#"a.b = 1"#.replace("a.b", "inventory.a").as_str(),
                "inventory.a = 1",
            ),
            (
                r#"name = "a" or (name = "b" or name = "c")"#,
                r#"name = "a" or (name = "b" or name = "c")"#,
            ),
            (
                r#"not (name = "a" or name = "b")"#,
                r#"not (name = "a" or name = "b")"#,
            ),
            ("inventory.n = 1.0000", "inventory.n = 1"),
            ("inventory.n = 0.1", "inventory.n = 0.1"),
            (r#"name ~ "a\\*?*""#, r#"name ~ "a\\*?*""#),
        ] {
            let query = parse(input).unwrap();
            assert_eq!(query.to_string(), canonical, "{input}");
            assert_eq!(parse(canonical).unwrap(), query, "{canonical}");
        }
    }

    /// Position and message of malformed queries.
    #[test]
    fn errors_point_at_the_problem() {
        let cases: &[(&str, &str)] = &[
            ("", "at 0: the query is empty"),
            ("   ", "at 3: the query is empty"),
            (
                "name =",
                "at 6: expected a value after \"=\", found the end of the query",
            ),
            (
                "name = )",
                "at 7: expected a value after \"=\", found \")\"",
            ),
            (
                "(name = \"a\"",
                "at 11: expected \")\" to close the \"(\" at 0 after \"a\", found the end of the query",
            ),
            (
                "name = \"a\")",
                "at 10: expected \"and\", \"or\" or the end of the query after \"a\", found \")\"",
            ),
            (
                "state = \"bogus\"",
                "at 8: unknown state \"bogus\": expected pending, preauthorized, accepted, rejected or decommissioned",
            ),
            ("online = 3", "at 9: online is true or false"),
            (
                "last_seen > \"yesterday\"",
                "at 12: \"yesterday\" is not a time: write now - 1d, or an RFC 3339 time like \"2026-01-31T08:00:00Z\"",
            ),
            (
                "name < 3",
                "at 7: name is text: put the value in quotes, like \"3\"",
            ),
            (
                "online ~ \"x\"",
                "at 7: ~ matches only text, and online is not text",
            ),
            (
                "name = \"abc",
                "at 7: unterminated string: the closing \" is missing",
            ),
            (
                "os = \"x\"",
                "at 0: unknown field \"os\": built-in fields are id, name, device_type, state, online, last_seen, created_at and group; others start with inventory., tag. or reported.",
            ),
            (
                "last-seen > now",
                "at 0: unknown field \"last-seen\": did you mean last_seen?",
            ),
            (
                "inventory. = 1",
                "at 0: \"\" is not a valid attribute name: 1 to 128 of letters, digits and _ . - :, starting with a letter or digit",
            ),
            (
                "inventory = 1",
                "at 0: expected inventory.<name>, found \"inventory\"",
            ),
            ("name = \"a\" && online = true", "at 11: write and, not &&"),
            ("name == \"a\"", "at 5: write = to compare, not =="),
            (
                "last_seen > now - 1y",
                "at 18: unknown unit \"y\": use ms, s, m, h, d or w",
            ),
            (
                "last_seen > now - 1.5h",
                "at 18: a duration is a whole number of units, like 90m",
            ),
            (
                "last_seen > now - 5",
                "at 18: a duration needs a unit (ms, s, m, h, d or w), like 5h",
            ),
            (
                "last_seen > 1h",
                "at 12: a duration counts from now: write now - 1h",
            ),
            (
                "inventory.x = now",
                "at 14: now is only for last_seen and created_at",
            ),
            (
                "name in ()",
                "at 9: expected a value after \"(\", found \")\"",
            ),
            (
                "name in (\"a\" \"b\")",
                "at 13: expected \",\" or \")\" after \"a\", found \"b\"",
            ),
            (
                "exists group",
                "at 7: group cannot be tested with exists: write group = \"name\"",
            ),
            (
                "name = \"a\\q\"",
                "at 9: unknown escape \\q in a string: only \\\" and \\\\ are allowed",
            ),
            (
                "inventory.x exists",
                "at 12: exists goes before the field: exists inventory.x",
            ),
            (
                "name ~ \"a\\\\\"",
                "at 7: a pattern cannot end with a lone \\",
            ),
            ("reported..x = 1", "at 0: a reported path has an empty key"),
            (
                "not",
                "at 3: expected a condition after \"not\", found the end of the query",
            ),
            (
                "name = \"a\" and",
                "at 14: expected a condition after \"and\", found the end of the query",
            ),
            (
                "device_type = true",
                "at 14: device_type is text: put the value in quotes, like \"true\"",
            ),
            (
                "group < \"a\"",
                "at 6: group is compared only with =, !=, in and not in",
            ),
            (
                "state > \"accepted\"",
                "at 6: state is compared only with =, !=, in and not in",
            ),
            ("name = \"a\" $", "at 11: unexpected character \"$\""),
            (
                "state = accepted",
                "at 8: expected a value after \"=\", found \"accepted\" (text goes in quotes: \"accepted\")",
            ),
            ("inventory.x ≥ 1", "at 12: unexpected character \"≥\""),
            (
                "inventory.x = 1e5",
                "at 14: \"1e\" is not a number: write numbers like 42 or 1.5",
            ),
            (
                "inventory.ota < true",
                "at 16: true and false are compared only with =, !=, in and not in",
            ),
            (
                "inventory.x foo",
                "at 12: expected an operator (=, !=, <, <=, >, >=, in, not in, ~) after \"inventory.x\", found \"foo\"",
            ),
            (
                "name not = \"a\"",
                "at 9: expected \"in\" after \"not\", found \"=\"",
            ),
            (
                "name ~ 3",
                "at 7: expected a pattern in quotes after \"~\", found \"3\"",
            ),
            (
                "name.first = \"a\"",
                "at 0: unknown field \"name.first\": only inventory., tag. and reported. have sub-fields",
            ),
            (
                "last_seen > now - 99999999999999999999s",
                "at 18: the duration is too long",
            ),
            (
                "last_seen > now - 9999999999999999w",
                "at 18: the duration is too long",
            ),
            (
                "created_at < \"9999-12-31T23:00:00-02:00\"",
                "at 13: \"9999-12-31T23:00:00-02:00\" is out of range: years 0 to 9999 UTC",
            ),
            (
                "name = -\"a\"",
                "at 8: expected a number after \"-\", found \"a\"",
            ),
            (
                "and name = \"a\"",
                "at 0: expected a condition, found \"and\"",
            ),
        ];
        for (input, want) in cases {
            assert_eq!(&err(input), want, "{input}");
        }
    }

    #[test]
    fn messages_stay_on_one_line() {
        let text = "reported.\"a\nb\" exists";
        assert_eq!(
            err(text),
            "at 15: exists goes before the field: exists reported.\"a\\nb\""
        );
        let long = format!("reported.\"{}\" exists", "x".repeat(100));
        assert!(err(&long).len() < 100);
        assert_eq!(
            err("name = \"a\\\n\""),
            "at 9: unknown escape \\\\n in a string: only \\\" and \\\\ are allowed"
        );
    }

    #[test]
    fn number_out_of_range() {
        let big = format!("inventory.x = {}", "9".repeat(400));
        assert_eq!(err(&big), "at 14: the number is out of range");
    }

    #[test]
    fn render_draws_a_caret() {
        let text = "name = )";
        let e = parse(text).unwrap_err();
        assert_eq!(
            e.render(text),
            "name = )\n       ^ expected a value after \"=\", found \")\""
        );
        // Columns count characters, not bytes; control characters become spaces.
        let text = "name = \"é\"\tand";
        let e = parse(text).unwrap_err();
        assert_eq!(e.position, 15);
        let rendered = e.render(text);
        assert_eq!(rendered.lines().count(), 2);
        assert_eq!(rendered.lines().next(), Some("name = \"é\" and"));
        assert!(
            rendered
                .lines()
                .nth(1)
                .unwrap()
                .starts_with(&format!("{}^ ", " ".repeat(14)))
        );
        // A position past the end or inside a character is tolerated.
        assert!(QueryError::new(99, "x").render("é").ends_with(" ^ x"));
        assert!(QueryError::new(1, "x").render("é").starts_with("é\n^ x"));
    }

    // -- limits --------------------------------------------------------------------------------

    #[test]
    fn limits() {
        // Length.
        let long = format!("name = \"{}\"", "x".repeat(MAX_QUERY_LEN - 9));
        assert_eq!(long.len(), MAX_QUERY_LEN);
        assert!(parse(&long).is_ok());
        let too_long = format!("name = \"{}\"", "x".repeat(MAX_QUERY_LEN - 8));
        assert_eq!(
            err(&too_long),
            "at 4096: a query is at most 4096 bytes; this one has 4097"
        );
        // A compact text whose canonical text is too long.
        let compact: Vec<String> = (0..60).map(|i| format!("inventory.a{i:02}=1")).collect();
        let mut compact = compact.join(" or ");
        compact.push_str(&format!(
            " or name=\"{}\"",
            "x".repeat(MAX_QUERY_LEN - compact.len() - 11)
        ));
        assert_eq!(compact.len(), MAX_QUERY_LEN);
        assert!(err(&compact).starts_with("at 0: the query is 4218 bytes written canonically"));

        // Depth: parentheses and not count.
        let nested = |n: usize| format!("{}name = \"a\"{}", "(".repeat(n), ")".repeat(n));
        assert!(parse(&nested(MAX_DEPTH)).is_ok());
        assert_eq!(
            err(&nested(MAX_DEPTH + 1)),
            "at 32: the query nests more than 32 levels of parentheses and not"
        );
        let nots = |n: usize| format!("{}name = \"a\"", "not ".repeat(n));
        assert!(parse(&nots(MAX_DEPTH)).is_ok());
        assert!(err(&nots(MAX_DEPTH + 1)).starts_with("at 128: the query nests"));
        let mixed = format!("{}name = \"a\"{}", "not (".repeat(16), ")".repeat(16));
        assert!(parse(&mixed).is_ok());
        let mixed = format!("{}not name = \"a\"{}", "not (".repeat(16), ")".repeat(16));
        assert!(err(&mixed).contains("nests more than 32"));
        // Deep input is refused without deep recursion.
        assert!(parse(&"(".repeat(4000)).is_err());
        assert!(parse(&"not ".repeat(1000)).is_err());

        // Comparisons.
        let many = |n: usize| vec!["online = true"; n].join(" and ");
        assert!(parse(&many(MAX_COMPARISONS)).is_ok());
        assert_eq!(
            err(&many(MAX_COMPARISONS + 1)),
            format!("at {}: a query has at most 64 comparisons", 64 * 18)
        );
        let exists = vec!["exists name"; MAX_COMPARISONS + 1].join(" or ");
        assert!(err(&exists).contains("at most 64 comparisons"));

        // In lists.
        let list = |n: usize| {
            let vals: Vec<String> = (0..n).map(|i| i.to_string()).collect();
            format!("inventory.x in ({})", vals.join(","))
        };
        assert!(parse(&list(MAX_IN_VALUES)).is_ok());
        let e = parse(&list(MAX_IN_VALUES + 1)).unwrap_err();
        assert_eq!(e.message, "an in list has at most 256 values");
        assert_eq!(&list(MAX_IN_VALUES + 1)[e.position..], "256)");
    }

    // -- evaluation ----------------------------------------------------------------------------

    struct Dev {
        name: String,
        device_type: Option<String>,
        state: DeviceState,
        online: bool,
        last_seen: Option<Timestamp>,
        created_at: Timestamp,
        inventory: crate::inventory::Inventory,
        tags: BTreeMap<String, String>,
        reported: serde_json::Value,
        groups: Vec<String>,
    }

    impl DeviceFacts for Dev {
        fn builtin(&self, field: Builtin) -> Option<FactValue<'_>> {
            Some(match field {
                Builtin::Id => FactValue::Text("0190a8a6-6f5e-7000-8000-000000000001".into()),
                Builtin::Name => FactValue::Text(self.name.as_str().into()),
                Builtin::DeviceType => FactValue::Text(self.device_type.as_deref()?.into()),
                Builtin::State => FactValue::State(self.state),
                Builtin::Online => FactValue::Bool(self.online),
                Builtin::LastSeen => FactValue::Time(self.last_seen?),
                Builtin::CreatedAt => FactValue::Time(self.created_at),
            })
        }
        fn inventory(&self, name: &str) -> Option<&AttributeValue> {
            self.inventory.get(name)
        }
        fn tag(&self, key: &str) -> Option<&str> {
            self.tags.get(key).map(String::as_str)
        }
        fn reported(&self, path: &[String]) -> Option<&serde_json::Value> {
            json_at(&self.reported, path)
        }
        fn in_group(&self, name: &str) -> bool {
            self.groups.iter().any(|g| g == name)
        }
    }

    const NOW: Timestamp = Timestamp::from_unix_millis(1_800_000_000_000);
    const HOUR: i64 = 3_600_000;

    fn device() -> Dev {
        Dev {
            name: "kiosk-007".into(),
            device_type: Some("rpi4-kiosk".into()),
            state: DeviceState::Accepted,
            online: true,
            last_seen: Some(NOW.plus_millis(-2 * HOUR)),
            created_at: Timestamp::parse_rfc3339("2026-01-01T00:00:00Z").unwrap(),
            inventory: parse_inventory(
                br#"{"os.id": "debian", "os.version": "12", "cpu.count": 4, "load": 0.5,
                    "ota.enabled": true, "flag": "true", "net.eth0.ipv4": ["10.0.0.2", "192.0.2.7"],
                    "empty": [], "mixed-case:X": "Yes", "version": "10"}"#,
            )
            .unwrap(),
            tags: [("site", "lyon"), ("floor", "3"), ("lit", "true")]
                .map(|(k, v)| (k.to_owned(), v.to_owned()))
                .into(),
            reported: serde_json::json!({
                "firmware": {"channel": "beta", "build": 42, "signed": true},
                "ports": [80, 443, "ssh", null, {"x": 1}],
                "nothing": null,
                "wi-fi ssid": {"name": "lobby"},
                "empty": []
            }),
            groups: vec!["kiosks".into(), "lyon".into()],
        }
    }

    fn check_table(dev: &Dev, table: &[(&str, bool)]) {
        for (text, want) in table {
            let query = match parse(text) {
                Ok(q) => q,
                Err(e) => panic!("{text}: {e}"),
            };
            assert_eq!(query.matches(dev, NOW), *want, "{text}");
        }
    }

    #[test]
    fn builtins() {
        let dev = device();
        check_table(
            &dev,
            &[
                (r#"name = "kiosk-007""#, true),
                (r#"name != "kiosk-007""#, false),
                (r#"name != "other""#, true),
                (r#"name < "kiosk-1""#, true),
                (r#"name >= "kiosk-1""#, false),
                (r#"name ~ "kiosk-*""#, true),
                (r#"name ~ "kiosk-??7""#, true),
                (r#"name ~ "kiosk""#, false),
                (r#"name ~ "KIOSK-*""#, false),
                (r#"id = "0190a8a6-6f5e-7000-8000-000000000001""#, true),
                (r#"device_type in ("a", "rpi4-kiosk")"#, true),
                (r#"device_type not in ("a", "rpi4-kiosk")"#, false),
                ("exists device_type", true),
                (r#"state = "accepted""#, true),
                (r#"state != "accepted""#, false),
                (r#"state in ("pending", "rejected")"#, false),
                (r#"state not in ("pending", "rejected")"#, true),
                ("online = true", true),
                ("online != true", false),
                ("online in (false)", false),
                ("last_seen > now - 3h", true),
                ("last_seen > now - 2h", false),
                ("last_seen >= now - 2h", true),
                ("last_seen = now - 120m", true),
                ("last_seen < now", true),
                ("last_seen < \"2000-01-01T00:00:00Z\"", false),
                ("created_at = \"2026-01-01T01:00:00+01:00\"", true),
                ("created_at < now + 1w", true),
                ("exists last_seen", true),
            ],
        );
        let mut new = device();
        new.device_type = None;
        new.last_seen = None;
        check_table(
            &new,
            &[
                (r#"device_type = "x""#, false),
                (r#"device_type != "x""#, false),
                (r#"not device_type = "x""#, true),
                (r#"device_type not in ("x")"#, false),
                (r#"device_type ~ "*""#, false),
                ("exists device_type", false),
                ("not exists device_type", true),
                ("last_seen < now", false),
                ("last_seen >= now", false),
                ("not last_seen > now - 1d", true),
            ],
        );
    }

    #[test]
    fn inventory_values_lists_and_absence() {
        let dev = device();
        check_table(
            &dev,
            &[
                // Text.
                (r#"inventory.os.id = "debian""#, true),
                (r#"inventory.os.id != "debian""#, false),
                (r#"inventory.os.id != "ubuntu""#, true),
                (r#"inventory.os.id ~ "deb*""#, true),
                (r#"inventory.os.id > "a""#, true),
                // Numbers compare numerically; text compares with their text.
                ("inventory.cpu.count = 4", true),
                ("inventory.cpu.count = 4.0", true),
                ("inventory.cpu.count > 3.5", true),
                ("inventory.cpu.count < 10", true),
                (r#"inventory.cpu.count = "4""#, true),
                (r#"inventory.cpu.count < "10""#, false),
                (r#"inventory.cpu.count ~ "4*""#, true),
                ("inventory.load = 0.5", true),
                (r#"inventory.load = "0.5""#, true),
                // Text that reads as a number has that number.
                ("inventory.os.version = 12", true),
                ("inventory.os.version != 12", false),
                (r#"inventory.os.version = "12""#, true),
                ("inventory.os.version > 9", true),
                ("inventory.version > 9", true),
                (r#"inventory.version < "9""#, true),
                ("inventory.os.id = 0", false),
                ("inventory.os.id != 0", true),
                ("inventory.net.eth0.ipv4 > 0", false),
                ("inventory.ota.enabled > 0", false),
                // Booleans equal their text.
                ("inventory.ota.enabled = true", true),
                ("inventory.ota.enabled = false", false),
                ("inventory.ota.enabled != false", true),
                (r#"inventory.ota.enabled = "true""#, true),
                ("inventory.flag = true", true),
                ("inventory.ota.enabled = 1", false),
                // Lists: some item.
                (r#"inventory.net.eth0.ipv4 = "192.0.2.7""#, true),
                (r#"inventory.net.eth0.ipv4 = "10.0.0.2""#, true),
                (r#"inventory.net.eth0.ipv4 != "10.0.0.2""#, false),
                (r#"inventory.net.eth0.ipv4 != "10.9.9.9""#, true),
                (r#"inventory.net.eth0.ipv4 ~ "192.0.2.*""#, true),
                (
                    r#"inventory.net.eth0.ipv4 in ("1.1.1.1", "10.0.0.2")"#,
                    true,
                ),
                (
                    r#"inventory.net.eth0.ipv4 not in ("1.1.1.1", "10.0.0.2")"#,
                    false,
                ),
                (r#"inventory.net.eth0.ipv4 not in ("1.1.1.1")"#, true),
                (r#"inventory.net.eth0.ipv4 > "150""#, true),
                (r#"inventory.net.eth0.ipv4 < "150""#, true),
                (r#"inventory.net.eth0.ipv4 < "1""#, false),
                ("exists inventory.net.eth0.ipv4", true),
                // Mixed in lists.
                (r#"inventory.cpu.count in ("x", 4)"#, true),
                (r#"inventory.cpu.count in ("x", 5)"#, false),
                // Case matters in names and values.
                (r#"inventory.mixed-case:X = "Yes""#, true),
                (r#"inventory.mixed-case:x = "Yes""#, false),
                (r#"inventory.mixed-case:X = "yes""#, false),
                // An empty list is absent.
                ("exists inventory.empty", false),
                (r#"inventory.empty != "x""#, false),
                // Absent: every comparison false; not and exists are plain.
                ("inventory.gone = 1", false),
                ("inventory.gone != 1", false),
                (r#"inventory.gone < "z""#, false),
                (r#"inventory.gone ~ "*""#, false),
                ("inventory.gone in (1)", false),
                ("inventory.gone not in (1)", false),
                ("not inventory.gone = 1", true),
                ("exists inventory.gone", false),
                ("not exists inventory.gone", true),
            ],
        );
    }

    #[test]
    fn tags_groups_and_reported() {
        let dev = device();
        check_table(
            &dev,
            &[
                (r#"tag.site = "lyon""#, true),
                ("tag.floor > 2", true),
                ("tag.floor = 3", true),
                (r#"tag.floor = "3""#, true),
                (r#"tag.floor = "3.0""#, false),
                ("tag.floor in (1, 3)", true),
                ("tag.site > 2", false),
                ("tag.lit = true", true),
                (r#"tag.site != "lyon""#, false),
                (r#"tag.site ~ "l*n""#, true),
                (r#"tag.site in ("paris", "lyon")"#, true),
                (r#"tag.Site = "lyon""#, false),
                (r#"tag.env != "prod""#, false),
                ("exists tag.site", true),
                ("exists tag.env", false),
                // Groups: membership, never absent.
                (r#"group = "kiosks""#, true),
                (r#"group = "canary""#, false),
                (r#"group != "kiosks""#, false),
                (r#"group != "canary""#, true),
                (r#"group in ("canary", "lyon")"#, true),
                (r#"group not in ("canary", "lyon")"#, false),
                (r#"group not in ("canary", "paris")"#, true),
                // Reported: typed as JSON.
                (r#"reported.firmware.channel = "beta""#, true),
                (r#"reported.firmware.channel != "beta""#, false),
                (r#"reported.firmware.channel ~ "b*""#, true),
                ("reported.firmware.build = 42", true),
                ("reported.firmware.build >= 40.5", true),
                (r#"reported.firmware.build = "42""#, false),
                (r#"reported.firmware.build != "42""#, true),
                ("reported.firmware.signed = true", true),
                (r#"reported.firmware.signed = "true""#, false),
                ("exists reported.firmware", true),
                (r#"reported.firmware = "x""#, false),
                (r#"reported.firmware != "x""#, true),
                (r#"reported."wi-fi ssid".name = "lobby""#, true),
                // Arrays: some element; non-scalar elements are skipped.
                ("reported.ports = 443", true),
                (r#"reported.ports = "ssh""#, true),
                ("reported.ports > 400", true),
                ("reported.ports != 443", false),
                ("reported.ports not in (22, 25)", true),
                ("exists reported.empty", true),
                ("reported.empty != 1", true),
                ("reported.empty = 1", false),
                // null and missing are absent.
                ("exists reported.nothing", false),
                ("reported.nothing != 1", false),
                ("exists reported.firmware.channel.deeper", false),
                ("exists reported.missing", false),
                ("not reported.missing = 1", true),
            ],
        );
    }

    #[test]
    fn boolean_combinations() {
        let dev = device();
        check_table(
            &dev,
            &[
                (r#"online = true and tag.site = "lyon""#, true),
                (r#"online = true and tag.site = "paris""#, false),
                (r#"online = false or tag.site = "lyon""#, true),
                (r#"online = false or tag.site = "paris""#, false),
                (r#"not online = false and not tag.site = "paris""#, true),
                (
                    r#"online = false or tag.site = "paris" or group = "kiosks""#,
                    true,
                ),
                (
                    r#"online = false and tag.site = "paris" or group = "kiosks""#,
                    true,
                ),
                (
                    r#"online = false and (tag.site = "paris" or group = "kiosks")"#,
                    false,
                ),
                (r#"not (online = false or tag.site = "paris")"#, true),
            ],
        );
    }

    #[test]
    fn relative_times_follow_now() {
        let dev = device();
        let query = parse("last_seen > now - 3h").unwrap();
        assert!(query.uses_now());
        assert!(query.matches(&dev, NOW));
        assert!(query.matches(&dev, NOW.plus_millis(HOUR - 1)));
        assert!(!query.matches(&dev, NOW.plus_millis(HOUR)));
        assert!(
            !parse("last_seen > \"2026-01-01T00:00:00Z\"")
                .unwrap()
                .uses_now()
        );
        // Far ends saturate instead of overflowing.
        let far = parse("created_at > now - 9223372036854775807ms").unwrap();
        assert!(far.matches(&dev, Timestamp::from_unix_millis(i64::MIN + 5)));
        let past = parse("created_at > now - 9223372036854775808ms").unwrap();
        assert_eq!(past.to_string(), "created_at > now - 9223372036854775808ms");
        assert!(past.matches(&dev, NOW));
    }

    #[test]
    fn text_that_reads_as_a_number() {
        for (text, want) in [
            ("12", Some(12.0)),
            ("-0.5", Some(-0.5)),
            ("+3", Some(3.0)),
            ("007", Some(7.0)),
            ("1000000000000000000000", Some(1e21)),
            ("12.1.3", None),
            ("1e3", None),
            (".5", None),
            ("5.", None),
            (" 4", None),
            ("4 ", None),
            ("0x10", None),
            ("-", None),
            ("", None),
            ("inf", None),
            ("NaN", None),
            ("+-1", None),
        ] {
            assert_eq!(number_of_text(text), want, "{text:?}");
        }
        assert!(number_of_text(&"9".repeat(400)).is_none());
        for n in [0.0, -2.0, 0.1, 1e21, 123.456, f64::MAX, f64::MIN_POSITIVE] {
            assert_eq!(number_of_text(&canonical_number_text(n)), Some(n));
        }
    }

    #[test]
    fn groups_lists_named_groups_once() {
        let query =
            parse(r#"group = "a" or (group not in ("b", "a") and not group != "c") or name = "d""#)
                .unwrap();
        assert_eq!(query.groups(), vec!["a", "b", "c"]);
        assert!(parse(r#"name = "a""#).unwrap().groups().is_empty());
    }

    #[test]
    fn globs() {
        let m = |p: &str, t: &str| GlobPattern::parse(p).unwrap().matches(t);
        assert!(m("", ""));
        assert!(!m("", "a"));
        assert!(m("*", ""));
        assert!(m("*", "anything"));
        assert!(m("a*b*c", "aXXbYYc"));
        assert!(m("a*b*c", "abc"));
        assert!(!m("a*b*c", "abcd"));
        assert!(m("*c", "abcabc"));
        assert!(m("?", "é"));
        assert!(!m("?", ""));
        assert!(!m("?", "ab"));
        assert!(m("??", "日本"));
        assert!(m("a\\*", "a*"));
        assert!(!m("a\\*", "ab"));
        assert!(m("\\?\\\\", "?\\"));
        assert!(m("*aab", "aaaab"));
        assert!(m("**a**", "bab"));
        // Adversarial: still fast.
        let text = "a".repeat(4000);
        assert!(!m(&format!("{}b", "*a".repeat(100)), &text));

        let p = GlobPattern::parse("rpi_*-100%\\*?[x]").unwrap();
        assert_eq!(
            p.parts(),
            &[
                GlobPart::Literal("rpi_".into()),
                GlobPart::AnyString,
                GlobPart::Literal("-100%*".into()),
                GlobPart::AnyChar,
                GlobPart::Literal("[x]".into()),
            ]
        );
        assert_eq!(p.to_like(), "rpi\\_%-100\\%*_[x]");
        assert_eq!(p.to_sqlite_glob(), "rpi_*-100%[*]?[[]x]");
        assert_eq!(p.as_str(), "rpi_*-100%\\*?[x]");
        assert!(GlobPattern::parse("a\\b").is_err());
        assert!(GlobPattern::parse("a\\").is_err());
    }

    #[test]
    fn serde_uses_the_canonical_text() {
        let query = parse("ONLINE=true").unwrap();
        let json = serde_json::to_string(&query).unwrap();
        assert_eq!(json, "\"online = true\"");
        assert_eq!(serde_json::from_str::<Query>(&json).unwrap(), query);
        let bad = serde_json::from_str::<Query>("\"online = 3\"").unwrap_err();
        assert!(bad.to_string().contains("at 9: online is true or false"));
        assert_eq!("online = true".parse::<Query>().unwrap(), query);
    }

    #[test]
    fn json_at_walks_object_keys() {
        let v = serde_json::json!({"a": {"b": [1]}, "c": 2});
        assert_eq!(json_at(&v, &[]), Some(&v));
        assert_eq!(json_at(&v, &["c".into()]), Some(&serde_json::json!(2)));
        assert_eq!(
            json_at(&v, &["a".into(), "b".into()]),
            Some(&serde_json::json!([1]))
        );
        assert_eq!(json_at(&v, &["a".into(), "b".into(), "0".into()]), None);
        assert_eq!(json_at(&v, &["c".into(), "d".into()]), None);
    }

    // -- properties ----------------------------------------------------------------------------

    /// xorshift64*: enough randomness for generators, and reproducible.
    struct Rng(u64);

    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 >> 12;
            self.0 ^= self.0 << 25;
            self.0 ^= self.0 >> 27;
            self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
        }
        fn below(&mut self, n: usize) -> usize {
            (self.next() % n as u64) as usize
        }
        fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
            &items[self.below(items.len())]
        }
    }

    const NAME_CHARS: &[u8] = b"abcXYZ019_.:-";
    const TEXT_CHARS: &[char] = &[
        'a', 'b', 'Z', '0', ' ', '"', '\\', '*', '?', '-', '.', 'é', '日', '\n', '\t', '(', ')',
        ',', '=', '~',
    ];

    fn gen_name(rng: &mut Rng) -> String {
        let mut s = String::new();
        s.push(*rng.pick(&['a', 'Q', '7']));
        for _ in 0..rng.below(10) {
            s.push(*rng.pick(NAME_CHARS) as char);
        }
        s
    }

    fn gen_text(rng: &mut Rng, min: usize) -> String {
        (0..min + rng.below(8))
            .map(|_| *rng.pick(TEXT_CHARS))
            .collect()
    }

    fn gen_field(rng: &mut Rng) -> Field {
        match rng.below(11) {
            n @ 0..=6 => Field::Builtin(Builtin::ALL[n]),
            7 => Field::Group,
            8 => Field::Inventory(gen_name(rng)),
            9 => Field::Tag(gen_name(rng)),
            _ => Field::Reported(
                (0..1 + rng.below(3))
                    .map(|_| {
                        if rng.below(2) == 0 {
                            gen_name(rng).replace('.', "")
                        } else {
                            gen_text(rng, 1)
                        }
                    })
                    .collect(),
            ),
        }
    }

    fn gen_number(rng: &mut Rng) -> f64 {
        match rng.below(6) {
            0 => rng.below(2000) as f64 - 1000.0,
            1 => (rng.below(200_000) as f64 - 100_000.0) / 1000.0,
            2 => *rng.pick(&[0.0, -0.0, f64::MAX, f64::MIN, f64::MIN_POSITIVE, 1e21, 0.1]),
            _ => loop {
                let x = f64::from_bits(rng.next());
                if x.is_finite() && x.abs() < 1e30 && x.abs() > 1e-30 {
                    break x;
                }
            },
        }
    }

    fn gen_value(rng: &mut Rng, field: &Field, ordering: bool) -> Value {
        match kind(field) {
            Kind::Text | Kind::Group => Value::Text(gen_text(rng, 0)),
            Kind::State => Value::Text(rng.pick(&DeviceState::ALL).as_str().to_owned()),
            Kind::Bool => Value::Bool(rng.below(2) == 0),
            Kind::Time => Value::Time(match rng.below(4) {
                0 => TimeValue::Absolute(Timestamp::from_unix_millis(
                    MIN_TIME + (rng.next() % (MAX_TIME - MIN_TIME + 1) as u64) as i64,
                )),
                1 => TimeValue::RelativeToNow {
                    millis: *rng.pick(&[i64::MIN, i64::MAX, 0, -1]),
                },
                _ => {
                    let (_, size) = *rng.pick(&UNITS);
                    let count = rng.below(1000) as i64 - 500;
                    TimeValue::RelativeToNow {
                        millis: count * size,
                    }
                }
            }),
            Kind::Mixed | Kind::Json => match rng.below(if ordering { 2 } else { 3 }) {
                0 => Value::Text(gen_text(rng, 0)),
                1 => Value::Number(gen_number(rng)),
                _ => Value::Bool(rng.below(2) == 0),
            },
        }
    }

    fn gen_pattern(rng: &mut Rng) -> GlobPattern {
        let mut source = String::new();
        for _ in 0..rng.below(6) {
            match rng.below(5) {
                0 => source.push('*'),
                1 => source.push('?'),
                2 => {
                    let escape: &&str = rng.pick(&["\\*", "\\?", "\\\\"]);
                    source.push_str(escape);
                }
                _ => source.push_str(&gen_text(rng, 1).replace(['\\', '*', '?'], "x")),
            }
        }
        GlobPattern::parse(&source).unwrap()
    }

    fn gen_leaf(rng: &mut Rng) -> Expr {
        use CmpOp::*;
        loop {
            let field = gen_field(rng);
            let leaf = match rng.below(5) {
                0 | 1 => {
                    let op = *rng.pick(&[Eq, Ne, Lt, Le, Gt, Ge]);
                    if check_use(&field, Use::Cmp(op)).is_err() {
                        continue;
                    }
                    let value = gen_value(rng, &field, op.is_ordering());
                    Expr::Compare { field, op, value }
                }
                2 => {
                    if check_use(&field, Use::In).is_err() {
                        continue;
                    }
                    let values = (0..1 + rng.below(4))
                        .map(|_| gen_value(rng, &field, false))
                        .collect();
                    Expr::In {
                        field,
                        values,
                        negated: rng.below(2) == 0,
                    }
                }
                3 => {
                    if check_use(&field, Use::Exists).is_err() {
                        continue;
                    }
                    Expr::Exists { field }
                }
                _ => {
                    if check_use(&field, Use::Glob).is_err() {
                        continue;
                    }
                    let pattern = gen_pattern(rng);
                    Expr::Glob { field, pattern }
                }
            };
            return leaf;
        }
    }

    fn gen_expr(rng: &mut Rng, depth: usize) -> Expr {
        if depth == 0 || rng.below(3) == 0 {
            return gen_leaf(rng);
        }
        let children = |rng: &mut Rng| {
            (0..2 + rng.below(3))
                .map(|_| gen_expr(rng, depth - 1))
                .collect::<Vec<_>>()
        };
        match rng.below(5) {
            0 | 1 => Expr::And(children(rng)),
            2 | 3 => Expr::Or(children(rng)),
            _ => Expr::Not(Box::new(gen_expr(rng, depth - 1))),
        }
    }

    fn leaves(e: &Expr) -> usize {
        let mut n = 0;
        e.walk(&mut |e| {
            n += usize::from(!matches!(e, Expr::And(_) | Expr::Or(_) | Expr::Not(_)));
        });
        n
    }

    #[test]
    fn display_round_trips() {
        let mut rng = Rng(0x9E37_79B9_7F4A_7C15);
        let mut checked = 0;
        while checked < 1000 {
            let expr = gen_expr(&mut rng, 4);
            let query = Query { expr };
            let text = query.to_string();
            if text.len() > MAX_QUERY_LEN || leaves(query.expr()) > MAX_COMPARISONS {
                continue;
            }
            match parse(&text) {
                Ok(back) => {
                    assert_eq!(back, query, "{text}");
                    assert_eq!(back.to_string(), text);
                }
                Err(e) => panic!("{text}\n{}", e.render(&text)),
            }
            checked += 1;
        }
    }

    fn mutate(rng: &mut Rng, text: &str) -> String {
        let mut bytes = text.as_bytes().to_vec();
        for _ in 0..1 + rng.below(4) {
            let at = if bytes.is_empty() {
                0
            } else {
                rng.below(bytes.len() + 1)
            };
            let vocab: &[&[u8]] = &[
                b"(",
                b")",
                b"\"",
                b"\\",
                b" and ",
                b" or ",
                b"not ",
                b" in ",
                b",",
                b"=",
                b"!",
                b"<",
                b"~",
                b"-",
                b".",
                b"now",
                b"1h",
                b"exists ",
                b"inventory.",
                b"9",
                b"\xc3",
                b"\xa9",
                b"\xff",
            ];
            match rng.below(3) {
                0 if at < bytes.len() => {
                    let end = (at + 1 + rng.below(6)).min(bytes.len());
                    bytes.drain(at..end);
                }
                1 if at < bytes.len() => bytes[at] = rng.next() as u8,
                _ => {
                    let piece = rng.pick(vocab);
                    bytes.splice(at..at, piece.iter().copied());
                }
            }
        }
        String::from_utf8_lossy(&bytes).into_owned()
    }

    fn check_total(dev: &Dev, text: &str) {
        match parse(text) {
            Ok(query) => {
                let _ = query.matches(dev, NOW);
                let _ = query.matches(dev, Timestamp::from_unix_millis(i64::MIN));
                let canonical = query.to_string();
                let back =
                    parse(&canonical).unwrap_or_else(|e| panic!("{text:?} -> {canonical:?}: {e}"));
                assert_eq!(back, query, "{text:?}");
            }
            Err(e) => {
                assert!(e.position <= text.len(), "{text:?}: {e}");
                assert!(text.is_char_boundary(e.position), "{text:?}: {e}");
                assert!(!e.message.contains('\n'), "{text:?}: {e}");
                assert_eq!(e.render(text).lines().count(), 2, "{text:?}");
            }
        }
    }

    #[test]
    fn never_panics_on_arbitrary_input() {
        let dev = device();
        let mut rng = Rng(0xD1B5_4A32_D192_ED03);
        let alphabet = b"abnotriedxsgupw_.:-\"\\()=!<>~,+ 019hmsdw*?\t\n&|$\xc3\xa9";
        for _ in 0..5000 {
            let len = rng.below(40);
            let bytes: Vec<u8> = (0..len)
                .map(|_| {
                    if rng.below(10) == 0 {
                        rng.next() as u8
                    } else {
                        *rng.pick(alphabet)
                    }
                })
                .collect();
            check_total(&dev, &String::from_utf8_lossy(&bytes));
        }
        let mut ok = 0;
        for _ in 0..5000 {
            let query = Query {
                expr: gen_expr(&mut rng, 3),
            };
            let text = mutate(&mut rng, &query.to_string());
            ok += usize::from(parse(&text).is_ok());
            check_total(&dev, &text);
        }
        // The mutations reach past the first error often enough to matter.
        assert!(ok > 200, "{ok}");
    }
}
