//! Grants: what a plugin's manifest asks for in `[capabilities]`.
//!
//! Each capability interface is linked for a plugin only when granted, and the grants a
//! manifest may ask for are bounded by the operator's [`super::policy::Policy`].

use std::collections::BTreeSet;
use std::fmt;

use anyhow::ensure;
use serde::de::{self, MapAccess, Visitor};
use serde::{Deserialize, Deserializer, Serialize};

/// Longest data set name (PostgreSQL identifiers are at most 63 bytes, and role names
/// carry a prefix).
const MAX_DATA_SET_LEN: usize = 32;

#[derive(Debug, Clone, Default, Deserialize, Serialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct Grants {
    /// The data set the plugin's SQL runs in: `sql = true` for one named after the plugin,
    /// `sql = { data_set = "accounts" }` to name it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sql: Option<SqlGrant>,
    #[serde(default)]
    pub kv: bool,
    #[serde(default)]
    pub tokens: BTreeSet<TokenOperation>,
    #[serde(default)]
    pub passwords: bool,
    /// Authorities (`host` or `host:port`) a standard `wasi:http` component may send
    /// requests to; none by default (see `outbound_http.rs`).
    #[serde(default, skip_serializing_if = "BTreeSet::is_empty")]
    pub outbound_http: BTreeSet<String>,
}

#[derive(Debug, Clone, Copy, Deserialize, Serialize, PartialEq, Eq, PartialOrd, Ord)]
#[serde(rename_all = "lowercase")]
pub enum TokenOperation {
    Issue,
    Verify,
    Revoke,
}

/// The `sql` grant. `data_set` is `None` only between parsing `sql = true` and
/// [`Grants::resolve`], which names the plugin's own data set.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct SqlGrant {
    pub data_set: Option<String>,
}

impl Grants {
    /// The data set the plugin's SQL runs in, once resolved.
    pub fn data_set(&self) -> Option<&str> {
        self.sql.as_ref().and_then(|s| s.data_set.as_deref())
    }

    /// Names the data set of `sql = true` after `plugin` and checks the name.
    pub fn resolve(&mut self, plugin: &str) -> anyhow::Result<()> {
        if let Some(sql) = &mut self.sql {
            let data_set = sql.data_set.get_or_insert_with(|| plugin.to_owned());
            check_data_set_name(data_set)?;
        }
        self.outbound_http = super::outbound_http::normalize_authorities(&self.outbound_http)
            .map_err(|err| anyhow::anyhow!("outbound_http: {err}"))?;
        Ok(())
    }
}

/// A data set name: it becomes a PostgreSQL schema and role suffix, and a SQLite file name.
pub fn check_data_set_name(name: &str) -> anyhow::Result<()> {
    ensure!(
        !name.is_empty()
            && name.len() <= MAX_DATA_SET_LEN
            && name.starts_with(|c: char| c.is_ascii_lowercase())
            && name
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_' || c == '-'),
        "data set `{name}`: 1-{MAX_DATA_SET_LEN} characters of a-z, 0-9, `-` and `_`, starting \
         with a letter"
    );
    ensure!(
        !(name == "public" || name == "information_schema" || name.starts_with("pg_")),
        "data set `{name}`: the name is reserved by the database"
    );
    Ok(())
}

impl<'de> Deserialize<'de> for SqlGrant {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(deny_unknown_fields)]
        struct Named {
            data_set: String,
        }

        struct SqlVisitor;
        impl<'de> Visitor<'de> for SqlVisitor {
            type Value = SqlGrant;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("`true` or a table like `{ data_set = \"accounts\" }`")
            }

            fn visit_bool<E: de::Error>(self, value: bool) -> Result<SqlGrant, E> {
                if value {
                    Ok(SqlGrant { data_set: None })
                } else {
                    Err(E::custom("leave `sql` out instead of setting it to false"))
                }
            }

            fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<SqlGrant, A::Error> {
                let named = Named::deserialize(de::value::MapAccessDeserializer::new(map))?;
                Ok(SqlGrant {
                    data_set: Some(named.data_set),
                })
            }
        }
        deserializer.deserialize_any(SqlVisitor)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> anyhow::Result<Grants> {
        Ok(toml::from_str(text)?)
    }

    #[test]
    fn sql_true_is_the_plugins_own_data_set() -> anyhow::Result<()> {
        let mut grants = parse("sql = true")?;
        grants.resolve("notes")?;
        assert_eq!(grants.data_set(), Some("notes"));
        let mut grants = parse("sql = { data_set = \"accounts\" }")?;
        grants.resolve("auth")?;
        assert_eq!(grants.data_set(), Some("accounts"));
        Ok(())
    }

    #[test]
    fn bad_sql_grants_are_named() {
        for (text, expected) in [
            ("sql = { data_set = \"x\", schema = \"y\" }", "schema"),
            ("sql = 1", "data_set"),
            ("sql = false", "leave `sql` out"),
        ] {
            let err = parse(text).expect_err(text);
            assert!(format!("{err:#}").contains(expected), "{text}: {err:#}");
        }
        for name in [
            "Accounts",
            "pg_catalog",
            "public",
            "1x",
            "a;b",
            &"x".repeat(33),
        ] {
            let mut grants = Grants {
                sql: Some(SqlGrant {
                    data_set: Some(name.to_owned()),
                }),
                ..Grants::default()
            };
            assert!(grants.resolve("p").is_err(), "{name}");
        }
    }
}
