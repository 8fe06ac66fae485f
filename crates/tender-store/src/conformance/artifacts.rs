//! Conformance cases for [`ArtifactCatalog`](crate::ArtifactCatalog).

use std::collections::BTreeMap;

use tender_core::artifact::{Artifact, TrustedKey};
use tender_core::page::PageRequest;
use tender_core::{ArtifactId, TenantId};
use uuid::Uuid;

use super::{T0, limit, new_tenant};
use crate::{Store, StoreError};

fn artifact(tenant: TenantId, name: &str, version: &str) -> Artifact {
    Artifact {
        id: ArtifactId::from_uuid(Uuid::now_v7()),
        tenant_id: tenant,
        name: name.into(),
        version: version.into(),
        payload_type: "rootfs-ab".into(),
        compatible: vec!["gw".into(), "rpi4".into()],
        depends: BTreeMap::from([("rootfs.version".into(), "1".into())]),
        provides: BTreeMap::from([(format!("{name}.version"), version.into())]),
        size: 5_000_000_000,
        sha256: "ab".repeat(32),
        payload_bytes: 4_999_000_000,
        signed_by: vec!["0011223344556677".into()],
        manifest: "{\"format\": \"tender-artifact/1\", \"é\": 1}\n".into(),
        created_at: T0,
        created_by: Some("alice".into()),
    }
}

pub async fn artifacts_round_trip_unique_per_version(store: &dyn Store) {
    let t = new_tenant(store, "art-a").await;
    let other = new_tenant(store, "art-b").await;
    let a1 = artifact(t.id, "app", "1.0");
    store.insert_artifact(&a1).await.unwrap();
    assert_eq!(store.artifact(t.id, a1.id).await.unwrap(), Some(a1.clone()));
    assert_eq!(
        store.artifact_by_version(t.id, "app", "1.0").await.unwrap(),
        Some(a1.clone())
    );
    // The same name and version again is a conflict in the tenant, fine in another.
    let dup = artifact(t.id, "app", "1.0");
    assert!(matches!(
        store.insert_artifact(&dup).await,
        Err(StoreError::Conflict(_))
    ));
    store
        .insert_artifact(&artifact(other.id, "app", "1.0"))
        .await
        .unwrap();
    assert_eq!(store.artifact(other.id, a1.id).await.unwrap(), None);

    let a2 = artifact(t.id, "app", "2.0");
    let b1 = artifact(t.id, "other", "1.0");
    store.insert_artifact(&a2).await.unwrap();
    store.insert_artifact(&b1).await.unwrap();
    // Newest first, paged, optionally one name.
    let first = store
        .list_artifacts(t.id, None, &PageRequest::first(limit(2)))
        .await
        .unwrap();
    assert_eq!(
        first.items.iter().map(|a| a.id).collect::<Vec<_>>(),
        vec![b1.id, a2.id]
    );
    let rest = store
        .list_artifacts(
            t.id,
            None,
            &PageRequest {
                after: first.next,
                limit: limit(2),
            },
        )
        .await
        .unwrap();
    assert_eq!(
        rest.items.iter().map(|a| a.id).collect::<Vec<_>>(),
        vec![a1.id]
    );
    assert!(rest.next.is_none());
    let apps = store
        .list_artifacts(t.id, Some("app"), &PageRequest::first(limit(10)))
        .await
        .unwrap();
    assert_eq!(apps.items.len(), 2);

    // Deleting is tenant-scoped.
    assert!(matches!(
        store.delete_artifact(other.id, a1.id).await,
        Err(StoreError::NotFound(_))
    ));
    store.delete_artifact(t.id, a1.id).await.unwrap();
    assert_eq!(store.artifact(t.id, a1.id).await.unwrap(), None);
    assert!(matches!(
        store.delete_artifact(t.id, a1.id).await,
        Err(StoreError::NotFound(_))
    ));
}

pub async fn trusted_keys_are_per_tenant(store: &dyn Store) {
    let t = new_tenant(store, "keys-a").await;
    let other = new_tenant(store, "keys-b").await;
    let key = |tenant, id: &str, at| TrustedKey {
        tenant_id: tenant,
        key_id: id.into(),
        name: format!("release {id}"),
        public_key_pem: "-----BEGIN PUBLIC KEY-----\nMCowBQYDK2VwAyEA\n-----END PUBLIC KEY-----\n"
            .into(),
        created_at: T0.plus_millis(at),
    };
    store.insert_trusted_key(&key(t.id, "k2", 2)).await.unwrap();
    store.insert_trusted_key(&key(t.id, "k1", 1)).await.unwrap();
    store
        .insert_trusted_key(&key(other.id, "k1", 1))
        .await
        .unwrap();
    assert!(matches!(
        store.insert_trusted_key(&key(t.id, "k1", 5)).await,
        Err(StoreError::Conflict(_))
    ));
    let keys = store.trusted_keys(t.id).await.unwrap();
    assert_eq!(keys, vec![key(t.id, "k1", 1), key(t.id, "k2", 2)]);
    store.delete_trusted_key(t.id, "k1").await.unwrap();
    assert!(matches!(
        store.delete_trusted_key(t.id, "k1").await,
        Err(StoreError::NotFound(_))
    ));
    assert_eq!(store.trusted_keys(t.id).await.unwrap().len(), 1);
    assert_eq!(store.trusted_keys(other.id).await.unwrap().len(), 1);
}
