//! Property-based tests (`proptest`) of how a request reaches a plugin, black-box: one
//! `plinth` host per property (started once, rate limits off) serving `hello` and `nosy`,
//! driven with generated requests.
//!
//! - `bodies_round_trip_through_echo`: any body (bytes) sent to `POST /echo` comes back
//!   byte for byte, with the content type it was sent with (`application/octet-stream`
//!   when it had none).
//! - `path_parameters_arrive_decoded`: any UTF-8 string, percent-encoded by the client
//!   (unreserved characters encoded or not, sub-delimiters such as `+`, `:`, `@` encoded or
//!   left as they are, upper- or lowercase hex), arrives in
//!   `GET /hello/{name}` decoded to exactly that string. (`.` and `..` are left out: a
//!   client resolves them as dot segments before sending.)
//! - `headers_arrive_unchanged_but_authorization`: any set of headers (token names in any
//!   case, visible-ASCII values) arrives at the plugin (`GET /nosy/headers`) unchanged,
//!   names lowercased, with nothing added but what the client itself sends (`host`,
//!   `accept`); `Authorization`, in any case, never arrives.
//!
//! Each property runs a bounded number of cases (see [`config`]); to run them longer:
//!
//! ```text
//! PROPTEST_CASES=2000 cargo nextest run --release -p plinth-tests --test request_lifting
//! ```

use std::collections::BTreeMap;
use std::fmt::Debug;

use plinth_tests::{PluginsDir, TestHost};
use proptest::prelude::*;
use proptest::test_runner::{Config, TestCaseError, TestRunner};
use reqwest::header::{HeaderName, HeaderValue};

/// `cases` generated cases, unless `PROPTEST_CASES` is set: an explicit `cases` would
/// otherwise override the variable (proptest reads it only into its default config).
/// Failures are not persisted (the minimal failing input is in the panic message).
fn config(cases: u32) -> Config {
    let default = Config::default();
    Config {
        cases: if std::env::var_os("PROPTEST_CASES").is_some() {
            default.cases
        } else {
            cases
        },
        failure_persistence: None,
        ..default
    }
}

/// One host for all the cases of a property.
struct Fixture {
    host: TestHost,
    runtime: tokio::runtime::Runtime,
    _plugins: PluginsDir,
}

impl Fixture {
    fn start() -> Self {
        let plugins = PluginsDir::with(&["hello", "nosy"]);
        let host = TestHost::builder()
            .env("RATE_LIMIT_PER_MINUTE", "0")
            .start(&plugins);
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("a runtime");
        Self {
            host,
            runtime,
            _plugins: plugins,
        }
    }

    /// Runs `property` on `cases` values of `strategy`; panics with the minimal failing one.
    fn check<S>(
        &self,
        cases: u32,
        strategy: S,
        property: impl AsyncFn(&TestHost, S::Value) -> Result<(), TestCaseError>,
    ) where
        S: Strategy,
        S::Value: Debug,
    {
        let mut runner = TestRunner::new(config(cases));
        let result = runner.run(&strategy, |value| {
            self.runtime.block_on(property(&self.host, value))
        });
        if let Err(err) = result {
            panic!("{err}\nhost logs:\n{}", self.host.logs().join("\n"));
        }
    }
}

fn fail(context: &str, err: impl std::fmt::Display) -> TestCaseError {
    TestCaseError::fail(format!("{context}: {err}"))
}

/// A content type as clients send them, or any visible-ASCII text.
fn content_type() -> impl Strategy<Value = String> {
    prop_oneof![
        "[a-z]{1,11}/[a-z0-9.+-]{1,20}",
        "[a-z]{1,11}/[a-z0-9.+-]{1,20}; ?charset=[A-Za-z0-9-]{1,10}",
        "multipart/form-data; boundary=[A-Za-z0-9'()+_,./:=?-]{1,40}",
        "[!-~]([ -~]{0,40}[!-~])?",
    ]
}

#[test]
fn bodies_round_trip_through_echo() {
    let fixture = Fixture::start();
    let body = prop_oneof![
        4 => proptest::collection::vec(any::<u8>(), 0..2048),
        1 => proptest::collection::vec(any::<u8>(), 0..65_536),
    ];
    fixture.check(
        128,
        (body, proptest::option::of(content_type())),
        async |host, (body, content_type)| {
            let mut request = host.client.post(host.url("/echo")).body(body.clone());
            if let Some(content_type) = &content_type {
                request = request.header("content-type", content_type);
            }
            let response = request.send().await.map_err(|e| fail("POST /echo", e))?;
            prop_assert_eq!(response.status().as_u16(), 200);
            let echoed_type = response
                .headers()
                .get("content-type")
                .map(|v| v.to_str().map(str::to_owned))
                .transpose()
                .map_err(|e| fail("content type", e))?;
            let expected_type = content_type.unwrap_or_else(|| "application/octet-stream".into());
            prop_assert_eq!(echoed_type, Some(expected_type));
            let echoed = response.bytes().await.map_err(|e| fail("body", e))?;
            prop_assert!(
                echoed == body,
                "{} bytes back for {} sent",
                echoed.len(),
                body.len()
            );
            Ok(())
        },
    );
}

/// How the client writes a path segment.
#[derive(Debug, Clone, Copy)]
struct Encoding {
    /// Percent-encode the unreserved characters too (`A` as `%41`).
    everything: bool,
    /// Leave the other characters a path segment may hold as they are (`+`, `:`, `@`...).
    raw_sub_delims: bool,
    lowercase_hex: bool,
}

impl Encoding {
    fn encode(self, text: &str) -> String {
        let mut out = String::new();
        for byte in text.bytes() {
            let unreserved = byte.is_ascii_alphanumeric() || b"-._~".contains(&byte);
            let sub_delim = b"!$&'()*+,;=:@".contains(&byte);
            if (unreserved && !self.everything) || (sub_delim && self.raw_sub_delims) {
                out.push(char::from(byte));
            } else if self.lowercase_hex {
                out.push_str(&format!("%{byte:02x}"));
            } else {
                out.push_str(&format!("%{byte:02X}"));
            }
        }
        out
    }
}

#[test]
fn path_parameters_arrive_decoded() {
    let fixture = Fixture::start();
    let name = (any::<char>(), any::<String>())
        .prop_map(|(first, rest)| format!("{first}{rest}"))
        .prop_filter("not a dot segment", |name| name != "." && name != "..");
    let encoding = (any::<bool>(), any::<bool>(), any::<bool>()).prop_map(
        |(everything, raw_sub_delims, lowercase_hex)| Encoding {
            everything,
            raw_sub_delims,
            lowercase_hex,
        },
    );
    fixture.check(128, (name, encoding), async |host, (name, encoding)| {
        let path = format!("/hello/{}", encoding.encode(&name));
        let response = host.get(&path).await;
        prop_assert_eq!(response.status().as_u16(), 200, "GET {}", path);
        let body: serde_json::Value = response.json().await.map_err(|e| fail("body", e))?;
        prop_assert_eq!(
            &body["name"],
            &serde_json::Value::from(name.as_str()),
            "GET {}",
            path
        );
        prop_assert_eq!(
            &body["message"],
            &serde_json::Value::from(format!("Hello, {name}!")),
            "GET {}",
            path
        );
        Ok(())
    });
}

/// Names the HTTP layers own (framing, the connection, the host), or that change how the
/// request is handled (tracing context, CORS): not "any header" a plugin is handed as is.
fn is_excluded(name: &str) -> bool {
    matches!(
        name,
        "host"
            | "content-length"
            | "transfer-encoding"
            | "connection"
            | "keep-alive"
            | "te"
            | "trailer"
            | "upgrade"
            | "expect"
            | "http2-settings"
            | "authorization"
            | "traceparent"
            | "tracestate"
            | "origin"
    ) || name.starts_with("proxy-")
        || name.starts_with("access-control-")
}

/// Headers: distinct token names (in any case), visible-ASCII values (inner spaces too).
fn headers() -> impl Strategy<Value = Vec<(String, String)>> {
    let name = "[A-Za-z0-9!#$%&'*+.^_`|~-]{1,24}"
        .prop_filter("not a name the HTTP layers own", |n| {
            !is_excluded(&n.to_ascii_lowercase())
        });
    let value = prop_oneof![Just(String::new()), "[!-~]([ !-~]{0,62}[!-~])?"];
    proptest::collection::vec((name, value), 0..12).prop_map(|headers| {
        let mut seen = std::collections::BTreeSet::new();
        headers
            .into_iter()
            .filter(|(name, _)| seen.insert(name.to_ascii_lowercase()))
            .collect()
    })
}

#[test]
fn headers_arrive_unchanged_but_authorization() {
    let fixture = Fixture::start();
    let authorization = proptest::option::of((
        prop_oneof![
            Just("authorization"),
            Just("Authorization"),
            Just("AUTHORIZATION")
        ],
        "(Bearer |Basic )?[!-~]{1,60}",
    ));
    fixture.check(
        128,
        (headers(), authorization),
        async |host, (headers, authorization)| {
            let mut request = host.client.get(host.url("/nosy/headers"));
            let credentials = authorization.map(|(name, value)| (name.to_owned(), value));
            for (name, value) in headers.iter().chain(&credentials) {
                let name = HeaderName::from_bytes(name.as_bytes()).map_err(|e| fail(name, e))?;
                let value = HeaderValue::from_str(value).map_err(|e| fail(value, e))?;
                request = request.header(name, value);
            }
            let response = request
                .send()
                .await
                .map_err(|e| fail("GET /nosy/headers", e))?;
            prop_assert_eq!(response.status().as_u16(), 200);
            let seen: BTreeMap<String, serde_json::Value> =
                response.json().await.map_err(|e| fail("body", e))?;
            prop_assert!(
                !seen.contains_key("authorization"),
                "authorization reached the plugin: {:?}",
                seen
            );
            let sent: BTreeMap<String, &str> = headers
                .iter()
                .map(|(name, value)| (name.to_ascii_lowercase(), value.as_str()))
                .collect();
            for (name, value) in &sent {
                prop_assert_eq!(
                    seen.get(name).and_then(|v| v.as_str()),
                    Some(*value),
                    "header {}",
                    name
                );
            }
            let host_header = host.addr.to_string();
            for (name, value) in &seen {
                let expected = match name.as_str() {
                    "host" => Some(host_header.as_str()),
                    "accept" if !sent.contains_key("accept") => Some("*/*"),
                    _ => sent.get(name).copied(),
                };
                prop_assert_eq!(value.as_str(), expected, "header {} the plugin got", name);
            }
            Ok(())
        },
    );
}
