//! Device queries on the server: parse the operator's text (`400 invalid-query` pointing at
//! the problem) and translate the query into the store's [`Filter`], resolving what only the
//! server knows: group names (a static group with its subgroups, a dynamic group by its own
//! query, compiled in place), and `now`.
//!
//! The translation follows the semantics in `tender_core::query` exactly, so that the store's
//! answer is what `Query::matches` would say of each device: an absent field fails every
//! comparison; `!=` and `not in` hold for a present field none of whose values match; a list
//! matches when some element does.

use tender_core::group::{Group, GroupKind, descendants};
use tender_core::query::{self, Builtin, CmpOp, Expr, Field, Query, Value};
use tender_core::twin::index_path;
use tender_core::{DeviceId, TenantId, Timestamp};
use tender_store::filter::{Column, Cond, Filter, Op, Scope, Test};

use crate::problem::Problem;
use crate::state::AppState;

/// How deep dynamic groups may refer to each other.
const MAX_GROUP_NESTING: usize = 8;

/// Parses a query; `400 invalid-query` with the position and the message.
pub fn parse_query(text: &str) -> Result<Query, Problem> {
    query::parse(text).map_err(|e| {
        Problem::bad_request(
            "invalid-query",
            format!("{e} (in the query {})", short(text)),
        )
    })
}

fn short(text: &str) -> String {
    let mut t: String = text.chars().take(120).collect();
    if t.len() < text.len() {
        t.push_str("...");
    }
    format!("{t:?}")
}

/// Translates `query` for `tenant` at `now`.
pub async fn to_filter(
    state: &AppState,
    tenant: TenantId,
    query: &Query,
    now: Timestamp,
) -> Result<Filter, Problem> {
    let groups = if query.groups().is_empty() {
        Vec::new()
    } else {
        state.store.groups(tenant).await?
    };
    Translator {
        groups: &groups,
        now,
        stack: Vec::new(),
    }
    .expr(query.expr())
}

/// The filter for membership of `group` (a static group with its subgroups, or a dynamic
/// group's query), given every group of the tenant.
pub fn group_membership(
    groups: &[Group],
    group: &Group,
    now: Timestamp,
) -> Result<Filter, Problem> {
    Translator {
        groups,
        now,
        stack: Vec::new(),
    }
    .group(group.name.as_str())
}

struct Translator<'a> {
    groups: &'a [Group],
    now: Timestamp,
    /// Dynamic groups being expanded (to refuse cycles).
    stack: Vec<String>,
}

fn op(o: CmpOp) -> Op {
    match o {
        CmpOp::Eq => Op::Eq,
        CmpOp::Ne => Op::Ne,
        CmpOp::Lt => Op::Lt,
        CmpOp::Le => Op::Le,
        CmpOp::Gt => Op::Gt,
        CmpOp::Ge => Op::Ge,
    }
}

fn not(f: Filter) -> Filter {
    Filter::Not(Box::new(f))
}

fn unsupported(what: &str) -> Problem {
    Problem::bad_request("invalid-query", what.to_owned())
}

impl Translator<'_> {
    fn expr(&mut self, e: &Expr) -> Result<Filter, Problem> {
        Ok(match e {
            Expr::And(parts) => Filter::And(
                parts
                    .iter()
                    .map(|p| self.expr(p))
                    .collect::<Result<_, _>>()?,
            ),
            Expr::Or(parts) => Filter::Or(
                parts
                    .iter()
                    .map(|p| self.expr(p))
                    .collect::<Result<_, _>>()?,
            ),
            Expr::Not(inner) => not(self.expr(inner)?),
            Expr::Exists { field } => self.exists(field)?,
            Expr::Compare {
                field,
                op: o,
                value,
            } => match o {
                // `!=` holds for a present field with no value equal (some-value semantics).
                CmpOp::Ne => Filter::And(vec![
                    self.exists(field)?,
                    not(self.compare(field, CmpOp::Eq, value)?),
                ]),
                o => self.compare(field, *o, value)?,
            },
            Expr::In {
                field,
                values,
                negated,
            } => {
                let any = Filter::Or(
                    values
                        .iter()
                        .map(|v| self.compare(field, CmpOp::Eq, v))
                        .collect::<Result<_, _>>()?,
                );
                if *negated {
                    Filter::And(vec![self.exists(field)?, not(any)])
                } else {
                    any
                }
            }
            Expr::Glob { field, pattern } => {
                let test = Test::Glob {
                    like: pattern.to_like(),
                    glob: pattern.to_sqlite_glob(),
                };
                match field {
                    Field::Builtin(Builtin::Name) => column(Column::Name, test),
                    Field::Builtin(Builtin::DeviceType) => column(Column::DeviceType, test),
                    Field::Builtin(Builtin::Id) => {
                        // Ids are UUIDs in the store; match their text in memory is not
                        // possible there, so only whole ids are supported.
                        return Err(unsupported(
                            "id ~ \"...\" is not supported; compare ids with = or in",
                        ));
                    }
                    Field::Inventory(name) => attr(Scope::Inventory, name, test),
                    Field::Tag(name) => attr(Scope::Tag, name, test),
                    Field::Reported(path) => attr(Scope::ReportedString, &index_path(path), test),
                    _ => return Err(unsupported("~ applies to text fields only")),
                }
            }
        })
    }

    fn exists(&mut self, field: &Field) -> Result<Filter, Problem> {
        Ok(match field {
            Field::Builtin(Builtin::DeviceType) => {
                Filter::Cond(Cond::ColumnSet(Column::DeviceType))
            }
            Field::Builtin(Builtin::LastSeen) => Filter::Cond(Cond::EverSeen),
            Field::Builtin(_) => Filter::True,
            // Membership is never absent: a device is in a group or not.
            Field::Group => Filter::True,
            Field::Inventory(name) => Filter::Cond(Cond::AttrExists {
                scope: Scope::Inventory,
                name: name.clone(),
            }),
            Field::Tag(name) => Filter::Cond(Cond::AttrExists {
                scope: Scope::Tag,
                name: name.clone(),
            }),
            Field::Reported(path) => {
                let name = index_path(path);
                Filter::Or(
                    [
                        Scope::ReportedString,
                        Scope::ReportedNumber,
                        Scope::ReportedBool,
                        Scope::ReportedOther,
                    ]
                    .into_iter()
                    .map(|scope| {
                        Filter::Cond(Cond::AttrExists {
                            scope,
                            name: name.clone(),
                        })
                    })
                    .collect(),
                )
            }
        })
    }

    /// `field op value` with the positive operators (and `=` for the negated forms).
    fn compare(&mut self, field: &Field, o: CmpOp, value: &Value) -> Result<Filter, Problem> {
        Ok(match field {
            Field::Builtin(b) => self.builtin(*b, o, value)?,
            Field::Group => match value {
                Value::Text(name) => self.group(name)?,
                _ => Filter::False,
            },
            Field::Inventory(name) => attr(Scope::Inventory, name, attr_test(o, value)),
            Field::Tag(name) => attr(Scope::Tag, name, attr_test(o, value)),
            Field::Reported(path) => reported_test(&index_path(path), o, value),
        })
    }

    fn builtin(&mut self, b: Builtin, o: CmpOp, value: &Value) -> Result<Filter, Problem> {
        Ok(match (b, value) {
            (Builtin::Id, Value::Text(t)) => match (o, t.parse::<DeviceId>()) {
                (CmpOp::Eq, Ok(id)) => Filter::Cond(Cond::Ids(vec![id])),
                (CmpOp::Eq, Err(_)) => Filter::False,
                _ => {
                    return Err(unsupported("ids compare with =, != and in only"));
                }
            },
            (Builtin::Name, Value::Text(t)) => column(Column::Name, Test::Text(op(o), t.clone())),
            (Builtin::DeviceType, Value::Text(t)) => {
                column(Column::DeviceType, Test::Text(op(o), t.clone()))
            }
            (Builtin::State, Value::Text(t)) => column(Column::State, Test::Text(op(o), t.clone())),
            (Builtin::Online, Value::Bool(want)) => {
                let online = Filter::Cond(Cond::Online);
                if *want { online } else { not(online) }
            }
            (Builtin::LastSeen, Value::Time(t)) => {
                Filter::Cond(Cond::LastSeen(op(o), t.resolve(self.now)))
            }
            (Builtin::CreatedAt, Value::Time(t)) => {
                Filter::Cond(Cond::CreatedAt(op(o), t.resolve(self.now)))
            }
            // The parser admits only values of the field's type; anything else equals nothing.
            _ => Filter::False,
        })
    }

    /// Membership of the group named `name`: a static group with its subgroups, a dynamic
    /// group by its query. An unknown group has no members.
    fn group(&mut self, name: &str) -> Result<Filter, Problem> {
        let Some(g) = self.groups.iter().find(|g| g.name.as_str() == name) else {
            return Ok(Filter::False);
        };
        match &g.kind {
            GroupKind::Static => Ok(Filter::Cond(Cond::InGroups(descendants(self.groups, g.id)))),
            GroupKind::Dynamic { query } => {
                if self.stack.iter().any(|s| s == name) || self.stack.len() >= MAX_GROUP_NESTING {
                    return Err(Problem::bad_request(
                        "invalid-query",
                        format!(
                            "dynamic group {name} refers to itself through {} (or nests more than {MAX_GROUP_NESTING} deep)",
                            self.stack.join(" -> ")
                        ),
                    ));
                }
                let parsed = parse_query(query)?;
                self.stack.push(name.to_owned());
                let f = self.expr(parsed.expr());
                self.stack.pop();
                f
            }
        }
    }
}

fn column(column: Column, test: Test) -> Filter {
    Filter::Cond(Cond::Column { column, test })
}

fn attr(scope: Scope, name: &str, test: Test) -> Filter {
    Filter::Cond(Cond::Attr {
        scope,
        name: name.to_owned(),
        test,
    })
}

/// An inventory comparison: strings against the text, numbers against the number, booleans
/// against `"true"`/`"false"`.
fn attr_test(o: CmpOp, value: &Value) -> Test {
    match value {
        Value::Text(t) => Test::Text(op(o), t.clone()),
        Value::Number(n) => Test::Number(op(o), *n),
        Value::Bool(b) => Test::Text(op(o), b.to_string()),
        // Times are not inventory values: compare as the RFC 3339 text.
        Value::Time(t) => Test::Text(
            op(o),
            match t {
                query::TimeValue::Absolute(at) => at.to_rfc3339(),
                query::TimeValue::RelativeToNow { .. } => String::new(),
            },
        ),
    }
}

/// A reported-state comparison: typed as JSON, so each value type meets only its own kind of
/// indexed value (a string never equals a number).
fn reported_test(name: &str, o: CmpOp, value: &Value) -> Filter {
    match value {
        Value::Text(t) => attr(Scope::ReportedString, name, Test::Text(op(o), t.clone())),
        Value::Number(n) => attr(Scope::ReportedNumber, name, Test::Number(op(o), *n)),
        Value::Bool(b) => attr(Scope::ReportedBool, name, Test::Text(op(o), b.to_string())),
        Value::Time(t) => attr(
            Scope::ReportedString,
            name,
            Test::Text(
                op(o),
                match t {
                    query::TimeValue::Absolute(at) => at.to_rfc3339(),
                    query::TimeValue::RelativeToNow { .. } => String::new(),
                },
            ),
        ),
    }
}

/// Checks, when a dynamic group is saved, that its query can be translated: groups it names
/// exist and do not lead back to it.
pub async fn check_group_query(
    state: &AppState,
    tenant: TenantId,
    group_name: &str,
    query: &Query,
) -> Result<(), Problem> {
    let groups = state.store.groups(tenant).await?;
    for name in query.groups() {
        if !groups.iter().any(|g| g.name.as_str() == name) {
            return Err(Problem::bad_request(
                "invalid-query",
                format!("the query names group {name:?}, which does not exist"),
            ));
        }
    }
    let mut t = Translator {
        groups: &groups,
        now: state.clock.now(),
        stack: vec![group_name.to_owned()],
    };
    t.expr(query.expr()).map(|_| ())
}

#[derive(Debug, serde::Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct CountQuery {
    /// A device query; all devices without one.
    pub q: Option<String>,
    /// Only devices in this state.
    pub state: Option<crate::api::devices::DeviceStateDto>,
}

#[derive(Debug, serde::Serialize, utoipa::ToSchema)]
pub struct DeviceCount {
    pub count: u64,
}

#[utoipa::path(
    get,
    path = "/api/v1/devices/count",
    tag = "devices",
    params(CountQuery),
    security(("bearer" = [])),
    responses(
        (status = 200, description = "How many devices match", body = DeviceCount),
        (status = 400, description = "Invalid query or state", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "Lacks devices_read", body = Problem, content_type = "application/problem+json"),
    )
)]
pub async fn count_devices(
    axum::extract::State(state): axum::extract::State<AppState>,
    auth: crate::auth::Authorized<crate::auth::need::DevicesRead>,
    axum::extract::Query(q): axum::extract::Query<CountQuery>,
) -> Result<axum::Json<DeviceCount>, Problem> {
    let tenant = auth.principal.tenant_id;
    let matching = match q.q.as_deref() {
        Some(text) if !text.trim().is_empty() => {
            Some(to_filter(&state, tenant, &parse_query(text)?, state.clock.now()).await?)
        }
        _ => None,
    };
    let filter = tender_store::DeviceFilter {
        state: q.state.map(Into::into),
        matching,
    };
    Ok(axum::Json(DeviceCount {
        count: state.store.count_devices(tenant, &filter).await?,
    }))
}

/// `query` with every reference to group `old` renamed to `new`, as canonical text; `None`
/// when it does not refer to `old`.
pub fn rename_group_in(query: &Query, old: &str, new: &str) -> Option<String> {
    if !query.groups().contains(&old) {
        return None;
    }
    fn rename(e: &Expr, old: &str, new: &str) -> Expr {
        let swap = |v: &Value| match v {
            Value::Text(t) if t == old => Value::Text(new.to_owned()),
            other => other.clone(),
        };
        match e {
            Expr::And(parts) => Expr::And(parts.iter().map(|p| rename(p, old, new)).collect()),
            Expr::Or(parts) => Expr::Or(parts.iter().map(|p| rename(p, old, new)).collect()),
            Expr::Not(inner) => Expr::Not(Box::new(rename(inner, old, new))),
            Expr::Compare {
                field: Field::Group,
                op,
                value,
            } => Expr::Compare {
                field: Field::Group,
                op: *op,
                value: swap(value),
            },
            Expr::In {
                field: Field::Group,
                values,
                negated,
            } => Expr::In {
                field: Field::Group,
                values: values.iter().map(swap).collect(),
                negated: *negated,
            },
            other => other.clone(),
        }
    }
    Some(rename(query.expr(), old, new).to_string())
}
