//! Device groups.
//!
//! - A **static** group lists its devices explicitly (operators add and remove them). Static
//!   groups nest: a group may have a static parent, and a device in a group is also a member of
//!   every ancestor (`group = "plant-1"` matches the devices of `plant-1/line-3` too).
//! - A **dynamic** group is a saved device query (see [`crate::query`]): its members are the
//!   devices that match it now, so a device that starts matching is in, one that stops is out.
//!   Dynamic groups do not nest and have no explicit members.
//!
//! A device may be in any number of groups. Groups are referred to by id in the store and
//! by name in queries and the CLI; names are unique in a tenant, so a rename is one change.

use serde::Serialize;

use crate::{GroupId, TenantId, Timestamp};

/// Longest group name, in characters.
pub const MAX_GROUP_NAME_LEN: usize = 128;
/// Deepest nesting of static groups (a root group is at depth 1).
pub const MAX_GROUP_DEPTH: usize = 16;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum GroupError {
    #[error(
        "a group name is 1 to {MAX_GROUP_NAME_LEN} characters of letters, digits, space and _ . - / : (no leading or trailing space)"
    )]
    InvalidName,
    #[error("a group cannot be its own parent or the parent of one of its ancestors")]
    Cycle,
    #[error("static groups nest at most {MAX_GROUP_DEPTH} deep")]
    TooDeep,
    #[error("only static groups have a parent or children")]
    NotStatic,
}

/// A valid group name.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(transparent)]
pub struct GroupName(String);

impl GroupName {
    pub fn parse(name: &str) -> Result<Self, GroupError> {
        let len = name.chars().count();
        let ok = (1..=MAX_GROUP_NAME_LEN).contains(&len)
            && name.trim() == name
            && name
                .chars()
                .all(|c| c.is_alphanumeric() || matches!(c, ' ' | '_' | '.' | '-' | '/' | ':'));
        if ok {
            Ok(GroupName(name.to_owned()))
        } else {
            Err(GroupError::InvalidName)
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Display for GroupName {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// What decides a group's members.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum GroupKind {
    Static,
    /// The device query, as text (parsed and checked by [`crate::query::parse`] before it is
    /// stored).
    Dynamic {
        query: String,
    },
}

impl GroupKind {
    pub fn as_str(&self) -> &'static str {
        match self {
            GroupKind::Static => "static",
            GroupKind::Dynamic { .. } => "dynamic",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Group {
    pub id: GroupId,
    pub tenant_id: TenantId,
    pub name: GroupName,
    /// A static parent (static groups only).
    pub parent_id: Option<GroupId>,
    pub kind: GroupKind,
    pub created_at: Timestamp,
    pub updated_at: Timestamp,
}

/// Checks that `group` may get `new_parent`, given every group of the tenant: the parent
/// exists, both are static, no cycle, not too deep (counting the group's own subtree).
pub fn check_parent(
    groups: &[Group],
    group: GroupId,
    new_parent: Option<GroupId>,
) -> Result<(), GroupError> {
    let Some(parent) = new_parent else {
        return Ok(());
    };
    let find = |id: GroupId| groups.iter().find(|g| g.id == id);
    let is_static = |id: GroupId| find(id).is_some_and(|g| g.kind == GroupKind::Static);
    if !is_static(parent) || find(group).is_some_and(|g| g.kind != GroupKind::Static) {
        return Err(GroupError::NotStatic);
    }
    // Walk up from the parent: meeting `group` is a cycle; count the depth on the way.
    let mut depth = 1;
    let mut at = Some(parent);
    while let Some(id) = at {
        if id == group {
            return Err(GroupError::Cycle);
        }
        depth += 1;
        if depth > MAX_GROUP_DEPTH + 1 {
            return Err(GroupError::TooDeep);
        }
        at = find(id).and_then(|g| g.parent_id);
    }
    // `depth` levels above and including the group; add the group's own subtree below it.
    if depth - 1 + subtree_height(groups, group) > MAX_GROUP_DEPTH {
        return Err(GroupError::TooDeep);
    }
    Ok(())
}

fn subtree_height(groups: &[Group], root: GroupId) -> usize {
    let mut height = 1;
    let mut level = vec![root];
    while !level.is_empty() && height <= MAX_GROUP_DEPTH + 1 {
        level = groups
            .iter()
            .filter(|g| g.parent_id.is_some_and(|p| level.contains(&p)))
            .map(|g| g.id)
            .collect();
        if !level.is_empty() {
            height += 1;
        }
    }
    height
}

/// `root` and every group below it (static nesting), root first.
pub fn descendants(groups: &[Group], root: GroupId) -> Vec<GroupId> {
    let mut out = vec![root];
    let mut i = 0;
    while i < out.len() && out.len() <= groups.len() {
        let at = out[i];
        let children: Vec<GroupId> = groups
            .iter()
            .filter(|g| g.parent_id == Some(at) && !out.contains(&g.id))
            .map(|g| g.id)
            .collect();
        out.extend(children);
        i += 1;
    }
    out
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn g(n: u128, parent: Option<u128>, kind: GroupKind) -> Group {
        Group {
            id: GroupId::from_uuid(uuid::Uuid::from_u128(n)),
            tenant_id: TenantId::from_uuid(uuid::Uuid::from_u128(999)),
            name: GroupName::parse(&format!("g{n}")).unwrap(),
            parent_id: parent.map(|p| GroupId::from_uuid(uuid::Uuid::from_u128(p))),
            kind,
            created_at: Timestamp::from_unix_millis(0),
            updated_at: Timestamp::from_unix_millis(0),
        }
    }

    fn id(n: u128) -> GroupId {
        GroupId::from_uuid(uuid::Uuid::from_u128(n))
    }

    #[test]
    fn names() {
        assert!(GroupName::parse("plant 1/line-3").is_ok());
        assert!(GroupName::parse("Küche").is_ok());
        for bad in ["", " x", "x ", "a\nb", "a*b", &"x".repeat(129)] {
            assert_eq!(
                GroupName::parse(bad),
                Err(GroupError::InvalidName),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn parents_nest_without_cycles_or_excess_depth() {
        let dynamic = GroupKind::Dynamic { query: "x".into() };
        let gs = vec![
            g(1, None, GroupKind::Static),
            g(2, Some(1), GroupKind::Static),
            g(3, Some(2), GroupKind::Static),
            g(4, None, dynamic.clone()),
            g(5, None, GroupKind::Static),
        ];
        assert_eq!(check_parent(&gs, id(5), Some(id(3))), Ok(()));
        assert_eq!(check_parent(&gs, id(5), None), Ok(()));
        assert_eq!(
            check_parent(&gs, id(1), Some(id(3))),
            Err(GroupError::Cycle)
        );
        assert_eq!(
            check_parent(&gs, id(1), Some(id(1))),
            Err(GroupError::Cycle)
        );
        assert_eq!(
            check_parent(&gs, id(5), Some(id(4))),
            Err(GroupError::NotStatic)
        );
        assert_eq!(
            check_parent(&gs, id(4), Some(id(1))),
            Err(GroupError::NotStatic)
        );
        assert_eq!(
            check_parent(&gs, id(5), Some(id(77))),
            Err(GroupError::NotStatic)
        );
        assert_eq!(descendants(&gs, id(1)), vec![id(1), id(2), id(3)]);
        assert_eq!(descendants(&gs, id(3)), vec![id(3)]);
        // A chain of MAX_GROUP_DEPTH is fine; one more is not, from either end.
        let mut chain: Vec<Group> = (1..=MAX_GROUP_DEPTH as u128)
            .map(|n| g(n, (n > 1).then(|| n - 1), GroupKind::Static))
            .collect();
        chain.push(g(100, None, GroupKind::Static));
        chain.push(g(101, Some(100), GroupKind::Static));
        let last = id(MAX_GROUP_DEPTH as u128);
        assert_eq!(
            check_parent(&chain, id(100), Some(last)),
            Err(GroupError::TooDeep)
        );
        assert_eq!(
            check_parent(&chain, id(101), Some(last)),
            Err(GroupError::TooDeep)
        );
        assert_eq!(
            check_parent(&chain, id(101), Some(id(MAX_GROUP_DEPTH as u128 - 1))),
            Ok(())
        );
    }
}
