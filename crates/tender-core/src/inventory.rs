//! Inventory: what a device says it is — hardware, OS, software, network, site — as a set of
//! named attributes.
//!
//! A device reports its whole inventory at once (full replace): attributes it no longer
//! reports disappear. The agent reports at start and whenever the set changes, never on a
//! timer, so the time the stored set last *changed* is meaningful.
//!
//! # The device payload (public device protocol)
//!
//! [`parse_inventory`] accepts a UTF-8 JSON object of attribute names to values:
//!
//! ```json
//! {"os.id": "debian", "os.version": "12", "cpu.count": 4, "ota.enabled": true,
//!  "net.eth0.ipv4": ["192.0.2.10", "192.0.2.11"]}
//! ```
//!
//! Rules, each checked before anything is stored (a payload is taken whole or not at all):
//! - Attribute names are 1 to [`MAX_ATTRIBUTE_NAME_LEN`] characters of ASCII letters, digits
//!   and `_ . - :`, starting with a letter or a digit; case matters. No name twice.
//! - A value is a string of at most [`MAX_TEXT_LEN`] bytes, a number (64-bit float), `true` or
//!   `false`, or an array of at most [`MAX_LIST_LEN`] such strings. `null`, objects and mixed
//!   arrays are refused, naming the attribute.
//! - At most [`MAX_ATTRIBUTES`] attributes, and the payload is at most [`MAX_PAYLOAD_BYTES`].
//!
//! Errors are one line naming the attribute, fit to go back to the device.

use std::collections::BTreeMap;
use std::fmt;

use serde::de::{self, Deserializer, MapAccess, SeqAccess, Visitor};
use serde::{Deserialize, Serialize, Serializer};

/// Most attributes one inventory may carry.
pub const MAX_ATTRIBUTES: usize = 512;
/// Longest attribute name, in bytes (names are ASCII).
pub const MAX_ATTRIBUTE_NAME_LEN: usize = 128;
/// Longest string value, in bytes.
pub const MAX_TEXT_LEN: usize = 4096;
/// Most strings in a list value.
pub const MAX_LIST_LEN: usize = 256;
/// Largest inventory payload, in bytes.
pub const MAX_PAYLOAD_BYTES: usize = 64 * 1024;

/// Why an inventory payload was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct InventoryError(String);

impl InventoryError {
    fn new(msg: impl Into<String>) -> Self {
        let mut msg: String = msg.into();
        if msg.len() > 200 {
            let mut cut = 197;
            while !msg.is_char_boundary(cut) {
                cut -= 1;
            }
            msg.truncate(cut);
            msg.push_str("...");
        }
        InventoryError(msg)
    }
}

/// A valid attribute name.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct AttributeName(String);

impl AttributeName {
    pub fn parse(name: &str) -> Result<Self, InventoryError> {
        let shown = || name.chars().take(40).collect::<String>();
        if name.is_empty() {
            return Err(InventoryError::new("an attribute name is empty"));
        }
        if name.len() > MAX_ATTRIBUTE_NAME_LEN {
            return Err(InventoryError::new(format!(
                "attribute name \"{}...\" is longer than {MAX_ATTRIBUTE_NAME_LEN} characters",
                shown()
            )));
        }
        let first_ok = name
            .bytes()
            .next()
            .is_some_and(|b| b.is_ascii_alphanumeric());
        let all_ok = name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-' | b':'));
        if !first_ok || !all_ok {
            return Err(InventoryError::new(format!(
                "attribute name {:?} must be ASCII letters, digits and _ . - :, starting with a letter or digit",
                shown()
            )));
        }
        Ok(AttributeName(name.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for AttributeName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl Serialize for AttributeName {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.0)
    }
}

impl<'de> Deserialize<'de> for AttributeName {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        AttributeName::parse(&s).map_err(de::Error::custom)
    }
}

/// One attribute's value.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum AttributeValue {
    Bool(bool),
    Number(f64),
    Text(String),
    List(Vec<String>),
}

impl AttributeValue {
    /// The value as one line of text, for tables: lists joined with `, `.
    pub fn display(&self) -> String {
        match self {
            AttributeValue::Bool(b) => b.to_string(),
            AttributeValue::Number(n) => n.to_string(),
            AttributeValue::Text(s) => s.clone(),
            AttributeValue::List(l) => l.join(", "),
        }
    }
}

/// A device's inventory: attributes in name order.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Inventory(pub BTreeMap<AttributeName, AttributeValue>);

impl Inventory {
    pub fn get(&self, name: &str) -> Option<&AttributeValue> {
        self.0
            .iter()
            .find(|(k, _)| k.as_str() == name)
            .map(|(_, v)| v)
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Canonical JSON (names in order): equal inventories give equal bytes.
    pub fn to_json(&self) -> String {
        serde_json::to_string(self).unwrap_or_else(|_| "{}".to_owned())
    }
}

/// Longest operator tag value, in bytes.
pub const MAX_TAG_VALUE_LEN: usize = 256;
/// Most tags on one device.
pub const MAX_TAGS: usize = 64;
/// How much of a text value the attribute index keeps (see [`index_rows`]).
pub const MAX_INDEXED_TEXT: usize = 1024;

/// Checks an operator tag's value: at most [`MAX_TAG_VALUE_LEN`] bytes, no control characters.
/// (Tag keys follow the attribute-name rules: [`AttributeName`].)
pub fn validate_tag_value(value: &str) -> Result<(), InventoryError> {
    if value.len() > MAX_TAG_VALUE_LEN {
        return Err(InventoryError::new(format!(
            "a tag value is at most {MAX_TAG_VALUE_LEN} bytes"
        )));
    }
    if value.chars().any(char::is_control) {
        return Err(InventoryError::new(
            "a tag value may not contain control characters",
        ));
    }
    Ok(())
}

/// One row of the searchable attribute index: (name, position in a list, text, number).
pub type IndexRow<'a> = (&'a str, i64, String, Option<f64>);

/// The number a text reads as, as the query language reads it
/// ([`crate::query::number_of_text`]): `"12"`, `"-0.5"`; not `"1e3"`, `" 4"` or `"12.1.3"`.
pub fn text_number(text: &str) -> Option<f64> {
    crate::query::number_of_text(text)
}

fn clip(text: &str) -> String {
    if text.len() <= MAX_INDEXED_TEXT {
        return text.to_owned();
    }
    let mut cut = MAX_INDEXED_TEXT;
    while !text.is_char_boundary(cut) {
        cut -= 1;
    }
    text[..cut].to_owned()
}

/// The rows the attribute index holds for an inventory: one per value, one per list element.
/// Numbers are written in their shortest form; booleans as `true`/`false`; texts are kept to
/// their first [`MAX_INDEXED_TEXT`] bytes; a text that reads as a number also gets that number.
pub fn index_rows(inventory: &Inventory) -> Vec<IndexRow<'_>> {
    let mut rows = Vec::new();
    for (name, value) in &inventory.0 {
        match value {
            AttributeValue::Bool(b) => rows.push((name.as_str(), 0, b.to_string(), None)),
            AttributeValue::Number(n) => rows.push((name.as_str(), 0, n.to_string(), Some(*n))),
            AttributeValue::Text(t) => rows.push((name.as_str(), 0, clip(t), text_number(t))),
            AttributeValue::List(items) => {
                for (i, t) in items.iter().enumerate() {
                    rows.push((
                        name.as_str(),
                        i64::try_from(i).unwrap_or(i64::MAX),
                        clip(t),
                        text_number(t),
                    ));
                }
            }
        }
    }
    rows
}

/// A device's stored inventory.
#[derive(Debug, Clone, PartialEq)]
pub struct DeviceInventory {
    pub attributes: Inventory,
    /// When the attributes last changed.
    pub updated_at: crate::Timestamp,
    /// When the device last reported them (changed or not).
    pub reported_at: crate::Timestamp,
}

/// Parses and checks a device's inventory payload (see the module documentation).
pub fn parse_inventory(payload: &[u8]) -> Result<Inventory, InventoryError> {
    if payload.len() > MAX_PAYLOAD_BYTES {
        return Err(InventoryError::new(format!(
            "inventory payload is {} bytes; the limit is {MAX_PAYLOAD_BYTES}",
            payload.len()
        )));
    }
    let text = std::str::from_utf8(payload)
        .map_err(|_| InventoryError::new("inventory payload is not UTF-8"))?;
    let mut de = serde_json::Deserializer::from_str(text);
    let raw = de.deserialize_map(RawVisitor).map_err(|e| {
        // serde_json adds " at line L column C"; keep the message, it helps.
        InventoryError::new(format!("inventory: {e}"))
    })?;
    de.end()
        .map_err(|e| InventoryError::new(format!("inventory: {e}")))?;
    Ok(Inventory(raw))
}

struct RawVisitor;

impl<'de> Visitor<'de> for RawVisitor {
    type Value = BTreeMap<AttributeName, AttributeValue>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON object of attribute names to values")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        let mut out = BTreeMap::new();
        while let Some(key) = map.next_key::<String>()? {
            let name = AttributeName::parse(&key).map_err(de::Error::custom)?;
            if out.len() >= MAX_ATTRIBUTES {
                return Err(de::Error::custom(format!(
                    "more than {MAX_ATTRIBUTES} attributes"
                )));
            }
            let value = map.next_value_seed(ValueSeed(&name))?;
            if out.insert(name.clone(), value).is_some() {
                return Err(de::Error::custom(format!("attribute {name} appears twice")));
            }
        }
        Ok(out)
    }
}

struct ValueSeed<'a>(&'a AttributeName);

impl<'de> de::DeserializeSeed<'de> for ValueSeed<'_> {
    type Value = AttributeValue;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<AttributeValue, D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for ValueSeed<'_> {
    type Value = AttributeValue;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "a string, number, boolean or array of strings for attribute {}",
            self.0
        )
    }

    fn visit_bool<E: de::Error>(self, v: bool) -> Result<AttributeValue, E> {
        Ok(AttributeValue::Bool(v))
    }
    fn visit_i64<E: de::Error>(self, v: i64) -> Result<AttributeValue, E> {
        Ok(AttributeValue::Number(v as f64))
    }
    fn visit_u64<E: de::Error>(self, v: u64) -> Result<AttributeValue, E> {
        Ok(AttributeValue::Number(v as f64))
    }
    fn visit_f64<E: de::Error>(self, v: f64) -> Result<AttributeValue, E> {
        if v.is_finite() {
            Ok(AttributeValue::Number(v))
        } else {
            Err(E::custom(format!(
                "attribute {}: number out of range",
                self.0
            )))
        }
    }
    fn visit_str<E: de::Error>(self, v: &str) -> Result<AttributeValue, E> {
        check_text(self.0, v)?;
        Ok(AttributeValue::Text(v.to_owned()))
    }
    fn visit_unit<E: de::Error>(self) -> Result<AttributeValue, E> {
        Err(E::custom(format!(
            "attribute {}: null is not a value (leave the attribute out)",
            self.0
        )))
    }
    fn visit_map<A: MapAccess<'de>>(self, _map: A) -> Result<AttributeValue, A::Error> {
        Err(de::Error::custom(format!(
            "attribute {}: objects are not values (flatten them into dotted names)",
            self.0
        )))
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<AttributeValue, A::Error> {
        let mut list = Vec::new();
        while let Some(item) = seq.next_element::<serde_json::Value>()? {
            let serde_json::Value::String(s) = item else {
                return Err(de::Error::custom(format!(
                    "attribute {}: a list may hold only strings",
                    self.0
                )));
            };
            if list.len() >= MAX_LIST_LEN {
                return Err(de::Error::custom(format!(
                    "attribute {}: more than {MAX_LIST_LEN} items",
                    self.0
                )));
            }
            check_text(self.0, &s)?;
            list.push(s);
        }
        Ok(AttributeValue::List(list))
    }
}

fn check_text<E: de::Error>(name: &AttributeName, v: &str) -> Result<(), E> {
    if v.len() > MAX_TEXT_LEN {
        return Err(E::custom(format!(
            "attribute {name}: text of {} bytes; the limit is {MAX_TEXT_LEN}",
            v.len()
        )));
    }
    Ok(())
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    fn err(payload: &str) -> String {
        parse_inventory(payload.as_bytes()).unwrap_err().to_string()
    }

    #[test]
    fn parses_every_kind_of_value_in_name_order() {
        let inv = parse_inventory(
            br#"{"os.version":"12","cpu.count":4,"ota":true,"net.eth0.ipv4":["192.0.2.1"],"load":0.5}"#,
        )
        .unwrap();
        let names: Vec<&str> = inv.0.keys().map(AttributeName::as_str).collect();
        assert_eq!(
            names,
            ["cpu.count", "load", "net.eth0.ipv4", "os.version", "ota"]
        );
        assert_eq!(inv.get("cpu.count"), Some(&AttributeValue::Number(4.0)));
        assert_eq!(inv.get("ota"), Some(&AttributeValue::Bool(true)));
        assert_eq!(
            inv.get("net.eth0.ipv4"),
            Some(&AttributeValue::List(vec!["192.0.2.1".into()]))
        );
        assert_eq!(inv.get("missing"), None);
    }

    #[test]
    fn canonical_json_round_trips_and_is_order_independent() {
        let a = parse_inventory(br#"{"b":"x","a":[ "1","2"],"c":1.5}"#).unwrap();
        let b = parse_inventory(br#"{"c":1.5,"a":["1","2"],"b":"x"}"#).unwrap();
        assert_eq!(a.to_json(), b.to_json());
        assert_eq!(a.to_json(), r#"{"a":["1","2"],"b":"x","c":1.5}"#);
        assert_eq!(parse_inventory(a.to_json().as_bytes()).unwrap(), a);
        let empty = parse_inventory(b"{}").unwrap();
        assert!(empty.is_empty());
        assert_eq!(empty.to_json(), "{}");
    }

    #[test]
    fn refuses_bad_payloads_naming_the_attribute() {
        assert!(err(r#"{"a": null}"#).contains("attribute a: null"));
        assert!(err(r#"{"a": {"b": 1}}"#).contains("flatten"));
        assert!(err(r#"{"a": [1]}"#).contains("only strings"));
        assert!(err(r#"{"a": 1, "a": 2}"#).contains("appears twice"));
        assert!(err(r#"{"": 1}"#).contains("empty"));
        assert!(err(r#"{"-a": 1}"#).contains("starting with"));
        assert!(err(r#"{"a b": 1}"#).contains("ASCII"));
        assert!(err(r#"[1]"#).contains("JSON object"));
        assert!(err(r#"{"a": 1} x"#).contains("trailing"));
        assert!(err("{").contains("EOF"));
        assert!(parse_inventory(&[0xff, 0xfe]).is_err());
        let long_name = format!(r#"{{"{}": 1}}"#, "a".repeat(129));
        assert!(err(&long_name).contains("longer than 128"));
        let long_text = format!(r#"{{"a": "{}"}}"#, "x".repeat(MAX_TEXT_LEN + 1));
        assert!(err(&long_text).contains("limit is 4096"));
        let many: Vec<String> = (0..=MAX_ATTRIBUTES)
            .map(|i| format!("\"a{i}\":1"))
            .collect();
        assert!(err(&format!("{{{}}}", many.join(","))).contains("more than 512"));
        let list: Vec<String> = (0..=MAX_LIST_LEN).map(|i| format!("\"{i}\"")).collect();
        assert!(err(&format!(r#"{{"l": [{}]}}"#, list.join(","))).contains("more than 256"));
        let huge = vec![b' '; MAX_PAYLOAD_BYTES + 1];
        assert!(
            parse_inventory(&huge)
                .unwrap_err()
                .to_string()
                .contains("bytes")
        );
        assert!(err(r#"{"a": 1e999}"#).len() <= 203);
    }

    #[test]
    fn every_error_message_is_short() {
        let name = format!(r#"{{"{}": 1}}"#, "é".repeat(300));
        assert!(err(&name).chars().count() <= 203);
    }

    #[test]
    fn index_rows_flatten_lists_and_read_numbers() {
        let inv =
            parse_inventory(br#"{"v":"22.04","n":4,"b":true,"l":["a","7"],"t":"x"}"#).unwrap();
        let rows = index_rows(&inv);
        assert_eq!(
            rows,
            vec![
                ("b", 0, "true".to_owned(), None),
                ("l", 0, "a".to_owned(), None),
                ("l", 1, "7".to_owned(), Some(7.0)),
                ("n", 0, "4".to_owned(), Some(4.0)),
                ("t", 0, "x".to_owned(), None),
                ("v", 0, "22.04".to_owned(), Some(22.04)),
            ]
        );
        let long = format!(r#"{{"x":"{}"}}"#, "é".repeat(1000));
        let inv = parse_inventory(long.as_bytes()).unwrap();
        assert!(index_rows(&inv)[0].2.len() <= MAX_INDEXED_TEXT);
        assert_eq!(text_number("inf"), None);
        assert_eq!(text_number("1e3"), None);
        assert_eq!(text_number("-0.5"), Some(-0.5));
        assert!(validate_tag_value("north wing").is_ok());
        assert!(validate_tag_value("a\nb").is_err());
        assert!(validate_tag_value(&"x".repeat(257)).is_err());
    }

    #[test]
    fn display_joins_lists() {
        assert_eq!(
            AttributeValue::List(vec!["a".into(), "b".into()]).display(),
            "a, b"
        );
        assert_eq!(AttributeValue::Number(4.0).display(), "4");
    }
}
