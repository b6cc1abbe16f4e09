//! A lexical check of plugin statements before they reach the database.
//!
//! It is the outer of two walls. The inner one is the database's own: on PostgreSQL the
//! data set's role has no rights outside its schema and no DDL; on SQLite an authorizer
//! refuses the same (see `sqlite.rs`). This check adds what privileges cannot express:
//! a serving statement is exactly one statement of plain data manipulation (no
//! transaction control, no session settings), and names none of the functions that
//! change session state or reach outside the database. Refusals are clear `invalid`
//! errors naming the reason, so a plugin author learns at once what is not allowed.
//!
//! Migrations get a looser check ([`check_migration`]): DDL is their purpose, but
//! transaction control and session changes are still refused (the host wraps them in its
//! own transaction).

use std::collections::HashSet;
use std::sync::{LazyLock, RwLock};

/// Leading keywords a serving statement may start with.
const SERVING_KEYWORDS: [&str; 7] = [
    "select", "insert", "update", "delete", "with", "values", "replace",
];

/// Leading keywords no plugin statement may start with, migrations included.
const CONTROL_KEYWORDS: [&str; 27] = [
    "begin",
    "start",
    "commit",
    "end",
    "rollback",
    "abort",
    "savepoint",
    "release",
    "set",
    "reset",
    "discard",
    "prepare",
    "execute",
    "deallocate",
    "listen",
    "unlisten",
    "notify",
    "load",
    "copy",
    "do",
    "declare",
    "attach",
    "detach",
    "pragma",
    "vacuum",
    "checkpoint",
    "call",
];

/// Functions that change session state, take session-level locks, or reach files,
/// other servers or other sessions. Matched as identifiers anywhere in the statement.
const DENIED_FUNCTIONS: [&str; 26] = [
    "set_config",
    "pg_advisory_lock",
    "pg_advisory_lock_shared",
    "pg_try_advisory_lock",
    "pg_try_advisory_lock_shared",
    "pg_advisory_unlock",
    "pg_advisory_unlock_shared",
    "pg_advisory_unlock_all",
    "pg_read_file",
    "pg_read_binary_file",
    "pg_ls_dir",
    "pg_stat_file",
    "lo_import",
    "lo_export",
    "lo_from_bytea",
    "pg_terminate_backend",
    "pg_cancel_backend",
    "pg_reload_conf",
    "pg_notify",
    "dblink",
    "dblink_exec",
    "dblink_connect",
    "query_to_xml",
    "load_extension",
    "readfile",
    "writefile",
];

/// Why a statement was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    #[error("the statement is empty")]
    Empty,
    #[error("one statement per call: `;` may only end the statement")]
    Several,
    #[error("an unterminated quote or comment")]
    Unterminated,
    #[error(
        "`{0}` statements are not allowed here: plugins run data statements (SELECT, INSERT, \
         UPDATE, DELETE, WITH); transactions go through `sql.begin`, schema changes through \
         the plugin's migrations"
    )]
    Keyword(String),
    #[error("`{0}` is not available to plugins")]
    Function(String),
}

/// Statements that passed [`check_serving`], remembered at most: plugins send the same
/// few statements over and over (their SQL is constants), and checking one again was
/// ~2.5% of `GET /api/v1/users/me`'s CPU. Past the bound (or the length), statements are
/// checked every time, so a plugin building unique SQL cannot grow the set.
const REMEMBERED_STATEMENTS: usize = 4_096;
const REMEMBERED_STATEMENT_BYTES: usize = 4_096;
static PASSED: LazyLock<RwLock<HashSet<Box<str>>>> = LazyLock::new(Default::default);

/// Checks a statement a plugin runs while serving. The verdict depends on the text only,
/// so a statement that passed once passes without being checked again.
pub fn check_serving(statement: &str) -> Result<(), Refusal> {
    if PASSED.read().is_ok_and(|set| set.contains(statement)) {
        return Ok(());
    }
    check_serving_text(statement)?;
    if statement.len() <= REMEMBERED_STATEMENT_BYTES
        && let Ok(mut set) = PASSED.write()
        && set.len() < REMEMBERED_STATEMENTS
    {
        set.insert(statement.into());
    }
    Ok(())
}

fn check_serving_text(statement: &str) -> Result<(), Refusal> {
    let statements = split(statement)?;
    let [only] = statements.as_slice() else {
        return Err(if statements.is_empty() {
            Refusal::Empty
        } else {
            Refusal::Several
        });
    };
    let first = only.first().ok_or(Refusal::Empty)?;
    if !SERVING_KEYWORDS.contains(&first.as_str()) {
        return Err(Refusal::Keyword(first.to_uppercase()));
    }
    check_identifiers(only)
}

/// Checks a migration file: any number of statements, none of them transaction control,
/// session changes, or denied functions.
pub fn check_migration(script: &str) -> Result<(), Refusal> {
    for words in split(script)? {
        if let Some(first) = words.first()
            && CONTROL_KEYWORDS.contains(&first.as_str())
        {
            return Err(Refusal::Keyword(first.to_uppercase()));
        }
        check_identifiers(&words)?;
    }
    Ok(())
}

fn check_identifiers(words: &[String]) -> Result<(), Refusal> {
    // `schema.function` and `"function"` reach the same function: compare the last part.
    match words
        .iter()
        .find(|w| DENIED_FUNCTIONS.contains(&w.as_str()))
    {
        Some(denied) => Err(Refusal::Function(denied.clone())),
        None => Ok(()),
    }
}

/// Splits SQL text into statements, each as its lower-cased words (identifiers and
/// keywords, quoted identifiers unquoted). String literals, comments and numbers are
/// skipped; empty statements (`;;`) are dropped.
fn split(text: &str) -> Result<Vec<Vec<String>>, Refusal> {
    let chars: Vec<char> = text.chars().collect();
    let mut statements = Vec::new();
    let mut words: Vec<String> = Vec::new();
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        match c {
            ';' => {
                if !words.is_empty() {
                    statements.push(std::mem::take(&mut words));
                }
                i += 1;
            }
            '-' if chars.get(i + 1) == Some(&'-') => {
                while i < chars.len() && chars[i] != '\n' {
                    i += 1;
                }
            }
            '/' if chars.get(i + 1) == Some(&'*') => {
                // PostgreSQL nests block comments; SQLite does not, but a nested opener
                // inside a SQLite comment is just text, so counting is safe for both.
                let mut depth = 0usize;
                loop {
                    match (chars.get(i), chars.get(i + 1)) {
                        (Some('/'), Some('*')) => {
                            depth += 1;
                            i += 2;
                        }
                        (Some('*'), Some('/')) => {
                            depth -= 1;
                            i += 2;
                            if depth == 0 {
                                break;
                            }
                        }
                        (Some(_), _) => i += 1,
                        (None, _) => return Err(Refusal::Unterminated),
                    }
                }
            }
            '\'' => i = skip_quoted(&chars, i, '\'', backslash_escapes(&chars, i))?,
            '"' | '`' => {
                let end = skip_quoted(&chars, i, c, false)?;
                let inner: String = chars[i + 1..end - 1].iter().collect();
                let doubled = format!("{c}{c}");
                words.push(inner.replace(&doubled, &c.to_string()).to_lowercase());
                i = end;
            }
            '[' => {
                // SQLite's bracketed identifier (in PostgreSQL `[` is an array subscript,
                // whose contents are expressions: treat them as identifiers either way).
                let end = chars[i..]
                    .iter()
                    .position(|&ch| ch == ']')
                    .map(|p| i + p + 1)
                    .unwrap_or(i + 1);
                let inner: String = chars[i + 1..end.saturating_sub(1).max(i + 1)]
                    .iter()
                    .collect();
                words.extend(split_words(&inner));
                i = end;
            }
            '$' => {
                // PostgreSQL dollar quoting: $$...$$ or $tag$...$tag$. `$1` is a parameter.
                let tag_end = chars[i + 1..]
                    .iter()
                    .position(|&ch| !(ch.is_alphanumeric() || ch == '_'))
                    .map(|p| i + 1 + p);
                match tag_end {
                    Some(end)
                        if chars[end] == '$'
                            && !chars.get(i + 1).is_some_and(|ch| ch.is_ascii_digit()) =>
                    {
                        let tag: String = chars[i..=end].iter().collect();
                        let rest: String = chars[end + 1..].iter().collect();
                        let close = rest.find(&tag).ok_or(Refusal::Unterminated)?;
                        i = end + 1 + rest[..close].chars().count() + tag.chars().count();
                    }
                    _ => i += 1,
                }
            }
            c if c.is_alphabetic() || c == '_' => {
                let start = i;
                while i < chars.len()
                    && (chars[i].is_alphanumeric() || chars[i] == '_' || chars[i] == '$')
                {
                    i += 1;
                }
                words.push(chars[start..i].iter().collect::<String>().to_lowercase());
            }
            _ => i += 1,
        }
    }
    if !words.is_empty() {
        statements.push(words);
    }
    Ok(statements)
}

/// PostgreSQL's `E'...'` strings use backslash escapes.
fn backslash_escapes(chars: &[char], quote: usize) -> bool {
    quote > 0
        && matches!(chars[quote - 1], 'e' | 'E')
        && (quote < 2 || !(chars[quote - 2].is_alphanumeric() || chars[quote - 2] == '_'))
}

/// The index after the closing `quote` of the quoted text starting at `start`; a doubled
/// quote is an escaped one.
fn skip_quoted(
    chars: &[char],
    start: usize,
    quote: char,
    backslash: bool,
) -> Result<usize, Refusal> {
    let mut i = start + 1;
    loop {
        match chars.get(i) {
            None => return Err(Refusal::Unterminated),
            Some('\\') if backslash => i += 2,
            Some(&c) if c == quote => {
                if chars.get(i + 1) == Some(&quote) {
                    i += 2;
                } else {
                    return Ok(i + 1);
                }
            }
            Some(_) => i += 1,
        }
    }
}

fn split_words(text: &str) -> Vec<String> {
    text.split(|c: char| !(c.is_alphanumeric() || c == '_'))
        .filter(|w| !w.is_empty())
        .map(str::to_lowercase)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn data_statements_pass() {
        for ok in [
            "SELECT id FROM users WHERE id = $1",
            "  -- a comment\n select 1;",
            "/* lead */ WITH x AS (SELECT 1) SELECT * FROM x",
            "INSERT INTO notes (body) VALUES ('BEGIN; set_config') RETURNING id",
            "UPDATE t SET a = 'it''s' WHERE b = E'\\'; COMMIT'",
            "DELETE FROM t WHERE s = $tag$; DROP TABLE x$tag$",
            "SELECT \"set\" FROM t",
            "select x from t where y = $1 and z = $2;  ",
        ] {
            assert_eq!(check_serving(ok), Ok(()), "{ok}");
        }
    }

    #[test]
    fn verdicts_hold_when_asked_again() {
        let ok = "SELECT id FROM remembered WHERE id = $1";
        let bad = "SELECT 1; DROP TABLE remembered";
        let remembered = |statement: &str| PASSED.read().is_ok_and(|set| set.contains(statement));
        for _ in 0..3 {
            assert_eq!(check_serving(ok), Ok(()));
            assert_eq!(check_serving(bad), Err(Refusal::Several));
        }
        assert!(remembered(ok), "a statement that passed is remembered");
        assert!(!remembered(bad), "a refusal is never remembered");
        let long = format!("SELECT '{}'", "x".repeat(REMEMBERED_STATEMENT_BYTES));
        assert_eq!(check_serving(&long), Ok(()));
        assert!(
            !remembered(&long),
            "statements over the length are checked every time"
        );
        assert_eq!(
            check_serving(&format!("{long}; BEGIN")),
            Err(Refusal::Several)
        );
    }

    #[test]
    fn control_and_ddl_are_refused() {
        for (bad, word) in [
            ("BEGIN IMMEDIATE", "BEGIN"),
            ("  /* x */ commit", "COMMIT"),
            ("SET ROLE postgres", "SET"),
            ("RESET ROLE", "RESET"),
            ("set search_path = public", "SET"),
            ("ATTACH DATABASE '/tmp/x' AS x", "ATTACH"),
            ("VACUUM INTO '/tmp/copy.db'", "VACUUM"),
            ("PRAGMA writable_schema = 1", "PRAGMA"),
            ("CREATE TEMP TABLE users (id int)", "CREATE"),
            ("DROP TABLE users", "DROP"),
            ("COPY users TO PROGRAM 'id'", "COPY"),
            ("DO $$ BEGIN PERFORM 1; END $$", "DO"),
            ("CREATE EXTENSION dblink", "CREATE"),
        ] {
            assert_eq!(
                check_serving(bad),
                Err(Refusal::Keyword(word.into())),
                "{bad}"
            );
        }
    }

    #[test]
    fn several_statements_are_refused() {
        assert_eq!(check_serving("SELECT 1; BEGIN"), Err(Refusal::Several));
        assert_eq!(check_serving("SELECT 1;; SELECT 2"), Err(Refusal::Several));
        assert_eq!(check_serving(" ; "), Err(Refusal::Empty));
        assert_eq!(check_serving("SELECT 'x"), Err(Refusal::Unterminated));
        assert_eq!(check_serving("SELECT 1 /* x"), Err(Refusal::Unterminated));
    }

    #[test]
    fn session_and_outside_functions_are_refused_however_spelled() {
        for bad in [
            "SELECT set_config('search_path', 'public', false)",
            "SELECT pg_catalog.SET_CONFIG('role', 'none', false)",
            "SELECT \"set_config\"('statement_timeout', '0', false)",
            "SELECT pg_advisory_lock(1)",
            "SELECT pg_read_file('/etc/passwd')",
            "SELECT * FROM dblink('host=x', 'select 1') AS t(a int)",
            "SELECT load_extension('/tmp/evil')",
            "SELECT x[set_config] FROM t",
        ] {
            assert!(
                matches!(check_serving(bad), Err(Refusal::Function(_))),
                "{bad}"
            );
        }
        // Transaction-scoped advisory locks end with the statement's transaction.
        assert_eq!(check_serving("SELECT pg_advisory_xact_lock(1)"), Ok(()));
    }

    #[test]
    fn migrations_may_change_schema_but_not_control_transactions() {
        let ok = "CREATE TABLE notes (id BIGSERIAL PRIMARY KEY, body TEXT);\n\
                  CREATE INDEX notes_body ON notes (body);\n\
                  CREATE FUNCTION f() RETURNS int AS $$ BEGIN RETURN 1; END $$ LANGUAGE plpgsql;";
        assert_eq!(check_migration(ok), Ok(()));
        assert_eq!(
            check_migration("CREATE TABLE a (x int); COMMIT; DROP TABLE b"),
            Err(Refusal::Keyword("COMMIT".into()))
        );
        assert_eq!(
            check_migration("ATTACH 'other.db' AS o"),
            Err(Refusal::Keyword("ATTACH".into()))
        );
        assert_eq!(
            check_migration("SET ROLE postgres"),
            Err(Refusal::Keyword("SET".into()))
        );
    }
}
