//! Who is calling and what they may do.
//!
//! Authentication (turning a credential into a [`Principal`]) happens at the edge; authorisation
//! is decided here, by [`Principal::authorize`], and nowhere else. Deny by default: a principal
//! may do exactly what the union of its roles grants.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::{TenantId, TokenId, UserId};

/// One thing an operator may be allowed to do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Permission {
    DevicesRead,
    DevicesManage,
    DevicesEnroll,
    DevicesDecommission,
    TwinWrite,
    CommandsSend,
    TerminalConnect,
    ArtifactsRead,
    ArtifactsUpload,
    ArtifactsManage,
    DeploymentsCreate,
    DeploymentsControl,
    AlertsManage,
    UsersManage,
    AuditRead,
    /// Tenant-wide settings (e.g. whether devices may enroll without a token).
    TenantManage,
    /// Webhooks: register, change and delete endpoints, read their delivery logs, redeliver.
    WebhooksManage,
    /// Ask devices for their logs and read them (roles that manage devices hold it).
    LogsRead,
}

impl Permission {
    pub const ALL: [Permission; 18] = [
        Permission::DevicesRead,
        Permission::DevicesManage,
        Permission::DevicesEnroll,
        Permission::DevicesDecommission,
        Permission::TwinWrite,
        Permission::CommandsSend,
        Permission::TerminalConnect,
        Permission::ArtifactsRead,
        Permission::ArtifactsUpload,
        Permission::ArtifactsManage,
        Permission::DeploymentsCreate,
        Permission::DeploymentsControl,
        Permission::AlertsManage,
        Permission::UsersManage,
        Permission::AuditRead,
        Permission::TenantManage,
        Permission::WebhooksManage,
        Permission::LogsRead,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Permission::DevicesRead => "devices_read",
            Permission::DevicesManage => "devices_manage",
            Permission::DevicesEnroll => "devices_enroll",
            Permission::DevicesDecommission => "devices_decommission",
            Permission::TwinWrite => "twin_write",
            Permission::CommandsSend => "commands_send",
            Permission::TerminalConnect => "terminal_connect",
            Permission::ArtifactsRead => "artifacts_read",
            Permission::ArtifactsUpload => "artifacts_upload",
            Permission::ArtifactsManage => "artifacts_manage",
            Permission::DeploymentsCreate => "deployments_create",
            Permission::DeploymentsControl => "deployments_control",
            Permission::AlertsManage => "alerts_manage",
            Permission::UsersManage => "users_manage",
            Permission::AuditRead => "audit_read",
            Permission::TenantManage => "tenant_manage",
            Permission::WebhooksManage => "webhooks_manage",
            Permission::LogsRead => "logs_read",
        }
    }
}

impl fmt::Display for Permission {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A built-in role: a named set of permissions.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    /// Everything in the tenant.
    Admin,
    /// Runs the fleet day to day: devices, twin, commands, terminal, alerts and their webhooks.
    Operator,
    /// Ships software: artifacts and deployments, reads devices.
    ReleaseManager,
    /// Reads everything an operator sees, changes nothing.
    Viewer,
}

impl Role {
    pub const ALL: [Role; 4] = [
        Role::Admin,
        Role::Operator,
        Role::ReleaseManager,
        Role::Viewer,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Role::Admin => "admin",
            Role::Operator => "operator",
            Role::ReleaseManager => "release_manager",
            Role::Viewer => "viewer",
        }
    }

    pub fn grants(self, p: Permission) -> bool {
        use Permission::*;
        match self {
            Role::Admin => true,
            Role::Operator => matches!(
                p,
                DevicesRead
                    | DevicesManage
                    | DevicesEnroll
                    | DevicesDecommission
                    | TwinWrite
                    | CommandsSend
                    | TerminalConnect
                    | ArtifactsRead
                    | AlertsManage
                    | WebhooksManage
                    | LogsRead
            ),
            Role::ReleaseManager => matches!(
                p,
                DevicesRead
                    | ArtifactsRead
                    | ArtifactsUpload
                    | ArtifactsManage
                    | DeploymentsCreate
                    | DeploymentsControl
            ),
            Role::Viewer => matches!(p, DevicesRead | ArtifactsRead),
        }
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Role {
    type Err = UnknownRole;
    fn from_str(s: &str) -> Result<Self, UnknownRole> {
        Role::ALL
            .into_iter()
            .find(|r| r.as_str() == s)
            .ok_or_else(|| UnknownRole(s.chars().take(40).collect()))
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown role {0:?}: expected one of admin, operator, release_manager, viewer")]
pub struct UnknownRole(pub String);

/// An authenticated caller, always inside exactly one tenant.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Principal {
    pub tenant_id: TenantId,
    pub user_id: UserId,
    pub username: String,
    /// The credential used, when it was an API token.
    pub token_id: Option<TokenId>,
    pub roles: Vec<Role>,
}

/// The caller is authenticated but not allowed to do this.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{username} lacks the permission {needed}")]
pub struct Forbidden {
    pub username: String,
    pub needed: Permission,
}

impl Principal {
    /// The one place that decides whether a principal may do something.
    pub fn authorize(&self, needed: Permission) -> Result<(), Forbidden> {
        if self.roles.iter().any(|r| r.grants(needed)) {
            Ok(())
        } else {
            Err(Forbidden {
                username: self.username.clone(),
                needed,
            })
        }
    }

    /// Every permission this principal holds, sorted.
    pub fn permissions(&self) -> Vec<Permission> {
        Permission::ALL
            .into_iter()
            .filter(|p| self.roles.iter().any(|r| r.grants(*p)))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use uuid::Uuid;

    fn principal(roles: Vec<Role>) -> Principal {
        Principal {
            tenant_id: TenantId::from_uuid(Uuid::nil()),
            user_id: UserId::from_uuid(Uuid::nil()),
            username: "u".into(),
            token_id: None,
            roles,
        }
    }

    #[test]
    fn deny_by_default() {
        let nobody = principal(vec![]);
        for p in Permission::ALL {
            assert!(nobody.authorize(p).is_err());
        }
        assert!(nobody.permissions().is_empty());
    }

    #[test]
    fn admin_has_everything() {
        let admin = principal(vec![Role::Admin]);
        assert_eq!(admin.permissions(), Permission::ALL.to_vec());
    }

    #[test]
    fn roles_combine_as_a_union() {
        let viewer = principal(vec![Role::Viewer]);
        assert!(viewer.authorize(Permission::DevicesRead).is_ok());
        assert!(viewer.authorize(Permission::DeploymentsCreate).is_err());
        let both = principal(vec![Role::Viewer, Role::ReleaseManager]);
        assert!(both.authorize(Permission::DeploymentsCreate).is_ok());
        assert!(both.authorize(Permission::TerminalConnect).is_err());
        assert!(both.authorize(Permission::WebhooksManage).is_err());
        let operator = principal(vec![Role::Operator]);
        assert!(operator.authorize(Permission::WebhooksManage).is_ok());
        assert!(
            principal(vec![Role::Admin])
                .authorize(Permission::WebhooksManage)
                .is_ok()
        );
    }

    #[test]
    fn forbidden_names_the_permission() {
        let err = principal(vec![Role::Viewer])
            .authorize(Permission::UsersManage)
            .unwrap_err();
        assert_eq!(err.to_string(), "u lacks the permission users_manage");
    }

    #[test]
    fn every_permission_and_role_name_is_distinct() {
        let mut names: Vec<_> = Permission::ALL.iter().map(|p| p.as_str()).collect();
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), Permission::ALL.len());
        for r in Role::ALL {
            assert_eq!(r.as_str().parse::<Role>(), Ok(r));
        }
    }
}
