//! Device search and groups through the API, on both backends: the query language over
//! inventory, tags, presence and groups; static groups that nest; dynamic groups that follow
//! inventory changes and survive renames; and the store's answer checked against the core's
//! in-memory evaluation of the same queries.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::{BTreeMap, BTreeSet};

use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use tender_core::device::DeviceState;
use tender_core::inventory::{AttributeValue, Inventory, parse_inventory};
use tender_core::query::{Builtin, DeviceFacts, FactValue};
use tender_core::{DeviceId, Timestamp};

mod common;
use common::*;

on_both_backends!(
    search_and_groups_follow_the_query_language,
    the_store_agrees_with_the_core_on_every_query,
);

/// `path` with `q` added as a query parameter, encoded.
fn with_query(path: &str, q: &str) -> String {
    let mut u = reqwest::Url::parse(&format!("http://x{path}")).unwrap();
    u.query_pairs_mut().append_pair("q", q);
    format!("{}?{}", u.path(), u.query().unwrap())
}

/// Names of the devices a query matches, through the API.
async fn search(s: &TestServer, q: &str) -> Vec<String> {
    let url = with_query("/api/v1/devices?limit=1000", q);
    let (st, page) = admin(s, Method::GET, &url, None).await;
    assert_eq!(st, StatusCode::OK, "{q}: {page}");
    let mut names: Vec<String> = page["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["name"].as_str().unwrap().to_owned())
        .collect();
    names.sort();
    names
}

async fn count(s: &TestServer, q: &str) -> u64 {
    let url = with_query("/api/v1/devices/count", q);
    let (st, c) = admin(s, Method::GET, &url, None).await;
    assert_eq!(st, StatusCode::OK, "{q}: {c}");
    c["count"].as_u64().unwrap()
}

/// Four devices, d0..d3, with inventories and tags.
async fn fleet(s: &TestServer) -> Vec<DeviceId> {
    let tenant = s.default_tenant().await;
    let ids = s.add_devices(tenant.id, 4, DeviceState::Accepted).await;
    let inventories = [
        r#"{"os.id":"debian","os.version":"12","cpu.count":4,"ips":["10.0.0.1","10.0.0.2"],"ota":true}"#,
        r#"{"os.id":"ubuntu","os.version":"22.04","cpu.count":8,"ips":["10.0.1.1"]}"#,
        r#"{"os.id":"debian","os.version":"11","cpu.count":2,"ota":false}"#,
        r#"{"os.id":"poky","os.version":"v5"}"#,
    ];
    for (id, inv) in ids.iter().zip(inventories) {
        s.store()
            .put_inventory(
                tenant.id,
                *id,
                &parse_inventory(inv.as_bytes()).unwrap(),
                now(),
            )
            .await
            .unwrap();
    }
    for (i, site) in [(0, "north"), (1, "south"), (3, "north")] {
        let (st, t) = admin(
            s,
            Method::PUT,
            &format!("/api/v1/devices/{}/tags/site", ids[i]),
            Some(json!({ "value": site })),
        )
        .await;
        assert_eq!(st, StatusCode::OK, "{t}");
    }
    ids
}

async fn create_group(s: &TestServer, body: Value) -> Value {
    let (st, g) = admin(s, Method::POST, "/api/v1/groups", Some(body)).await;
    assert_eq!(st, StatusCode::CREATED, "{g}");
    g
}

async fn search_and_groups_follow_the_query_language(b: Backend) {
    let mut s = start(b).await;
    let ids = fleet(&s).await;
    let tenant = s.default_tenant().await;
    let names = |v: &[&str]| v.iter().map(|n| n.to_string()).collect::<Vec<_>>();

    assert_eq!(
        search(&s, r#"inventory.os.id = "debian""#).await,
        names(&["dev-0", "dev-2"])
    );
    assert_eq!(
        search(&s, r#"inventory.ips = "10.0.0.2""#).await,
        names(&["dev-0"])
    );
    assert_eq!(
        search(&s, "inventory.os.version >= 12").await,
        names(&["dev-0", "dev-1"])
    );
    assert_eq!(
        search(&s, "inventory.cpu.count in (2, 8)").await,
        names(&["dev-1", "dev-2"])
    );
    assert_eq!(search(&s, "inventory.ota = true").await, names(&["dev-0"]));
    assert_eq!(
        search(&s, r#"inventory.os.id != "debian""#).await,
        names(&["dev-1", "dev-3"])
    );
    assert_eq!(search(&s, "not exists tag.site").await, names(&["dev-2"]));
    assert_eq!(
        search(&s, r#"tag.site = "north" and inventory.os.id ~ "deb*""#).await,
        names(&["dev-0"])
    );
    assert_eq!(
        search(&s, r#"name ~ "dev-?" and online = false"#)
            .await
            .len(),
        4
    );
    assert_eq!(search(&s, "last_seen > now - 1h").await, names(&[]));
    assert_eq!(count(&s, r#"inventory.os.id = "debian""#).await, 2);

    // A bad query is a 400 that says where.
    let (st, p) = admin(
        &s,
        Method::GET,
        "/api/v1/devices?q=inventory.os.id%20%3D",
        None,
    )
    .await;
    assert_eq!(st, StatusCode::BAD_REQUEST, "{p}");
    assert_eq!(
        p["type"].as_str().unwrap().rsplit(':').next(),
        Some("invalid-query")
    );
    assert!(p["detail"].as_str().unwrap().starts_with("at "), "{p}");

    // Static groups nest: a member of a subgroup is a member of its parent.
    let plant = create_group(&s, json!({"name": "plant-1"})).await;
    let line = create_group(&s, json!({"name": "line-3", "parent_id": plant["id"]})).await;
    let (st, r) = admin(
        &s,
        Method::POST,
        &format!("/api/v1/groups/{}/members", line["id"].as_str().unwrap()),
        Some(json!({"device_ids": [ids[1].to_string(), ids[3].to_string()]})),
    )
    .await;
    assert_eq!(
        (st, r["changed"].as_u64()),
        (StatusCode::OK, Some(2)),
        "{r}"
    );
    assert_eq!(
        search(&s, r#"group = "plant-1""#).await,
        names(&["dev-1", "dev-3"])
    );
    assert_eq!(
        search(&s, r#"group != "line-3""#).await,
        names(&["dev-0", "dev-2"])
    );

    // A dynamic group: a saved query naming the static group, stored canonically.
    let dynamic = create_group(
        &s,
        json!({"name": "north-debian", "query": r#"TAG.site = "north"   AND (inventory.os.id="debian" OR group="plant-1")"#}),
    )
    .await;
    assert_eq!(
        dynamic["query"],
        r#"tag.site = "north" and (inventory.os.id = "debian" or group = "plant-1")"#
    );
    assert_eq!(
        search(&s, r#"group = "north-debian""#).await,
        names(&["dev-0", "dev-3"])
    );
    assert_eq!(count(&s, r#"group = "north-debian""#).await, 2);

    // It follows inventory changes: dev-2 starts matching once it reports north... via a tag,
    // and dev-0 stops once it is no longer debian.
    let (st, _) = admin(
        &s,
        Method::PUT,
        &format!("/api/v1/devices/{}/tags/site", ids[2]),
        Some(json!({"value": "north"})),
    )
    .await;
    assert_eq!(st, StatusCode::OK);
    s.store()
        .put_inventory(
            tenant.id,
            ids[0],
            &parse_inventory(br#"{"os.id":"alpine"}"#).unwrap(),
            now(),
        )
        .await
        .unwrap();
    assert_eq!(
        search(&s, r#"group = "north-debian""#).await,
        names(&["dev-2", "dev-3"])
    );

    // Renaming the static group keeps the dynamic group working: its query follows.
    let (st, renamed) = admin(
        &s,
        Method::PATCH,
        &format!("/api/v1/groups/{}", plant["id"].as_str().unwrap()),
        Some(json!({"name": "plant one"})),
    )
    .await;
    assert_eq!(st, StatusCode::OK, "{renamed}");
    let (_, d) = admin(
        &s,
        Method::GET,
        &format!("/api/v1/groups/{}", dynamic["id"].as_str().unwrap()),
        None,
    )
    .await;
    assert!(
        d["query"]
            .as_str()
            .unwrap()
            .contains(r#"group = "plant one""#),
        "{d}"
    );
    assert_eq!(
        search(&s, r#"group = "north-debian""#).await,
        names(&["dev-2", "dev-3"])
    );

    // Refusals: cycles, unknown groups, parents for dynamic groups, members of dynamic groups,
    // deleting a parent, moving a group under its own child.
    let other = create_group(
        &s,
        json!({"name": "other", "query": r#"group = "north-debian""#}),
    )
    .await;
    let (st, p) = admin(
        &s,
        Method::PATCH,
        &format!("/api/v1/groups/{}", dynamic["id"].as_str().unwrap()),
        Some(json!({"query": r#"group = "other""#})),
    )
    .await;
    assert_eq!(st, StatusCode::BAD_REQUEST, "{p}");
    assert!(
        p["detail"].as_str().unwrap().contains("refers to itself"),
        "{p}"
    );
    let (st, p) = admin(
        &s,
        Method::POST,
        "/api/v1/groups",
        Some(json!({"name": "x", "query": r#"group = "nope""#})),
    )
    .await;
    assert_eq!(st, StatusCode::BAD_REQUEST, "{p}");
    let (st, _) = admin(
        &s,
        Method::POST,
        "/api/v1/groups",
        Some(json!({"name": "y", "query": "online = true", "parent_id": plant["id"]})),
    )
    .await;
    assert_eq!(st, StatusCode::BAD_REQUEST);
    let (st, _) = admin(
        &s,
        Method::POST,
        &format!("/api/v1/groups/{}/members", other["id"].as_str().unwrap()),
        Some(json!({"device_ids": [ids[0].to_string()]})),
    )
    .await;
    assert_eq!(st, StatusCode::CONFLICT);
    let (st, _) = admin(
        &s,
        Method::DELETE,
        &format!("/api/v1/groups/{}", plant["id"].as_str().unwrap()),
        None,
    )
    .await;
    assert_eq!(st, StatusCode::CONFLICT);
    let (st, p) = admin(
        &s,
        Method::PATCH,
        &format!("/api/v1/groups/{}", plant["id"].as_str().unwrap()),
        Some(json!({"parent_id": line["id"]})),
    )
    .await;
    assert_eq!(st, StatusCode::CONFLICT, "{p}");
    let (st, list) = admin(&s, Method::GET, "/api/v1/groups", None).await;
    assert_eq!(st, StatusCode::OK);
    assert_eq!(list["items"].as_array().unwrap().len(), 4);
    s.stop().await;
}

/// One device's facts, read back through the API, for the core's evaluator.
struct Facts {
    name: String,
    inventory: Inventory,
    tags: BTreeMap<String, String>,
    groups: BTreeSet<String>,
    created_at: Timestamp,
    reported: Value,
}

impl DeviceFacts for Facts {
    fn builtin(&self, field: Builtin) -> Option<FactValue<'_>> {
        match field {
            Builtin::Name => Some(FactValue::Text(self.name.as_str().into())),
            Builtin::DeviceType => Some(FactValue::Text("rpi4".into())),
            Builtin::State => Some(FactValue::State(DeviceState::Accepted)),
            Builtin::Online => Some(FactValue::Bool(false)),
            Builtin::CreatedAt => Some(FactValue::Time(self.created_at)),
            Builtin::LastSeen => None,
            Builtin::Id => None,
        }
    }
    fn inventory(&self, name: &str) -> Option<&AttributeValue> {
        self.inventory.get(name)
    }
    fn tag(&self, key: &str) -> Option<&str> {
        self.tags.get(key).map(String::as_str)
    }
    fn reported(&self, path: &[String]) -> Option<&Value> {
        path.iter().try_fold(&self.reported, |at, key| at.get(key))
    }
    fn in_group(&self, name: &str) -> bool {
        self.groups.contains(name)
    }
}

async fn the_store_agrees_with_the_core_on_every_query(b: Backend) {
    let mut s = start(b).await;
    let ids = fleet(&s).await;
    let tenant = s.default_tenant().await;
    let g = create_group(&s, json!({"name": "lab"})).await;
    let (st, _) = admin(
        &s,
        Method::POST,
        &format!("/api/v1/groups/{}/members", g["id"].as_str().unwrap()),
        Some(json!({"device_ids": [ids[2].to_string()]})),
    )
    .await;
    assert_eq!(st, StatusCode::OK);
    // Reported states of every JSON type, through the same path devices use.
    let reported = [
        json!({"fw": {"channel": "beta", "build": 12}, "ok": true, "tags": ["a", "b"]}),
        json!({"fw": {"channel": "12", "build": "x"}, "ok": "true", "n": null}),
        json!({"fw": "flat", "tags": "b"}),
    ];
    for (id, doc) in ids.iter().zip(&reported) {
        let doc = doc.as_object().unwrap().clone();
        s.store()
            .write_reported(tenant.id, *id, 0, &doc, now())
            .await
            .unwrap()
            .unwrap();
    }
    let mut facts = Vec::new();
    for (i, id) in ids.iter().enumerate() {
        let d = s.store().device(tenant.id, *id).await.unwrap().unwrap();
        let inventory = s
            .store()
            .device_inventory(tenant.id, *id)
            .await
            .unwrap()
            .unwrap()
            .attributes;
        let tags = s
            .store()
            .device_tags(tenant.id, &[*id])
            .await
            .unwrap()
            .remove(id)
            .unwrap_or_default();
        let groups = if *id == ids[2] {
            ["lab".to_owned()].into()
        } else {
            BTreeSet::new()
        };
        facts.push(Facts {
            name: d.name,
            inventory,
            tags,
            groups,
            created_at: d.created_at,
            reported: reported.get(i).cloned().unwrap_or(json!({})),
        });
    }
    let queries = [
        r#"inventory.os.id = "debian""#,
        r#"inventory.os.id != "debian""#,
        r#"inventory.os.id not in ("debian", "poky")"#,
        r#"inventory.os.version > 11"#,
        r#"inventory.os.version < "2""#,
        r#"inventory.os.version = "v5""#,
        r#"inventory.cpu.count >= 4 or not exists inventory.cpu.count"#,
        r#"inventory.cpu.count = "4""#,
        r#"inventory.ips != "10.0.0.1""#,
        r#"inventory.ips ~ "10.0.*.1""#,
        r#"inventory.ota = false"#,
        r#"inventory.ota != true"#,
        r#"not inventory.ota = true"#,
        r#"tag.site = "north" or group = "lab""#,
        r#"tag.site > "north""#,
        r#"tag.site not in ("south")"#,
        r#"group != "lab" and name ~ "dev-*""#,
        r#"name < "dev-2" and device_type = "rpi4""#,
        r#"device_type != "rpi4""#,
        r#"state in ("accepted", "pending") and created_at <= now"#,
        r#"exists last_seen or online = true"#,
        r#"not (inventory.os.id = "debian" and tag.site = "north")"#,
        r#"reported.fw.channel = "beta""#,
        r#"reported.fw.channel != "beta""#,
        r#"reported.fw.build > 10"#,
        r#"reported.fw.build = "x""#,
        r#"reported.fw.channel = 12"#,
        r#"exists reported.fw"#,
        r#"not exists reported.fw"#,
        r#"reported.fw = "flat" or reported.fw ~ "fl*""#,
        r#"reported.ok = true"#,
        r#"reported.ok = "true""#,
        r#"reported.tags = "b""#,
        r#"reported.tags in ("a", "z")"#,
        r#"exists reported.n"#,
    ];
    let now = now();
    for q in queries {
        let parsed = tender_core::query::parse(q).unwrap();
        let mut want: Vec<String> = facts
            .iter()
            .filter(|f| parsed.matches(*f, now))
            .map(|f| f.name.clone())
            .collect();
        want.sort();
        assert_eq!(search(&s, q).await, want, "{q}");
    }
    s.stop().await;
}
