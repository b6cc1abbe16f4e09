//! Plugin migrations: ordered SQL files a plugin ships for its data set.
//!
//! A plugin directory may hold `migrations/sqlite/*.sql` and `migrations/postgres/*.sql`,
//! named `<version>_<name>.sql` (`0001_users.sql`). Before a version of the plugin serves,
//! the host applies those not yet recorded in the data set's `_plinth_migrations` table,
//! each with its SHA-256, all in one transaction. A version is refused, and the serving
//! one stays, when a migration fails, when one already applied was edited since, or when
//! a new one is numbered below one already applied. Plugins sharing a data set may ship
//! the same files; each applies once.

use std::path::Path;

use anyhow::{Context, bail};
use sha2::{Digest, Sha256};

use super::guard;

/// Where the host records applied migrations, inside each data set. Plugins can neither
/// read nor write it.
pub const MIGRATIONS_TABLE: &str = "_plinth_migrations";

/// One migration file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Migration {
    pub version: i64,
    pub name: String,
    /// The file, relative to the plugin directory (for messages).
    pub file: String,
    pub sql: String,
    /// SHA-256 of the file's bytes, hex.
    pub checksum: String,
}

impl Migration {
    /// The error refusing the version, with the database's `reason`.
    pub fn failed(&self, reason: &str) -> anyhow::Error {
        anyhow::anyhow!("migration {} failed: {reason}", self.file)
    }
}

/// A row of `_plinth_migrations`.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct AppliedMigration {
    pub version: i64,
    pub checksum: String,
}

/// Reads the plugin's migrations for `dialect` (`sqlite` or `postgres`), ordered by
/// version. No directory means no migrations.
pub fn read(plugin_dir: &Path, dialect: &str) -> anyhow::Result<Vec<Migration>> {
    let dir = plugin_dir.join("migrations").join(dialect);
    if !dir.is_dir() {
        return Ok(Vec::new());
    }
    let mut migrations = Vec::new();
    for entry in
        std::fs::read_dir(&dir).with_context(|| format!("cannot read migrations/{dialect}"))?
    {
        let entry = entry?;
        let file_name = entry.file_name().to_string_lossy().into_owned();
        let file = format!("migrations/{dialect}/{file_name}");
        if !entry.path().is_file() || file_name.starts_with('.') {
            continue;
        }
        let Some(stem) = file_name.strip_suffix(".sql") else {
            bail!("{file}: migrations are `.sql` files");
        };
        let (number, name) = stem.split_once('_').unwrap_or((stem, ""));
        let version: i64 = number.parse().ok().filter(|v| *v > 0).with_context(|| {
            format!(
                "{file}: the name must start with a positive version number, like `0001_users.sql`"
            )
        })?;
        let bytes = std::fs::read(entry.path()).with_context(|| format!("{file}: cannot read"))?;
        let sql = String::from_utf8(bytes.clone()).with_context(|| format!("{file}: not UTF-8"))?;
        guard::check_migration(&sql).with_context(|| format!("{file}: refused"))?;
        if let Some(twin) = migrations
            .iter()
            .find(|m: &&Migration| m.version == version)
        {
            bail!("{file} and {} have the same version {version}", twin.file);
        }
        migrations.push(Migration {
            version,
            name: name.to_owned(),
            file,
            sql,
            checksum: super::hex(&Sha256::digest(&bytes)),
        });
    }
    migrations.sort_by_key(|m| m.version);
    Ok(migrations)
}

/// Which of `migrations` to apply, given what the data set has `applied`; an edited or
/// out-of-order migration refuses the whole version.
pub fn plan<'m>(
    migrations: &'m [Migration],
    applied: &[AppliedMigration],
) -> anyhow::Result<Vec<&'m Migration>> {
    let newest_applied = applied.iter().map(|a| a.version).max().unwrap_or(0);
    let mut pending = Vec::new();
    for migration in migrations {
        match applied.iter().find(|a| a.version == migration.version) {
            Some(done) if done.checksum == migration.checksum => {}
            Some(_) => bail!(
                "{} was changed after it was applied (its checksum differs from the one \
                 recorded); ship a new migration instead of editing an applied one",
                migration.file
            ),
            None if migration.version < newest_applied => bail!(
                "{} is numbered below migration {newest_applied}, which is already applied; \
                 give it a higher number",
                migration.file
            ),
            None => pending.push(migration),
        }
    }
    Ok(pending)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn migration(version: i64, sql: &str) -> Migration {
        Migration {
            version,
            name: "m".into(),
            file: format!("migrations/sqlite/{version:04}_m.sql"),
            sql: sql.into(),
            checksum: sql.len().to_string(),
        }
    }

    fn applied(version: i64, checksum: &str) -> AppliedMigration {
        AppliedMigration {
            version,
            checksum: checksum.into(),
        }
    }

    #[test]
    fn only_unapplied_migrations_run_and_edits_are_refused() -> anyhow::Result<()> {
        let files = [migration(1, "a"), migration(2, "bb")];
        assert_eq!(plan(&files, &[])?.len(), 2);
        assert_eq!(plan(&files, &[applied(1, "1")])?, vec![&files[1]]);
        assert!(plan(&files, &[applied(1, "1"), applied(2, "2")])?.is_empty());
        let edited = plan(&files, &[applied(1, "9")]).expect_err("edited");
        assert!(
            format!("{edited}").contains("0001_m.sql was changed"),
            "{edited}"
        );
        // Another plugin of the data set applied a newer one; ours is older and new.
        let late = plan(&files[..1], &[applied(3, "x")]).expect_err("out of order");
        assert!(format!("{late}").contains("below migration 3"), "{late}");
        Ok(())
    }

    #[test]
    fn files_are_read_in_version_order_and_checked() -> anyhow::Result<()> {
        let dir = tempfile::tempdir()?;
        let sqlite = dir.path().join("migrations/sqlite");
        std::fs::create_dir_all(&sqlite)?;
        std::fs::write(sqlite.join("0002_more.sql"), "CREATE TABLE b (x INTEGER);")?;
        std::fs::write(sqlite.join("0001_first.sql"), "CREATE TABLE a (x INTEGER);")?;
        let read_back = read(dir.path(), "sqlite")?;
        assert_eq!(
            read_back.iter().map(|m| m.version).collect::<Vec<_>>(),
            [1, 2]
        );
        assert!(read(dir.path(), "postgres")?.is_empty());

        std::fs::write(sqlite.join("0003_sneaky.sql"), "ATTACH 'x.db' AS x;")?;
        let err = read(dir.path(), "sqlite").expect_err("attach");
        assert!(format!("{err:#}").contains("0003_sneaky.sql"), "{err:#}");
        Ok(())
    }
}
