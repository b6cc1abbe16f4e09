//! A plugin's data is its own: each plugin's SQL runs in its data set (a PostgreSQL schema
//! with its own roles, a SQLite file with an authorizer), what a hostile plugin tries is
//! refused or rolled back, migrations apply once and refuse bad versions, and the
//! operator's policy bounds what a manifest may ask for. On both backends.

use std::time::{Duration, Instant};

use plinth_tests::{Backend, PluginsDir, TestHost, json_body, on_both_backends};
use reqwest::Method;
use serde_json::Value;

/// A host serving auth, users and the hostile `sqlprobe`, with the first superuser.
async fn probe_host(backend: &Backend) -> (PluginsDir, TestHost) {
    let plugins = PluginsDir::with(&["auth", "users", "sqlprobe"]);
    let host = TestHost::builder()
        .backend(backend)
        .with_root()
        .start(&plugins);
    (plugins, host)
}

/// Sends `statement` to `/sqlprobe/{mode}`; the status and the probe's JSON answer.
async fn probe(host: &TestHost, mode: &str, statement: &str) -> (u16, Value) {
    let response = host
        .client
        .request(Method::POST, host.url(&format!("/sqlprobe/{mode}")))
        .header("content-type", "text/plain")
        .body(statement.to_owned())
        .send()
        .await
        .expect("calling sqlprobe");
    let status = response.status().as_u16();
    (status, json_body(response).await)
}

async fn count_notes(host: &TestHost, body: &str) -> u64 {
    let (status, answer) = probe(
        host,
        "query",
        &format!("SELECT id FROM notes WHERE body = '{body}'"),
    )
    .await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer["ok"], true, "{answer}");
    answer["result"].as_u64().unwrap_or(u64::MAX)
}

/// The real users plugin still answers correctly, from its own table.
async fn accounts_are_intact(host: &TestHost) {
    let root = host.root_tokens().await;
    let me = host.get_as("/api/v1/users/me", &root.access).await;
    me.expect(200, None);
    assert_eq!(me.body["username"], "root");
    assert_eq!(me.body["is_superuser"], true);
    host.register("after@example.com", "after", "after-password")
        .await
        .expect(201, None);
    let list = host.get_as("/api/v1/users?limit=100", &root.access).await;
    list.expect(200, None);
    assert_eq!(list.body["total"], 2, "{}", list.body);
}

async fn hostile_statements_are_refused_and_accounts_stay_intact(backend: Backend) {
    let (_plugins, host) = probe_host(&backend).await;
    let (_, ok) = probe(&host, "execute", "INSERT INTO notes (body) VALUES ('mine')").await;
    assert_eq!(ok["ok"], true, "its own table works: {ok}");

    let mut attacks = vec![
        "SELECT * FROM users",
        "UPDATE users SET is_superuser = TRUE",
        "DELETE FROM users",
        "DROP TABLE notes",
        "CREATE TABLE mine (x INTEGER)",
        "CREATE TEMP TABLE users (id INTEGER, username TEXT)",
        "BEGIN",
        "COMMIT",
        "SELECT 1; DELETE FROM notes",
        "INSERT INTO _plinth_migrations (version, name, checksum, applied_by) VALUES (99, 'x', 'x', 'x')",
        "DELETE FROM _plinth_migrations",
        "SELECT * FROM _plinth_migrations",
    ];
    match backend {
        Backend::Sqlite => attacks.extend([
            "ATTACH DATABASE 'plinth.accounts.db' AS a",
            "VACUUM INTO 'stolen.db'",
            "PRAGMA writable_schema = 1",
            "SELECT load_extension('/tmp/evil')",
            "BEGIN IMMEDIATE",
        ]),
        Backend::Postgres { .. } => attacks.extend([
            "SELECT * FROM accounts.users",
            "UPDATE accounts.users SET is_superuser = TRUE",
            "SET ROLE postgres",
            "RESET ROLE",
            "SET search_path = accounts, public",
            "SELECT set_config('search_path', 'accounts', false)",
            "SELECT pg_read_file('/etc/passwd')",
            "SELECT * FROM dblink('dbname=postgres', 'SELECT 1') AS t(x int)",
            "CREATE EXTENSION dblink",
            "COPY notes TO PROGRAM 'id'",
            "SELECT pg_advisory_lock(1)",
            "CREATE SCHEMA evil",
        ]),
    }
    for attack in attacks {
        for mode in ["execute", "commit"] {
            let (status, answer) = probe(&host, mode, attack).await;
            assert_eq!(status, 200, "{mode} `{attack}`: {answer}");
            assert_eq!(
                answer["ok"], false,
                "{mode} `{attack}` was allowed: {answer}"
            );
        }
    }
    // The connection a refused temp table would have shadowed `users` on serves correctly.
    accounts_are_intact(&host).await;
    assert_eq!(count_notes(&host, "mine").await, 1);
    if let Some(tables) = backend.psql_query(
        "SELECT count(*) FROM pg_tables WHERE schemaname NOT IN ('pg_catalog', 'information_schema')",
    ) {
        // accounts.users + its migrations table, sqlprobe.notes + its migrations table.
        assert_eq!(tables, "4");
    }
}

async fn an_endless_query_is_cancelled_at_the_deadline(backend: Backend) {
    let (_plugins, host) = probe_host(&backend).await;
    let started = Instant::now();
    let (status, answer) = probe(
        &host,
        "query",
        "WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c) SELECT count(*) FROM c",
    )
    .await;
    let elapsed = started.elapsed();
    // The plugin's limit is 1 s: the whole call (504) or the statement (timed-out) ends.
    assert!(
        status == 504 || answer["error"] == "TimedOut",
        "{status} {answer}"
    );
    assert!(elapsed < Duration::from_secs(3), "{elapsed:?}");
    // The database is free again: writes go through at once.
    let started = Instant::now();
    let (_, ok) = probe(&host, "execute", "INSERT INTO notes (body) VALUES ('next')").await;
    assert_eq!(ok["ok"], true, "{ok}");
    assert!(started.elapsed() < Duration::from_secs(1));
    if backend.psql_query("SELECT 1").is_some() {
        // And no backend still runs the statement.
        std::thread::sleep(Duration::from_millis(500));
        let running = backend.psql_query(
            "SELECT count(*) FROM pg_stat_activity WHERE query LIKE 'WITH RECURSIVE%' \
             AND state = 'active'",
        );
        assert_eq!(running.as_deref(), Some("0"));
    }
    accounts_are_intact(&host).await;
}

async fn unfinished_transactions_roll_back_and_lock_no_writer(backend: Backend) {
    let (_plugins, host) = probe_host(&backend).await;
    let (_, committed) = probe(&host, "commit", "INSERT INTO notes (body) VALUES ('kept')").await;
    assert_eq!(committed["ok"], true, "{committed}");
    assert_eq!(count_notes(&host, "kept").await, 1);

    let (_, abandoned) = probe(&host, "abandon", "INSERT INTO notes (body) VALUES ('gone')").await;
    assert_eq!(abandoned["ok"], true, "{abandoned}");
    let (status, _) = probe(&host, "trap", "INSERT INTO notes (body) VALUES ('gone')").await;
    assert_eq!(status, 500);
    let (status, _) = probe(&host, "hold", "INSERT INTO notes (body) VALUES ('gone')").await;
    assert_eq!(status, 504);
    // No writer waits on a transaction its holder left behind.
    let started = Instant::now();
    let (_, next) = probe(&host, "commit", "INSERT INTO notes (body) VALUES ('next')").await;
    assert_eq!(next["ok"], true, "{next}");
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(count_notes(&host, "gone").await, 0);
    assert_eq!(count_notes(&host, "next").await, 1);
    accounts_are_intact(&host).await;
}

async fn migrations_apply_at_runtime_and_bad_ones_are_refused(backend: Backend) {
    let plugins = PluginsDir::with(&["auth", "users"]);
    let host = TestHost::builder()
        .backend(&backend)
        .with_root()
        .start(&plugins);
    // A plugin with migrations added while the host runs serves from its new table.
    let dir = plugins.deploy("sqlprobe");
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let response = host
            .client
            .post(host.url("/sqlprobe/execute"))
            .body("INSERT INTO notes (body) VALUES ('v1')")
            .send()
            .await
            .expect("calling sqlprobe");
        if response.status() == 200 {
            assert_eq!(json_body(response).await["ok"], true);
            break;
        }
        assert!(Instant::now() < deadline, "sqlprobe never came up");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let root = host.root_tokens().await;
    let dialect = match backend {
        Backend::Sqlite => "sqlite",
        Backend::Postgres { .. } => "postgres",
    };
    let migrations = dir.join("migrations").join(dialect);
    let first = migrations.join("0001_notes.sql");
    let original = std::fs::read_to_string(&first).expect("reading the migration");

    // An applied migration edited: refused, the running version keeps serving.
    std::fs::write(&first, format!("{original}\n-- edited\n")).expect("editing");
    let reply = host.admin_reload("sqlprobe", &root.access).await;
    reply.expect(422, Some("VALIDATION_ERROR"));
    let reason = reply.body.to_string();
    assert!(
        reason.contains("0001_notes.sql was changed after it was applied"),
        "{reason}"
    );
    // Files are named relative to PLUGINS_DIR, never by where the host keeps them.
    assert!(reason.contains("sqlprobe/plugin.toml"), "{reason}");
    assert!(
        !reason.contains(&plugins.path().display().to_string()),
        "{reason}"
    );
    assert_eq!(count_notes(&host, "v1").await, 1);

    // A failing new migration: refused, nothing of it kept, the old version serves.
    std::fs::write(&first, &original).expect("restoring");
    std::fs::write(
        migrations.join("0002_more.sql"),
        "CREATE TABLE more (x INTEGER);\nCREATE TABLE broken (;\n",
    )
    .expect("writing");
    let reply = host.admin_reload("sqlprobe", &root.access).await;
    reply.expect(422, Some("VALIDATION_ERROR"));
    assert!(
        reply.body.to_string().contains("0002_more.sql failed"),
        "{}",
        reply.body
    );
    let (_, more) = probe(&host, "query", "SELECT * FROM more").await;
    assert_eq!(more["ok"], false, "0002 was half applied: {more}");
    assert_eq!(count_notes(&host, "v1").await, 1);

    // Fixed: it applies, and the new version serves.
    std::fs::write(
        migrations.join("0002_more.sql"),
        "CREATE TABLE more (x INTEGER);\n",
    )
    .expect("writing");
    host.admin_reload("sqlprobe", &root.access)
        .await
        .expect(200, None);
    let (_, more) = probe(&host, "execute", "INSERT INTO more (x) VALUES (1)").await;
    assert_eq!(more["ok"], true, "{more}");
}

on_both_backends!(
    hostile_statements_are_refused_and_accounts_stay_intact,
    an_endless_query_is_cancelled_at_the_deadline,
    unfinished_transactions_roll_back_and_lock_no_writer,
    migrations_apply_at_runtime_and_bad_ones_are_refused,
);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_hosts_on_one_postgres_apply_each_migration_once() {
    let backend = Backend::postgres();
    let plugins = PluginsDir::with(&["auth", "users", "sqlprobe"]);
    let start = || {
        TestHost::builder()
            .backend(&backend)
            .env(
                "DATABASE_ROLE_SECRET",
                "a-secret-shared-by-every-host-0123456789",
            )
            .env("WATCH_PLUGINS", "false")
    };
    // Started together: both provision and migrate at the same moment.
    let (a, b) = std::thread::scope(|scope| {
        let a = scope.spawn(|| start().start(&plugins));
        let b = scope.spawn(|| start().start(&plugins));
        (a.join().expect("host a"), b.join().expect("host b"))
    });
    for host in [&a, &b] {
        let (_, ok) = probe(host, "execute", "INSERT INTO notes (body) VALUES ('x')").await;
        assert_eq!(ok["ok"], true, "{ok}");
    }
    for schema in ["accounts", "sqlprobe"] {
        let applied =
            backend.psql_query(&format!("SELECT count(*) FROM {schema}._plinth_migrations"));
        assert_eq!(applied.as_deref(), Some("1"), "{schema}");
    }
    // Serving connections run as the data set's role, which is no superuser and can
    // create no role.
    let roles = backend.psql_query(
        "SELECT string_agg(rolname || ':' || rolsuper || ':' || rolcreaterole, ',' ORDER BY \
         rolname) FROM pg_roles WHERE rolname IN (SELECT usename FROM pg_stat_activity WHERE \
         datname = current_database() AND usename LIKE '%sqlprobe')",
    );
    let roles = roles.unwrap_or_default();
    assert!(roles.ends_with("_sqlprobe:false:false"), "{roles}");
}

#[tokio::test]
async fn manifests_asking_beyond_the_policy_are_refused() {
    for (plugin, edit, expected) in [
        (
            "sqlprobe",
            ("sql = true", "sql = { data_set = \"accounts\" }"),
            "data set `accounts`",
        ),
        (
            "kvprobe",
            ("kv = true", "kv = true\ntokens = [\"issue\"]"),
            "`tokens` issue",
        ),
        (
            "kvprobe",
            ("kv = true", "kv = true\npasswords = true"),
            "`passwords`",
        ),
    ] {
        let plugins = PluginsDir::new();
        plugins.deploy_as(plugin, plugin, |m| m.replace(edit.0, edit.1));
        let (status, output) = TestHost::builder().start_expecting_failure(&plugins);
        assert!(!status.success());
        assert!(output.contains(expected), "{plugin}: {output}");
        assert!(output.contains("policy"), "{output}");
    }

    // An operator's policy file decides instead of the development default.
    let policy = tempfile::NamedTempFile::new().expect("policy file");
    std::fs::write(
        policy.path(),
        "[plugins.kvprobe]\nkv = true\ntokens = [\"issue\"]\n",
    )
    .expect("writing the policy");
    let plugins = PluginsDir::new();
    plugins.deploy_as("kvprobe", "kvprobe", |m| {
        m.replace("kv = true", "kv = true\ntokens = [\"issue\"]")
    });
    let host = TestHost::builder()
        .env("PLUGINS_POLICY", policy.path().display().to_string())
        .start(&plugins);
    assert_eq!(host.get("/kvprobe/x").await.status(), 404);
}
