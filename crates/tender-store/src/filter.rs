//! Device filters: what a device search asks the store, in the store's own terms.
//!
//! The device query language lives in the core; the server turns a parsed query into a
//! [`Filter`] (resolving group names to ids, dynamic groups to their own filters, `now - 1h`
//! to a time) and the adapters compile the filter to one SQL `WHERE` clause with bound
//! parameters, the same on both backends but for glob matching. Nothing from the caller is
//! ever spliced into SQL text: every value is a parameter.
//!
//! Attribute tests (inventory attributes and tags) read the `device_attributes` index: a
//! device matches when **some** row for the attribute passes the test, so a list attribute
//! matches when any element does, and a device without the attribute matches no test
//! (use [`Filter::Not`] of [`Cond::AttrExists`] to ask for its absence).

use tender_core::{DeviceId, GroupId, Timestamp};

/// Which attributes a test reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scope {
    Inventory,
    Tag,
    /// Reported twin values by JSON type (see `tender_core::twin::index_rows`).
    ReportedString,
    ReportedNumber,
    ReportedBool,
    /// Objects: present, equal to nothing.
    ReportedOther,
}

impl Scope {
    pub fn as_str(self) -> &'static str {
        match self {
            Scope::Inventory => "inventory",
            Scope::Tag => "tag",
            Scope::ReportedString => tender_core::twin::IndexKind::String.scope(),
            Scope::ReportedNumber => tender_core::twin::IndexKind::Number.scope(),
            Scope::ReportedBool => tender_core::twin::IndexKind::Bool.scope(),
            Scope::ReportedOther => tender_core::twin::IndexKind::Other.scope(),
        }
    }
}

/// A comparison operator.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    Eq,
    Ne,
    Lt,
    Le,
    Gt,
    Ge,
}

impl Op {
    fn sql(self) -> &'static str {
        match self {
            Op::Eq => "=",
            Op::Ne => "<>",
            Op::Lt => "<",
            Op::Le => "<=",
            Op::Gt => ">",
            Op::Ge => ">=",
        }
    }
}

/// A test of one value.
#[derive(Debug, Clone, PartialEq)]
pub enum Test {
    /// Text compared bytewise.
    Text(Op, String),
    /// Numbers (an attribute's number, or the number its text reads as).
    Number(Op, f64),
    /// Equal to one of these texts.
    TextIn(Vec<String>),
    /// Equal to one of these numbers.
    NumberIn(Vec<f64>),
    /// A glob, anchored, in both dialects' spelling: `like` for `LIKE ... ESCAPE '\'`
    /// (PostgreSQL), `glob` for SQLite's case-sensitive `GLOB`
    /// (`tender_core::query::GlobPattern::to_like` / `to_sqlite_glob`).
    Glob { like: String, glob: String },
}

/// A device column that tests can read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Column {
    Name,
    DeviceType,
    State,
}

/// One condition.
#[derive(Debug, Clone, PartialEq)]
pub enum Cond {
    /// Some row of the attribute passes the test.
    Attr {
        scope: Scope,
        name: String,
        test: Test,
    },
    /// The device has the attribute.
    AttrExists {
        scope: Scope,
        name: String,
    },
    /// A text column passes the test (a NULL `device_type` passes none).
    Column {
        column: Column,
        test: Test,
    },
    /// The column has a value (only `device_type` can lack one).
    ColumnSet(Column),
    /// The device has been heard from.
    EverSeen,
    /// The device id is one of these.
    Ids(Vec<DeviceId>),
    /// Last seen (never-seen devices pass no test) or creation time, compared with a time.
    LastSeen(Op, Timestamp),
    CreatedAt(Op, Timestamp),
    /// The device holds an open connection.
    Online,
    /// The device was added to one of these static groups.
    InGroups(Vec<GroupId>),
}

/// A device filter: conditions combined with and, or, not.
#[derive(Debug, Clone, PartialEq)]
pub enum Filter {
    True,
    False,
    Cond(Cond),
    And(Vec<Filter>),
    Or(Vec<Filter>),
    Not(Box<Filter>),
}

/// Most parameters one compiled filter may bind (both backends allow far more).
pub const MAX_PARAMS: usize = 2000;

/// A bound value.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Param {
    Text(String),
    Number(f64),
    Int(i64),
    Uuid(uuid::Uuid),
}

/// Binds a compiled filter's parameters, in order, to a query.
macro_rules! bind_params {
    ($q:expr, $params:expr) => {{
        let mut q = $q;
        for p in $params.iter() {
            q = match p {
                $crate::filter::Param::Text(t) => q.bind(t.clone()),
                $crate::filter::Param::Number(n) => q.bind(*n),
                $crate::filter::Param::Int(i) => q.bind(*i),
                $crate::filter::Param::Uuid(u) => q.bind(*u),
            };
        }
        q
    }};
}
pub(crate) use bind_params;

/// A compiled filter: SQL over `devices d` and its parameters, numbered from `first`.
pub(crate) struct Compiled {
    pub sql: String,
    pub params: Vec<Param>,
}

#[derive(Debug, thiserror::Error)]
#[error("the filter is too large: more than {MAX_PARAMS} values")]
pub struct TooLarge;

struct Builder {
    sql: String,
    params: Vec<Param>,
    first: usize,
    sqlite: bool,
    /// Attribute tests as correlated `EXISTS` lookups of the current device (cheap per row
    /// when few rows are visited, see [`compile_driven`]) instead of uncorrelated `IN` sets.
    correlated: bool,
}

impl Builder {
    fn bind(&mut self, p: Param) -> Result<String, TooLarge> {
        if self.params.len() >= MAX_PARAMS {
            return Err(TooLarge);
        }
        self.params.push(p);
        Ok(format!("${}", self.first + self.params.len() - 1))
    }

    fn filter(&mut self, f: &Filter) -> Result<(), TooLarge> {
        match f {
            Filter::True => self.sql.push_str("1 = 1"),
            Filter::False => self.sql.push_str("1 = 0"),
            Filter::Cond(c) => self.cond(c)?,
            Filter::And(parts) | Filter::Or(parts) if parts.is_empty() => {
                self.sql.push_str(if matches!(f, Filter::And(_)) {
                    "1 = 1"
                } else {
                    "1 = 0"
                });
            }
            Filter::And(parts) | Filter::Or(parts) => {
                let joiner = if matches!(f, Filter::And(_)) {
                    " AND "
                } else {
                    " OR "
                };
                self.sql.push('(');
                for (i, p) in parts.iter().enumerate() {
                    if i > 0 {
                        self.sql.push_str(joiner);
                    }
                    self.filter(p)?;
                }
                self.sql.push(')');
            }
            Filter::Not(inner) => {
                self.sql.push_str("NOT (");
                self.filter(inner)?;
                self.sql.push(')');
            }
        }
        Ok(())
    }

    /// `expr` (a text column) tested by `test`, or `num` (a number column) for number tests.
    fn test(&mut self, text: &str, num: Option<&str>, test: &Test) -> Result<(), TooLarge> {
        match test {
            Test::Text(op, v) => {
                let p = self.bind(Param::Text(v.clone()))?;
                self.sql.push_str(&format!("{text} {} {p}", op.sql()));
            }
            Test::Number(op, v) => match num {
                Some(num) => {
                    let p = self.bind(Param::Number(*v))?;
                    self.sql.push_str(&format!("{num} {} {p}", op.sql()));
                }
                None => self.sql.push_str("1 = 0"),
            },
            Test::TextIn(vs) => {
                if vs.is_empty() {
                    self.sql.push_str("1 = 0");
                    return Ok(());
                }
                let ps = vs
                    .iter()
                    .map(|v| self.bind(Param::Text(v.clone())))
                    .collect::<Result<Vec<_>, _>>()?;
                self.sql.push_str(&format!("{text} IN ({})", ps.join(", ")));
            }
            Test::NumberIn(vs) => match num {
                Some(num) if !vs.is_empty() => {
                    let ps = vs
                        .iter()
                        .map(|v| self.bind(Param::Number(*v)))
                        .collect::<Result<Vec<_>, _>>()?;
                    self.sql.push_str(&format!("{num} IN ({})", ps.join(", ")));
                }
                _ => self.sql.push_str("1 = 0"),
            },
            Test::Glob { like, glob } => {
                if self.sqlite {
                    // SQLite's LIKE ignores ASCII case; GLOB does not.
                    let p = self.bind(Param::Text(glob.clone()))?;
                    self.sql.push_str(&format!("{text} GLOB {p}"));
                } else {
                    let p = self.bind(Param::Text(like.clone()))?;
                    self.sql.push_str(&format!("{text} LIKE {p} ESCAPE '\\'"));
                }
            }
        }
        Ok(())
    }

    fn cond(&mut self, c: &Cond) -> Result<(), TooLarge> {
        match c {
            Cond::Attr { scope, name, test } => {
                let s = self.bind(Param::Text(scope.as_str().to_owned()))?;
                let n = self.bind(Param::Text(name.clone()))?;
                if self.correlated {
                    self.sql.push_str(&format!(
                        "EXISTS (SELECT 1 FROM device_attributes a WHERE a.tenant_id = $1 \
                         AND a.device_id = d.id AND a.scope = {s} AND a.name = {n} AND "
                    ));
                } else {
                    self.sql.push_str(&format!(
                        "d.id IN (SELECT a.device_id FROM device_attributes a \
                         WHERE a.tenant_id = $1 AND a.scope = {s} AND a.name = {n} AND "
                    ));
                }
                self.test("a.text_value", Some("a.num_value"), test)?;
                self.sql.push(')');
            }
            Cond::AttrExists { scope, name } => {
                let s = self.bind(Param::Text(scope.as_str().to_owned()))?;
                let n = self.bind(Param::Text(name.clone()))?;
                if self.correlated {
                    self.sql.push_str(&format!(
                        "EXISTS (SELECT 1 FROM device_attributes a WHERE a.tenant_id = $1 \
                         AND a.device_id = d.id AND a.scope = {s} AND a.name = {n})"
                    ));
                } else {
                    self.sql.push_str(&format!(
                        "d.id IN (SELECT a.device_id FROM device_attributes a \
                         WHERE a.tenant_id = $1 AND a.scope = {s} AND a.name = {n})"
                    ));
                }
            }
            Cond::Column { column, test } => {
                let col = match column {
                    Column::Name => "d.name",
                    Column::DeviceType => "d.device_type",
                    Column::State => "d.state",
                };
                // Guarded, so that a NULL never reaches NOT: false, not unknown.
                self.sql.push_str(&format!("({col} IS NOT NULL AND "));
                self.test(col, None, test)?;
                self.sql.push(')');
            }
            Cond::ColumnSet(column) => self.sql.push_str(match column {
                Column::Name => "d.name IS NOT NULL",
                Column::DeviceType => "d.device_type IS NOT NULL",
                Column::State => "d.state IS NOT NULL",
            }),
            Cond::EverSeen => self.sql.push_str("d.last_seen_at IS NOT NULL"),
            Cond::Ids(ids) => {
                if ids.is_empty() {
                    self.sql.push_str("1 = 0");
                } else {
                    let ps = ids
                        .iter()
                        .map(|id| self.bind(Param::Uuid(*id.as_uuid())))
                        .collect::<Result<Vec<_>, _>>()?;
                    self.sql.push_str(&format!("d.id IN ({})", ps.join(", ")));
                }
            }
            Cond::LastSeen(op, t) => {
                let p = self.bind(Param::Int(t.unix_millis()))?;
                self.sql.push_str(&format!(
                    "(d.last_seen_at IS NOT NULL AND d.last_seen_at {} {p})",
                    op.sql()
                ));
            }
            Cond::CreatedAt(op, t) => {
                let p = self.bind(Param::Int(t.unix_millis()))?;
                self.sql.push_str(&format!("d.created_at {} {p}", op.sql()));
            }
            Cond::Online => self.sql.push_str(
                "d.id IN (SELECT c.device_id FROM device_connections c \
                 WHERE c.tenant_id = $1 AND c.disconnected_at IS NULL)",
            ),
            Cond::InGroups(groups) => {
                if groups.is_empty() {
                    self.sql.push_str("1 = 0");
                } else {
                    let ps = groups
                        .iter()
                        .map(|g| self.bind(Param::Uuid(*g.as_uuid())))
                        .collect::<Result<Vec<_>, _>>()?;
                    self.sql.push_str(&format!(
                        "d.id IN (SELECT m.device_id FROM group_members m \
                         WHERE m.tenant_id = $1 AND m.group_id IN ({}))",
                        ps.join(", ")
                    ));
                }
            }
        }
        Ok(())
    }
}

/// Compiles `filter` into SQL whose parameters are numbered from `$first`. The statement around
/// it binds the tenant as `$1`: the subqueries use it directly rather than the outer row's
/// tenant, so that they are uncorrelated and each runs once (a correlated subquery is run per
/// device on SQLite).
pub(crate) fn compile(filter: &Filter, first: usize, sqlite: bool) -> Result<Compiled, TooLarge> {
    let mut b = Builder {
        sql: String::new(),
        params: Vec::new(),
        first,
        sqlite,
        correlated: false,
    };
    b.filter(filter)?;
    Ok(Compiled {
        sql: b.sql,
        params: b.params,
    })
}

/// Like [`compile`], with attribute tests as correlated per-device lookups: for plans that
/// visit few devices.
pub(crate) fn compile_correlated(
    filter: &Filter,
    first: usize,
    sqlite: bool,
) -> Result<Compiled, TooLarge> {
    let mut b = Builder {
        sql: String::new(),
        params: Vec::new(),
        first,
        sqlite,
        correlated: true,
    };
    b.filter(filter)?;
    Ok(Compiled {
        sql: b.sql,
        params: b.params,
    })
}

/// A count plan for a filter that is one attribute test (or its negation): `sql` is a
/// condition over the attribute row `a0`, `earlier` the same condition (the same parameters)
/// over the row `b`.
pub(crate) struct AttrCount {
    pub sql: String,
    pub earlier: String,
    pub params: Vec<Param>,
    pub negated: bool,
}

/// The count plan for `filter` when it is a lone attribute test or `not` of one.
pub(crate) fn compile_attr_count(
    filter: &Filter,
    first: usize,
    sqlite: bool,
) -> Result<Option<AttrCount>, TooLarge> {
    let (cond, negated) = match filter {
        Filter::Cond(c @ (Cond::Attr { .. } | Cond::AttrExists { .. })) => (c, false),
        Filter::Not(inner) => match inner.as_ref() {
            Filter::Cond(c @ (Cond::Attr { .. } | Cond::AttrExists { .. })) => (c, true),
            _ => return Ok(None),
        },
        _ => return Ok(None),
    };
    let (scope, name, test) = match cond {
        Cond::Attr { scope, name, test } => (scope, name, Some(test)),
        Cond::AttrExists { scope, name } => (scope, name, None),
        _ => return Ok(None),
    };
    // The same values bound in the same order number the same: both conditions share them.
    let over = |alias: &str| -> Result<Builder, TooLarge> {
        let mut b = Builder {
            sql: String::new(),
            params: Vec::new(),
            first,
            sqlite,
            correlated: false,
        };
        let s = b.bind(Param::Text(scope.as_str().to_owned()))?;
        let n = b.bind(Param::Text(name.clone()))?;
        b.sql
            .push_str(&format!("{alias}.scope = {s} AND {alias}.name = {n}"));
        if let Some(test) = test {
            b.sql.push_str(" AND ");
            b.test(
                &format!("{alias}.text_value"),
                Some(&format!("{alias}.num_value")),
                test,
            )?;
        }
        Ok(b)
    };
    let a0 = over("a0")?;
    let earlier = over("b")?;
    Ok(Some(AttrCount {
        sql: a0.sql,
        earlier: earlier.sql,
        params: a0.params,
        negated,
    }))
}

/// A count plan for an `and` of positive attribute tests only: one `SELECT device_id` per
/// test over the attribute index, intersected.
pub(crate) fn compile_attr_intersection(
    filter: &Filter,
    first: usize,
    sqlite: bool,
) -> Result<Option<Compiled>, TooLarge> {
    let Filter::And(parts) = filter else {
        return Ok(None);
    };
    if parts.len() < 2
        || !parts
            .iter()
            .all(|p| matches!(p, Filter::Cond(Cond::Attr { .. } | Cond::AttrExists { .. })))
    {
        return Ok(None);
    }
    let mut b = Builder {
        sql: String::new(),
        params: Vec::new(),
        first,
        sqlite,
        correlated: false,
    };
    for (i, part) in parts.iter().enumerate() {
        let Filter::Cond(c) = part else {
            return Ok(None);
        };
        let (scope, name, test) = match c {
            Cond::Attr { scope, name, test } => (scope, name, Some(test)),
            Cond::AttrExists { scope, name } => (scope, name, None),
            _ => return Ok(None),
        };
        if i > 0 {
            b.sql.push_str(" INTERSECT ");
        }
        let s = b.bind(Param::Text(scope.as_str().to_owned()))?;
        let n = b.bind(Param::Text(name.clone()))?;
        b.sql.push_str(&format!(
            "SELECT a0.device_id FROM device_attributes a0 WHERE a0.tenant_id = $1 \
             AND a0.scope = {s} AND a0.name = {n}"
        ));
        if let Some(test) = test {
            b.sql.push_str(" AND ");
            b.test("a0.text_value", Some("a0.num_value"), test)?;
        }
    }
    Ok(Some(Compiled {
        sql: b.sql,
        params: b.params,
    }))
}

/// A page plan driven by one attribute equality: `driver` is SQL over the attribute row
/// `a0` (its scope, name and text value), `rest` the remaining conditions over `devices d`
/// with attribute tests as per-device lookups. Walking `a0`'s index (tenant, scope, name,
/// text value, then device id: the table is clustered by its key) yields matching devices in
/// id order, so a page stops after `limit` rows instead of collecting every match first.
pub(crate) struct Driven {
    pub driver: String,
    pub rest: String,
    pub params: Vec<Param>,
}

/// The driven plan for `filter` when it is, or is an `and` of, an attribute text equality;
/// `None` otherwise.
pub(crate) fn compile_driven(
    filter: &Filter,
    first: usize,
    sqlite: bool,
) -> Result<Option<Driven>, TooLarge> {
    let is_driver = |f: &Filter| {
        matches!(
            f,
            Filter::Cond(Cond::Attr {
                test: Test::Text(Op::Eq, _),
                ..
            })
        )
    };
    let (driver, rest): (&Filter, Vec<Filter>) = match filter {
        f if is_driver(f) => (f, Vec::new()),
        Filter::And(parts) => match parts.iter().position(is_driver) {
            Some(i) => (
                &parts[i],
                parts
                    .iter()
                    .enumerate()
                    .filter(|(j, _)| *j != i)
                    .map(|(_, p)| p.clone())
                    .collect(),
            ),
            None => return Ok(None),
        },
        _ => return Ok(None),
    };
    let Filter::Cond(Cond::Attr {
        scope,
        name,
        test: Test::Text(Op::Eq, value),
    }) = driver
    else {
        return Ok(None);
    };
    let mut b = Builder {
        sql: String::new(),
        params: Vec::new(),
        first,
        sqlite,
        correlated: true,
    };
    let s = b.bind(Param::Text(scope.as_str().to_owned()))?;
    let n = b.bind(Param::Text(name.clone()))?;
    let v = b.bind(Param::Text(value.clone()))?;
    let driver = format!("a0.scope = {s} AND a0.name = {n} AND a0.text_value = {v}");
    b.filter(&Filter::And(rest))?;
    Ok(Some(Driven {
        driver,
        rest: b.sql,
        params: b.params,
    }))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn values_are_parameters_never_sql_text() {
        let evil = "x'); DROP TABLE devices; --".to_owned();
        let f = Filter::And(vec![
            Filter::Cond(Cond::Attr {
                scope: Scope::Inventory,
                name: evil.clone(),
                test: Test::Text(Op::Eq, evil.clone()),
            }),
            Filter::Not(Box::new(Filter::Cond(Cond::Column {
                column: Column::Name,
                test: Test::Glob {
                    like: evil.clone(),
                    glob: evil.clone(),
                },
            }))),
        ]);
        for sqlite in [true, false] {
            let c = compile(&f, 2, sqlite).unwrap();
            assert!(!c.sql.contains("DROP"), "{}", c.sql);
            assert!(
                c.sql.contains("$2") && c.sql.contains("tenant_id = $1"),
                "{}",
                c.sql
            );
            assert_eq!(c.params.len(), 4);
        }
    }

    #[test]
    fn globs_use_each_dialects_spelling() {
        let f = Filter::Cond(Cond::Column {
            column: Column::Name,
            test: Test::Glob {
                like: "k\\_%".into(),
                glob: "k_*".into(),
            },
        });
        let pg = compile(&f, 1, false).unwrap();
        assert_eq!(pg.params, vec![Param::Text("k\\_%".into())]);
        assert!(pg.sql.contains("LIKE $1 ESCAPE"), "{}", pg.sql);
        let lite = compile(&f, 1, true).unwrap();
        assert_eq!(lite.params, vec![Param::Text("k_*".into())]);
        assert!(lite.sql.contains("GLOB $1"), "{}", lite.sql);
    }

    #[test]
    fn empty_lists_match_nothing_and_size_is_bounded() {
        for f in [
            Filter::Cond(Cond::Ids(vec![])),
            Filter::Cond(Cond::InGroups(vec![])),
            Filter::Or(vec![]),
        ] {
            assert_eq!(compile(&f, 1, true).unwrap().sql, "1 = 0");
        }
        assert_eq!(compile(&Filter::And(vec![]), 1, true).unwrap().sql, "1 = 1");
        let big = Filter::Cond(Cond::Attr {
            scope: Scope::Tag,
            name: "k".into(),
            test: Test::TextIn(vec!["v".into(); MAX_PARAMS]),
        });
        assert!(compile(&big, 1, true).is_err());
    }
}
