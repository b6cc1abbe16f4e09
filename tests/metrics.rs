//! Prometheus metrics on their own listener (`METRICS_ADDR`): what a scrape shows after
//! known traffic, that Prometheus's own tools accept it, that labels carry route templates
//! rather than raw paths, and that the admin API and the metrics count the same things.

use std::collections::BTreeMap;
use std::process::Stdio;

use plinth_tests::{PluginsDir, TestHost};
use tokio::io::AsyncWriteExt;

fn metrics_host() -> (PluginsDir, TestHost) {
    let plugins = PluginsDir::with(&["auth", "users", "hello", "trap"]);
    let host = TestHost::builder()
        .with_root()
        .env("METRICS_ADDR", "127.0.0.1:0")
        .start(&plugins);
    (plugins, host)
}

/// The value of the sample `name` whose labels are exactly `labels`, in any order.
fn sample(exposition: &str, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    let wanted: BTreeMap<&str, &str> = labels.iter().copied().collect();
    exposition.lines().find_map(|line| {
        let (series, value) = line.rsplit_once(' ')?;
        let (series_name, label_text) = match series.split_once('{') {
            Some((series_name, rest)) => (series_name, rest.strip_suffix('}')?),
            None => (series, ""),
        };
        if series_name != name {
            return None;
        }
        let found: BTreeMap<&str, &str> = label_text
            .split("\",")
            .filter(|pair| !pair.is_empty())
            .filter_map(|pair| {
                let (key, value) = pair.split_once("=\"")?;
                Some((key, value.trim_end_matches('"')))
            })
            .collect();
        (found == wanted).then(|| value.parse().ok()).flatten()
    })
}

/// `promtool check metrics` (Debian's `prometheus` package; `scripts/test.sh` installs it).
async fn promtool_check(exposition: &str) -> (bool, String) {
    let mut child = tokio::process::Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("promtool must be installed (scripts/test.sh installs Debian's prometheus)");
    let mut stdin = child.stdin.take().expect("promtool stdin");
    stdin
        .write_all(exposition.as_bytes())
        .await
        .expect("writing to promtool");
    drop(stdin);
    let output = child.wait_with_output().await.expect("promtool ran");
    let said = String::from_utf8_lossy(&output.stdout).into_owned()
        + &String::from_utf8_lossy(&output.stderr);
    (output.status.success(), said)
}

#[tokio::test]
async fn a_scrape_counts_requests_by_route_template_and_passes_promtool() {
    let (_plugins, host) = metrics_host();
    for path in ["/hello/ada", "/hello/grace", "/trap", "/nope", "/health"] {
        host.get(path).await;
    }

    let (content_type, exposition) = host.scrape().await;
    assert!(
        content_type.starts_with("text/plain; version=0.0.4"),
        "{content_type}"
    );
    let (clean, said) = promtool_check(&exposition).await;
    assert!(clean, "promtool check metrics:\n{said}\n{exposition}");

    let requests = |route: &str, status: &str, plugin: &str| {
        sample(
            &exposition,
            "http_server_request_duration_seconds_count",
            &[
                ("http_request_method", "GET"),
                ("http_route", route),
                ("http_response_status_code", status),
                ("plugin", plugin),
            ],
        )
    };
    assert_eq!(
        requests("/hello/{name}", "200", "hello"),
        Some(2.0),
        "{exposition}"
    );
    assert_eq!(requests("/trap", "500", "trap"), Some(1.0), "{exposition}");
    assert_eq!(requests("/health", "200", ""), Some(1.0), "{exposition}");
    // A path no route matched has no route label value, so clients cannot grow the series.
    assert_eq!(requests("", "404", ""), Some(1.0), "{exposition}");
    assert!(
        !exposition.contains("/hello/ada"),
        "raw paths never become labels"
    );

    let invocations = |plugin: &str, version: &str, outcome: &str| {
        sample(
            &exposition,
            "plinth_plugin_invocations_total",
            &[
                ("plugin", plugin),
                ("version", version),
                ("outcome", outcome),
            ],
        )
    };
    assert_eq!(
        invocations("hello", "1.0.0", "ok"),
        Some(2.0),
        "{exposition}"
    );
    assert_eq!(
        invocations("trap", "0.1.0", "trap"),
        Some(1.0),
        "{exposition}"
    );
    assert!(
        exposition
            .lines()
            .any(|l| l.starts_with("plinth_plugin_info{")
                && l.contains(r#"plugin="hello""#)
                && l.contains(r#"version="1.0.0""#)
                && l.ends_with(" 1")),
        "{exposition}"
    );
    assert!(
        exposition.contains("plinth_build_info{version="),
        "{exposition}"
    );
}

#[tokio::test]
async fn the_admin_api_and_the_metrics_count_the_same_calls() {
    let (_plugins, host) = metrics_host();
    for _ in 0..3 {
        host.get("/trap").await;
    }
    host.get("/trap/ok").await;
    let root = host.root_tokens().await;
    let trap = host.admin_plugin("trap", &root.access).await;
    let (_, exposition) = host.scrape().await;
    let metric = |outcome: &str| {
        sample(
            &exposition,
            "plinth_plugin_invocations_total",
            &[
                ("plugin", "trap"),
                ("version", "0.1.0"),
                ("outcome", outcome),
            ],
        )
    };
    assert_eq!(trap["counters"]["traps"], 3, "{trap}");
    assert_eq!(metric("trap"), Some(3.0));
    assert_eq!(trap["counters"]["requests"], 4, "{trap}");
    assert_eq!(metric("ok"), Some(1.0));
}

#[tokio::test]
async fn metrics_are_not_served_on_the_public_port() {
    let (_plugins, host) = metrics_host();
    assert_eq!(host.get("/metrics").await.status(), 404);
}

/// A real Prometheus (Debian's `prometheus` package) scrapes a running host every second
/// and answers a query about the traffic it saw, and every query of the Grafana dashboard
/// in deploy/ too.
#[tokio::test]
async fn a_real_prometheus_scrapes_the_host_and_answers_a_query() {
    let (_plugins, host) = metrics_host();
    for name in ["ada", "grace", "edsger", "barbara", "frances"] {
        assert_eq!(host.get(&format!("/hello/{name}")).await.status(), 200);
    }

    let dir = tempfile::tempdir().expect("temporary directory");
    let config = dir.path().join("prometheus.yml");
    std::fs::write(
        &config,
        format!(
            "global:\n  scrape_interval: 1s\nscrape_configs:\n  - job_name: plinth\n    \
             static_configs:\n      - targets: ['{}']\n",
            host.metrics_addr()
        ),
    )
    .expect("writing prometheus.yml");
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .expect("a free port")
        .port();
    let _prometheus = tokio::process::Command::new("prometheus")
        .arg(format!("--config.file={}", config.display()))
        .arg(format!(
            "--storage.tsdb.path={}",
            dir.path().join("data").display()
        ))
        .arg(format!("--web.listen-address=127.0.0.1:{port}"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("prometheus must be installed (scripts/test.sh installs Debian's prometheus)");

    let client = reqwest::Client::new();
    let query = |promql: &'static str| {
        let client = client.clone();
        async move {
            let answer: serde_json::Value = client
                .get(format!("http://127.0.0.1:{port}/api/v1/query"))
                .query(&[("query", promql)])
                .send()
                .await
                .ok()?
                .json()
                .await
                .ok()?;
            answer["data"]["result"][0]["value"][1]
                .as_str()
                .map(str::to_owned)
        }
    };
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    let seen = loop {
        let seen = query(
            r#"sum(http_server_request_duration_seconds_count{job="plinth",http_route="/hello/{name}",http_response_status_code="200"})"#,
        )
        .await;
        if seen.as_deref() == Some("5") || std::time::Instant::now() > deadline {
            break seen;
        }
        tokio::time::sleep(std::time::Duration::from_millis(250)).await;
    };
    assert_eq!(
        seen.as_deref(),
        Some("5"),
        "Prometheus saw the five requests"
    );
    assert_eq!(query(r#"up{job="plinth"}"#).await.as_deref(), Some("1"));

    // Every query of the Grafana dashboard kept in deploy/ is one this Prometheus accepts.
    let dashboard: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(
            std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("../deploy/grafana/dashboards/plinth.json"),
        )
        .expect("reading the dashboard"),
    )
    .expect("the dashboard is JSON");
    let exprs: Vec<String> = dashboard["panels"]
        .as_array()
        .into_iter()
        .flatten()
        .flat_map(|panel| panel["targets"].as_array().into_iter().flatten())
        .filter_map(|target| target["expr"].as_str())
        .map(|expr| expr.replace("$__rate_interval", "1m"))
        .collect();
    assert!(exprs.len() >= 8, "{dashboard}");
    for expr in exprs {
        let answer: serde_json::Value = client
            .get(format!("http://127.0.0.1:{port}/api/v1/query"))
            .query(&[("query", expr.as_str())])
            .send()
            .await
            .expect("querying Prometheus")
            .json()
            .await
            .expect("a JSON answer");
        assert_eq!(answer["status"], "success", "{expr}: {answer}");
    }
}

/// The Prometheus configuration docker-compose.yml mounts is one Prometheus accepts.
#[tokio::test]
async fn the_deployed_prometheus_configuration_is_valid() {
    let config = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/prometheus.yml");
    let output = tokio::process::Command::new("promtool")
        .arg("check")
        .arg("config")
        .arg(&config)
        .output()
        .await
        .expect("promtool must be installed (scripts/test.sh installs Debian's prometheus)");
    assert!(
        output.status.success(),
        "promtool check config {}:\n{}{}",
        config.display(),
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}

/// Rate-limit decisions, token verifications and plugin reloads are counted by result;
/// plugins' host calls are timed by interface and function.
#[tokio::test]
async fn decisions_verifications_and_reloads_are_counted_by_result() {
    let plugins = PluginsDir::with(&["auth", "users", "hello"]);
    let host = TestHost::builder()
        .with_root()
        .env("METRICS_ADDR", "127.0.0.1:0")
        .env("RATE_LIMIT_PER_MINUTE", "100")
        .start(&plugins);
    let root = host.root_tokens().await;
    host.get_as("/api/v1/users/me", &root.access)
        .await
        .expect(200, None);
    host.get_as("/api/v1/users/me", "not-a-token")
        .await
        .expect(401, None);
    host.admin_reload("hello", &root.access)
        .await
        .expect(200, None);

    let (_, exposition) = host.scrape().await;
    let count = |name: &str, labels: &[(&str, &str)]| sample(&exposition, name, labels);
    assert_eq!(
        count(
            "plinth_token_verifications_total",
            &[("kind", "access"), ("result", "invalid")]
        ),
        Some(1.0),
        "{exposition}"
    );
    // The root's two requests: `users/me` and the admin reload (login issues, not verifies).
    assert_eq!(
        count(
            "plinth_token_verifications_total",
            &[("kind", "access"), ("result", "valid")]
        ),
        Some(2.0),
        "{exposition}"
    );
    assert_eq!(
        count(
            "plinth_plugin_reloads_total",
            &[("plugin", "hello"), ("result", "swapped")]
        ),
        Some(1.0),
        "{exposition}"
    );
    // `users/me` read the user through the `sql` capability: its host calls are timed.
    let sql_calls: f64 = ["query", "query-read"]
        .iter()
        .filter_map(|function| {
            count(
                "plinth_host_call_duration_seconds_count",
                &[("interface", "sql"), ("function", function)],
            )
        })
        .sum();
    assert!(sql_calls >= 1.0, "{exposition}");
    // Its data set's pool: connections opened, all idle again between requests.
    let pool = |state: &str| {
        count(
            "plinth_db_pool_connections",
            &[
                ("data_set", "accounts"),
                ("pool", "serving"),
                ("state", state),
            ],
        )
    };
    assert!(pool("open").is_some_and(|open| open >= 1.0), "{exposition}");
    assert_eq!(pool("idle"), pool("open"), "{exposition}");
    // Every request so far was limited in the default class except the login (auth class,
    // whose limit is off here): the two `users/me`, the reload, and the scrape is not a request.
    assert_eq!(
        count(
            "plinth_rate_limit_decisions_total",
            &[("class", "default"), ("result", "allowed")]
        ),
        Some(3.0),
        "{exposition}"
    );
}

/// While a plugin at its concurrency limit holds one request and queues another, the
/// gauges say so; both return to zero afterwards.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn instances_in_use_and_queued_requests_are_gauged() {
    let plugins = PluginsDir::with(&["hello"]);
    plugins.deploy_as("spin", "spin", |m| {
        m.replace(
            "timeout_ms = 300",
            "timeout_ms = 5000\nmax_concurrency = 1\nmax_queued = 1\nqueue_timeout_ms = 3000",
        )
    });
    let host = std::sync::Arc::new(
        TestHost::builder()
            .env("METRICS_ADDR", "127.0.0.1:0")
            .env("PLUGIN_INSTANCES", "4")
            .start(&plugins),
    );
    let slots = |exposition: &str| {
        let of = |state| sample(exposition, "plinth_instance_slots", &[("state", state)]);
        (of("total"), of("in_use"))
    };
    let get = |path: &'static str| {
        let host = host.clone();
        tokio::spawn(async move { host.get(path).await.status().as_u16() })
    };
    let gauges = |exposition: &str| {
        let labels = [("plugin", "spin"), ("version", "0.1.0")];
        (
            sample(exposition, "plinth_plugin_instances_in_use", &labels),
            sample(exposition, "plinth_plugin_admission_queued", &labels),
        )
    };
    let running = get("/spin/sleep/1000");
    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    let queued = get("/spin/sleep/1");
    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    let (_, busy) = host.scrape().await;
    assert_eq!(gauges(&busy), (Some(1.0), Some(1.0)), "{busy}");
    // The queued request waits for a turn, not for a slot: one slot of four is in use.
    assert_eq!(slots(&busy), (Some(4.0), Some(1.0)), "{busy}");
    assert_eq!(running.await.expect("join"), 200);
    assert_eq!(queued.await.expect("join"), 200);
    let (_, idle) = host.scrape().await;
    assert_eq!(gauges(&idle), (Some(0.0), Some(0.0)), "{idle}");
    assert_eq!(slots(&idle), (Some(4.0), Some(0.0)), "{idle}");
}
