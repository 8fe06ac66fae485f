//! Layered configuration: fleet-wide defaults, then group values, then the device's own
//! desired values, rendered into the one document a device is sent, with where each value
//! came from.
//!
//! Precedence (later wins), deterministic for a device in several groups:
//! 1. the **fleet** layer;
//! 2. **group** layers of the groups the device is in (static, nested, or dynamic), ordered by
//!    `priority` (lower first, so a higher priority wins), then by depth in the group tree
//!    (a parent before its child, so the more specific group wins), then by name in reverse
//!    (so among equals the group whose name sorts first wins);
//! 3. the **device** layer: the twin's `desired` document.
//!
//! Layers merge like JSON merge patches (RFC 7396): objects merge key by key, a value
//! replaces, and `null` removes what a lower layer set (a group can take a fleet default away).
//! Each leaf of the result carries the layer it came from, by JSON Pointer.

use std::collections::BTreeMap;

use serde::Serialize;
use serde_json::{Map, Value};

use crate::GroupId;
use crate::twin::{Document, escape_pointer};

/// Where a layer's values come from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "layer", rename_all = "snake_case")]
pub enum LayerSource {
    Fleet,
    Group { group_id: GroupId, group: String },
    Device,
}

/// One layer of configuration.
#[derive(Debug, Clone, PartialEq)]
pub struct Layer {
    pub source: LayerSource,
    /// Groups only: higher wins.
    pub priority: i32,
    /// Groups only: how deep the group is in the tree (a top-level group is 0).
    pub depth: usize,
    pub values: Document,
}

impl Layer {
    pub fn fleet(values: Document) -> Self {
        Layer {
            source: LayerSource::Fleet,
            priority: 0,
            depth: 0,
            values,
        }
    }

    pub fn device(values: Document) -> Self {
        Layer {
            source: LayerSource::Device,
            priority: 0,
            depth: 0,
            values,
        }
    }
}

/// A fleet or group layer as stored.
#[derive(Debug, Clone, PartialEq)]
pub struct StoredLayer {
    /// `None` for the fleet layer.
    pub group_id: Option<GroupId>,
    pub priority: i32,
    pub document: Document,
    /// Starts at 1 when the layer is created and grows with every change.
    pub version: u64,
    pub updated_at: crate::Timestamp,
}

/// The effective configuration of a device.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Rendered {
    pub document: Document,
    /// The layer each leaf came from, by JSON Pointer (`/ntp/servers`).
    pub sources: BTreeMap<String, LayerSource>,
}

fn rank(layer: &Layer) -> (u8, i32, usize, std::cmp::Reverse<&str>) {
    match &layer.source {
        LayerSource::Fleet => (0, 0, 0, std::cmp::Reverse("")),
        LayerSource::Group { group, .. } => (
            1,
            layer.priority,
            layer.depth,
            std::cmp::Reverse(group.as_str()),
        ),
        LayerSource::Device => (2, 0, 0, std::cmp::Reverse("")),
    }
}

/// Renders the layers (in any order) into the effective document.
pub fn render(layers: &[Layer]) -> Rendered {
    let mut ordered: Vec<&Layer> = layers.iter().collect();
    ordered.sort_by(|a, b| rank(a).cmp(&rank(b)));
    let mut out = Rendered::default();
    for layer in ordered {
        apply(
            &mut out.document,
            &layer.values,
            "",
            &layer.source,
            &mut out.sources,
        );
    }
    out
}

fn forget_under(sources: &mut BTreeMap<String, LayerSource>, path: &str) {
    let prefix = format!("{path}/");
    sources.retain(|k, _| k != path && !k.starts_with(&prefix));
}

fn apply(
    doc: &mut Document,
    values: &Document,
    path: &str,
    source: &LayerSource,
    sources: &mut BTreeMap<String, LayerSource>,
) {
    for (key, value) in values {
        let here = format!("{path}/{}", escape_pointer(key));
        match value {
            Value::Null => {
                doc.remove(key);
                forget_under(sources, &here);
            }
            Value::Object(inner) => {
                let entry = doc
                    .entry(key.clone())
                    .or_insert_with(|| Value::Object(Map::new()));
                if !entry.is_object() {
                    *entry = Value::Object(Map::new());
                    forget_under(sources, &here);
                }
                if let Value::Object(target) = entry {
                    // An object's own entry stands for it only while it is empty.
                    sources.remove(&here);
                    apply(target, inner, &here, source, sources);
                    if target.is_empty() {
                        sources.insert(here, source.clone());
                    }
                }
            }
            other => {
                doc.insert(key.clone(), other.clone());
                forget_under(sources, &here);
                sources.insert(here, source.clone());
            }
        }
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

    fn group(name: &str, priority: i32, depth: usize, values: Value) -> Layer {
        Layer {
            source: LayerSource::Group {
                group_id: GroupId::from_uuid(uuid::Uuid::from_u128(name.len() as u128)),
                group: name.into(),
            },
            priority,
            depth,
            values: doc(values),
        }
    }

    fn source_name(s: &LayerSource) -> String {
        match s {
            LayerSource::Fleet => "fleet".into(),
            LayerSource::Group { group, .. } => group.clone(),
            LayerSource::Device => "device".into(),
        }
    }

    #[test]
    fn later_layers_win_and_every_leaf_says_where_it_came_from() {
        let layers = vec![
            Layer::device(doc(json!({"log": {"level": "debug"}}))),
            group(
                "berlin",
                0,
                1,
                json!({"ntp": {"server": "ntp.berlin"}, "tz": "Europe/Berlin"}),
            ),
            Layer::fleet(doc(json!({
                "log": {"level": "info", "keep_days": 7},
                "ntp": {"server": "pool.ntp.org"},
                "tz": "UTC"
            }))),
        ];
        let r = render(&layers);
        assert_eq!(
            Value::Object(r.document.clone()),
            json!({
                "log": {"level": "debug", "keep_days": 7},
                "ntp": {"server": "ntp.berlin"},
                "tz": "Europe/Berlin"
            })
        );
        let sources: Vec<(String, String)> = r
            .sources
            .iter()
            .map(|(k, v)| (k.clone(), source_name(v)))
            .collect();
        assert_eq!(
            sources,
            [
                ("/log/keep_days", "fleet"),
                ("/log/level", "device"),
                ("/ntp/server", "berlin"),
                ("/tz", "berlin"),
            ]
            .map(|(a, b)| (a.to_owned(), b.to_owned()))
        );
    }

    #[test]
    fn group_precedence_is_priority_then_depth_then_name() {
        let render_tz = |layers: Vec<Layer>| {
            let r = render(&layers);
            (
                r.document.get("tz").cloned(),
                r.sources.get("/tz").map(source_name),
            )
        };
        // Higher priority wins whatever the order given.
        let a = group("a", 5, 0, json!({"tz": "A"}));
        let b = group("b", 1, 3, json!({"tz": "B"}));
        assert_eq!(render_tz(vec![a.clone(), b.clone()]).0, Some(json!("A")));
        assert_eq!(render_tz(vec![b, a]).0, Some(json!("A")));
        // Same priority: the deeper (more specific) group wins.
        let parent = group("zz-parent", 0, 0, json!({"tz": "P"}));
        let child = group("aa-child", 0, 1, json!({"tz": "C"}));
        assert_eq!(
            render_tz(vec![child.clone(), parent.clone()]).0,
            Some(json!("C"))
        );
        // Same priority and depth: the name that sorts first wins.
        let x = group("alpha", 0, 0, json!({"tz": "alpha"}));
        let y = group("beta", 0, 0, json!({"tz": "beta"}));
        assert_eq!(
            render_tz(vec![x.clone(), y.clone()]),
            (Some(json!("alpha")), Some("alpha".into()))
        );
        assert_eq!(render_tz(vec![y, x]).0, Some(json!("alpha")));
    }

    #[test]
    fn null_removes_a_lower_layers_value_and_objects_replace_scalars() {
        let r = render(&[
            Layer::fleet(doc(
                json!({"proxy": {"url": "http://p"}, "debug": true, "x": 1}),
            )),
            group("no-proxy", 0, 0, json!({"proxy": null, "x": {"y": 2}})),
            Layer::device(doc(json!({"debug": null, "empty": {}}))),
        ]);
        assert_eq!(
            Value::Object(r.document),
            json!({"x": {"y": 2}, "empty": {}})
        );
        let keys: Vec<&str> = r.sources.keys().map(String::as_str).collect();
        assert_eq!(keys, ["/empty", "/x/y"]);
    }

    #[test]
    fn no_layers_render_nothing() {
        assert_eq!(render(&[]), Rendered::default());
    }
}
