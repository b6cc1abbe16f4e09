//! Property-based tests (`proptest`) of the host's parsing and checking code, run with
//! every `cargo nextest run` / `cargo test`.
//!
//! Each property runs a bounded number of generated cases (see [`config`]): a few hundred
//! for pure functions, fewer where a case signs and verifies tokens, so each finishes in
//! seconds in release mode. To run them longer, set `PROPTEST_CASES` (it replaces every
//! property's own count here):
//!
//! ```text
//! PROPTEST_CASES=100000 cargo nextest run --release -p plinth-host properties
//! ```
//!
//! A failing case is shrunk to a minimal one and printed; proptest also records its seed in
//! `host/proptest-regressions/properties.txt`, which later runs try first.
//!
//! What each property states:
//!
//! **Manifests** ([`Manifest::parse`]):
//! - `manifest_parse_never_panics_on_arbitrary_text`, `manifest_parse_never_panics_on_tomlish_text`:
//!   any text is accepted or refused without a panic, and whatever is accepted satisfies
//!   the manifest's invariants (name, version, component, methods, paths, unique routes,
//!   limits within their bounds).
//! - `well_formed_manifests_parse_to_what_they_say`: a generated valid manifest (names,
//!   versions, routes of literal and `{param}` segments, the five methods, optional `auth`,
//!   `rate_limit` and limits) parses, and the routes and limits come back as written.
//! - `reserved_paths_are_refused_and_near_misses_are_not`: a route under `/health`, `/ready`,
//!   `/admin`, `/openapi.json` or `/docs` is refused as reserved; one merely starting with
//!   the same letters (`/healthz`, `/docsets`) is accepted.
//! - `malformed_segments_are_refused_and_named`: a path with one bad segment (`{x`, `a{x}`,
//!   `*`, `{}`, `x}`...) anywhere is refused, the error naming that segment.
//! - `unknown_keys_are_refused_and_named`: an unknown key at the top level or in `[limits]`
//!   is refused, the error (`{err:#}`) naming the key.
//!
//! **Route parameters** (`matchit` and the percent-decoding of `RouteTable::resolve`):
//! - `percent_encoded_params_decode_to_the_original`: any non-empty UTF-8 values,
//!   percent-encoded into a path of the generated pattern, match it and decode to exactly
//!   the values, in order.
//!
//! **Client address** ([`client_ip`]):
//! - `client_ip_never_panics_and_answers_the_peer_or_a_listed_address`: arbitrary header
//!   bytes, peers and networks: no panic, the answer is in canonical form and is the peer
//!   or an address listed in `X-Forwarded-For`.
//! - `untrusted_peers_are_answered_with_themselves`: whatever `X-Forwarded-For` says.
//! - `trusted_peers_are_answered_with_the_rightmost_untrusted_entry`: through chains of
//!   trusted proxies, untrusted addresses and garbage, over several header lines, with any
//!   address (peer, entry or trusted network) written IPv4-mapped: the right-most untrusted
//!   entry in canonical form, or the peer when there is none.
//!
//! **Tokens** ([`TokenService`]):
//! - `arbitrary_strings_never_verify`: any string, JWT-shaped or not, is `Invalid`.
//! - `issued_tokens_verify_as_their_kind_only`: a token verifies as its kind with its claims,
//!   and is `WrongKind` as the other kind.
//! - `revoking_a_subject_revokes_only_its_tokens_of_that_kind`.
//! - `any_single_character_change_is_refused`: replacing, deleting or inserting one character
//!   anywhere in an issued token (header, payload, signature) makes it `Invalid`.
//! - `the_same_claims_signed_with_another_secret_are_refused`: re-signed with the host's own
//!   secret they verify; with any other secret they are `Invalid`.
//! - `the_same_claims_under_another_algorithm_are_refused`: `none` (any casing), `HS384`,
//!   `HS512`, `RS256`, `ES256`, `PS256`, `EdDSA` headers over the genuine payload, with no,
//!   the genuine, or a genuine HS384/HS512 signature under the host's secret: `Invalid`.

use std::cell::RefCell;
use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::time::Duration;

use http::{HeaderMap, HeaderValue};
use ipnet::{IpNet, Ipv4Net, Ipv6Net};
use proptest::prelude::*;
use proptest::sample::{Index, select};

use crate::bindings::plinth::plugin::tokens::{Claims, TokenKind};
use crate::capabilities::kv::KvStore;
use crate::capabilities::tokens::{TokenConfig, TokenError, TokenService};
use crate::middleware::rate_limit::client_ip;
use crate::plugins::manifest::{AuthPolicy, Limits, Manifest, RateLimitClass};
use crate::telemetry::metrics::Metrics;

/// `cases` generated cases, unless `PROPTEST_CASES` is set: an explicit `cases` would
/// otherwise override the variable (proptest reads it only into its default config).
fn config(cases: u32) -> ProptestConfig {
    let default = ProptestConfig::default();
    ProptestConfig {
        cases: if std::env::var_os("PROPTEST_CASES").is_some() {
            default.cases
        } else {
            cases
        },
        ..default
    }
}

// ---------------------------------------------------------------------------------------
// Manifests
// ---------------------------------------------------------------------------------------

const METHODS: [&str; 5] = ["GET", "POST", "PUT", "PATCH", "DELETE"];
const RESERVED: [&str; 5] = ["/health", "/ready", "/admin", "/openapi.json", "/docs"];
const TOP_LEVEL_KEYS: [&str; 7] = [
    "name",
    "version",
    "component",
    "route",
    "capabilities",
    "limits",
    "schemas",
];
const LIMIT_KEYS: [&str; 7] = [
    "memory_mb",
    "timeout_ms",
    "max_concurrency",
    "max_queued",
    "queue_timeout_ms",
    "max_response_mb",
    "reuse_instance_for",
];

/// What any accepted manifest satisfies.
fn check_invariants(manifest: &Manifest) -> Result<(), TestCaseError> {
    let name = &manifest.name;
    prop_assert!(
        (1..=64).contains(&name.len())
            && name
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '_'),
        "accepted name {name:?}"
    );
    prop_assert!(!manifest.version.trim().is_empty());
    let component = &manifest.component;
    prop_assert!(
        component.ends_with(".wasm") && !component.contains(['/', '\\']),
        "accepted component {component:?}"
    );
    let limits = &manifest.limits;
    prop_assert!((1..=512).contains(&limits.memory_mb));
    prop_assert!((1..=60_000).contains(&limits.timeout_ms));
    prop_assert!((1..=1_000).contains(&limits.max_concurrency));
    prop_assert!(limits.max_queued <= 10_000);
    prop_assert!(limits.queue_timeout_ms <= 60_000);
    prop_assert!((1..=512).contains(&limits.max_response_mb));
    prop_assert!(limits.reuse_instance_for <= 10_000);
    let mut seen = BTreeSet::new();
    for route in &manifest.routes {
        let path = &route.path;
        prop_assert!(METHODS.contains(&route.method.as_str()), "{}", route.method);
        prop_assert!(path.starts_with('/'), "accepted path {path:?}");
        prop_assert!(
            !RESERVED
                .iter()
                .any(|p| path == p || path.starts_with(&format!("{p}/"))),
            "accepted reserved path {path:?}"
        );
        for segment in path.split('/').skip(1) {
            match segment.strip_prefix('{') {
                Some(inner) => prop_assert!(
                    inner.strip_suffix('}').is_some_and(|name| !name.is_empty()
                        && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')),
                    "accepted segment {segment:?}"
                ),
                None => prop_assert!(
                    !segment.contains(['{', '}', '*', '?', '#']),
                    "accepted segment {segment:?}"
                ),
            }
        }
        prop_assert!(
            seen.insert((route.method.clone(), path.clone())),
            "accepted a duplicate route"
        );
    }
    Ok(())
}

/// Text built from manifest-like pieces: an optional valid start, then top-level lines and
/// tables (`[[route]]`, `[limits]`, `[capabilities]`, others) of known and unknown keys
/// with values of every TOML kind, valid and not, and noise.
fn tomlish_text() -> impl Strategy<Value = String> {
    let quoted = |text: String| toml::Value::from(text).to_string();
    let key = prop_oneof![
        select(
            [
                TOP_LEVEL_KEYS.as_slice(),
                LIMIT_KEYS.as_slice(),
                &[
                    "method",
                    "path",
                    "auth",
                    "rate_limit",
                    "sql",
                    "kv",
                    "tokens",
                    "passwords",
                    "data_set",
                    "summary",
                    "operation_id",
                    "tags",
                    "params.id",
                    "query.q",
                    "request",
                    "responses.200",
                ],
            ]
            .concat()
        )
        .prop_map(str::to_owned),
        "[a-z_]{1,8}",
    ];
    let value = prop_oneof![
        select(vec![
            "\"GET\"",
            "\"POST\"",
            "\"BREW\"",
            "\"/a/{b}\"",
            "\"/health\"",
            "\"/a/{b\"",
            "\"required\"",
            "\"optional\"",
            "\"auth\"",
            "\"x.wasm\"",
            "\"../x.wasm\"",
            "\"x\"",
            "\"\"",
            "true",
            "false",
            "0",
            "-1",
            "4294967296",
            "1e3",
            "[]",
            "{}",
            "[\"issue\", \"verify\"]",
            "{ data_set = \"x\" }",
            "{ type = \"strng\" }",
            "1979-05-27",
        ])
        .prop_map(str::to_owned),
        "\"[ -~]{0,12}\"",
        "-?[0-9]{1,21}",
        "\\[[ -~]{0,10}\\]",
        "\\{[ -~]{0,10}\\}",
    ];
    let line = prop_oneof![
        3 => (key, value).prop_map(|(k, v)| format!("{k} = {v}")),
        1 => "[ -~]{0,20}",
    ];
    // Mostly none: a table of only known keys gets further into the checks.
    let lines = prop_oneof![
        3 => Just(String::new()),
        1 => proptest::collection::vec(line, 1..4).prop_map(|l| l.join("\n")),
    ];
    let method = prop_oneof![
        4 => select(METHODS.to_vec()).prop_map(str::to_owned),
        1 => "[A-Za-z]{0,7}",
    ];
    let path = prop_oneof![
        4 => valid_path(),
        1 => select(RESERVED.to_vec()).prop_map(str::to_owned),
        1 => "[ -~]{0,16}",
    ];
    let route = (
        method,
        path.prop_map(quoted),
        proptest::option::of(select(vec![
            "\"none\"",
            "\"optional\"",
            "\"required\"",
            "\"maybe\"",
            "true",
        ])),
        proptest::option::of(select(vec!["\"default\"", "\"auth\"", "\"strict\"", "1"])),
        lines.clone(),
    )
        .prop_map(move |(method, path, auth, rate_limit, extra)| {
            let mut block = format!("[[route]]\nmethod = {}\npath = {path}\n", quoted(method));
            if let Some(auth) = auth {
                block.push_str(&format!("auth = {auth}\n"));
            }
            if let Some(class) = rate_limit {
                block.push_str(&format!("rate_limit = {class}\n"));
            }
            block + &extra
        });
    let limits = proptest::collection::vec(
        (
            select(LIMIT_KEYS.to_vec()),
            prop_oneof![0..=2u64, 0..=70_000u64, any::<u64>()],
        ),
        0..5,
    )
    .prop_map(|limits| {
        let mut seen = BTreeSet::new();
        let lines: Vec<String> = limits
            .into_iter()
            .filter(|(k, _)| seen.insert(*k))
            .map(|(k, v)| format!("{k} = {}", v.min(i64::MAX as u64)))
            .collect();
        format!("[limits]\n{}", lines.join("\n"))
    });
    let capabilities = (
        proptest::option::of(select(vec![
            "true",
            "false",
            "{ data_set = \"x\" }",
            "{ data_set = \"pg_x\" }",
            "\"x\"",
        ])),
        proptest::option::of(select(vec!["true", "false", "1"])),
        proptest::option::of(select(vec![
            "[\"issue\", \"verify\"]",
            "[\"revoke\"]",
            "[\"mint\"]",
            "[]",
        ])),
    )
        .prop_map(|(sql, kv, tokens)| {
            let mut block = "[capabilities]\n".to_owned();
            for (key, value) in [("sql", sql), ("kv", kv), ("tokens", tokens)] {
                if let Some(value) = value {
                    block.push_str(&format!("{key} = {value}\n"));
                }
            }
            block
        });
    let other = (
        select(vec![
            "[route]",
            "[[limits]]",
            "[limits.x]",
            "[capabilities.sql]",
            "[x]",
            "[[route.params]]",
        ]),
        lines.clone(),
    )
        .prop_map(|(header, lines)| format!("{header}\n{lines}"));
    let block = prop_oneof![4 => route, 2 => limits, 1 => capabilities, 1 => other];
    (any::<bool>(), lines, proptest::collection::vec(block, 0..5)).prop_map(
        |(with_base, top, blocks)| {
            let base = if with_base {
                "name = \"x\"\nversion = \"1\"\ncomponent = \"x.wasm\"\n"
            } else {
                ""
            };
            format!("{base}{top}\n{}", blocks.join("\n"))
        },
    )
}

/// A literal path segment (never one that would make the path reserved).
fn literal_segment() -> impl Strategy<Value = String> {
    prop_oneof![
        "[A-Za-z0-9._~-]{1,12}",
        // Anything else a manifest allows in a literal segment.
        "[^/{}*?#]{1,8}",
    ]
}

fn param_segment() -> impl Strategy<Value = String> {
    "[A-Za-z0-9_]{1,10}".prop_map(|name| format!("{{{name}}}"))
}

/// Segments of a valid path: a parameter's name appears once.
fn segments() -> impl Strategy<Value = Vec<String>> {
    proptest::collection::vec(prop_oneof![literal_segment(), param_segment()], 0..5).prop_map(
        |segments| {
            let mut seen = std::collections::BTreeSet::new();
            segments
                .into_iter()
                .enumerate()
                .map(|(i, segment)| match segment.strip_suffix('}') {
                    Some(param) if segment.starts_with('{') && !seen.insert(param.to_owned()) => {
                        format!("{param}_{i}}}")
                    }
                    _ => segment,
                })
                .collect()
        },
    )
}

/// `/` and the segments; `trailing`: a trailing `/` (when there is a segment).
fn join_path(segments: &[String], trailing: bool) -> String {
    let mut path = format!("/{}", segments.join("/"));
    if trailing && !segments.is_empty() {
        path.push('/');
    }
    // The first segment must not make the path one of the host's.
    if RESERVED
        .iter()
        .any(|p| path == *p || path.starts_with(&format!("{p}/")))
    {
        path.insert(1, 'x');
    }
    path
}

fn valid_path() -> impl Strategy<Value = String> {
    (segments(), any::<bool>()).prop_map(|(s, trailing)| join_path(&s, trailing))
}

#[derive(Debug, Clone)]
struct GenRoute {
    method: &'static str,
    path: String,
    auth: Option<AuthPolicy>,
    rate_limit: Option<RateLimitClass>,
}

fn auth_name(auth: AuthPolicy) -> &'static str {
    match auth {
        AuthPolicy::None => "none",
        AuthPolicy::Optional => "optional",
        AuthPolicy::Required => "required",
    }
}

fn gen_route() -> impl Strategy<Value = GenRoute> {
    (
        select(METHODS.to_vec()),
        valid_path(),
        proptest::option::of(select(vec![
            AuthPolicy::None,
            AuthPolicy::Optional,
            AuthPolicy::Required,
        ])),
        proptest::option::of(select(vec![RateLimitClass::Default, RateLimitClass::Auth])),
    )
        .prop_map(|(method, path, auth, rate_limit)| GenRoute {
            method,
            path,
            auth,
            rate_limit,
        })
}

/// Each limit set or left to its default.
fn gen_limits() -> impl Strategy<Value = BTreeMap<&'static str, u64>> {
    (
        proptest::option::of(1..=512u64),
        proptest::option::of(1..=60_000u64),
        proptest::option::of(1..=1_000u64),
        proptest::option::of(0..=10_000u64),
        proptest::option::of(0..=60_000u64),
        proptest::option::of(1..=512u64),
        proptest::option::of(0..=10_000u64),
    )
        .prop_map(|(a, b, c, d, e, f, g)| {
            LIMIT_KEYS
                .iter()
                .zip([a, b, c, d, e, f, g])
                .filter_map(|(key, value)| Some((*key, value?)))
                .collect()
        })
}

#[derive(Debug, Clone)]
struct GenManifest {
    name: String,
    version: String,
    component: String,
    routes: Vec<GenRoute>,
    limits: Option<BTreeMap<&'static str, u64>>,
}

fn gen_manifest() -> impl Strategy<Value = GenManifest> {
    (
        "[a-z0-9_-]{1,64}",
        // Anything with a character that is not white space.
        (any::<String>(), "[^\\s]", any::<String>()).prop_map(|(a, b, c)| format!("{a}{b}{c}")),
        "[A-Za-z0-9_.-]{0,20}\\.wasm",
        proptest::collection::vec(gen_route(), 0..8),
        proptest::option::of(gen_limits()),
    )
        .prop_map(|(name, version, component, routes, limits)| {
            // A method and path may be declared once.
            let mut seen = BTreeSet::new();
            let routes = routes
                .into_iter()
                .filter(|r| seen.insert((r.method, r.path.clone())))
                .collect();
            GenManifest {
                name,
                version,
                component,
                routes,
                limits,
            }
        })
}

impl GenManifest {
    /// The manifest as TOML (written by the `toml` crate, so any string is quoted right).
    fn to_toml(&self) -> String {
        let mut table = toml::Table::new();
        table.insert("name".into(), self.name.clone().into());
        table.insert("version".into(), self.version.clone().into());
        table.insert("component".into(), self.component.clone().into());
        if let Some(limits) = &self.limits {
            let limits: toml::Table = limits
                .iter()
                .map(|(k, v)| ((*k).to_owned(), toml::Value::Integer(*v as i64)))
                .collect();
            table.insert("limits".into(), limits.into());
        }
        let routes: Vec<toml::Value> = self
            .routes
            .iter()
            .map(|route| {
                let mut t = toml::Table::new();
                t.insert("method".into(), route.method.into());
                t.insert("path".into(), route.path.clone().into());
                if let Some(auth) = route.auth {
                    t.insert("auth".into(), auth_name(auth).into());
                }
                if let Some(class) = route.rate_limit {
                    t.insert("rate_limit".into(), class.name().into());
                }
                t.into()
            })
            .collect();
        if !routes.is_empty() {
            table.insert("route".into(), routes.into());
        }
        toml::to_string(&table).unwrap_or_else(|err| panic!("serialising {self:?}: {err}"))
    }

    fn expected_limits(&self) -> Limits {
        let mut limits = Limits::default();
        for (key, value) in self.limits.iter().flatten() {
            match *key {
                "memory_mb" => limits.memory_mb = *value as u32,
                "timeout_ms" => limits.timeout_ms = *value,
                "max_concurrency" => limits.max_concurrency = *value as u32,
                "max_queued" => limits.max_queued = *value as u32,
                "queue_timeout_ms" => limits.queue_timeout_ms = *value,
                "max_response_mb" => limits.max_response_mb = *value as u32,
                "reuse_instance_for" => limits.reuse_instance_for = *value as u32,
                other => unreachable!("limit {other}"),
            }
        }
        limits
    }
}

/// A minimal valid manifest with one route at `path`.
fn one_route(path: &str) -> String {
    let mut table = toml::Table::new();
    table.insert("name".into(), "x".into());
    table.insert("version".into(), "1".into());
    table.insert("component".into(), "x.wasm".into());
    let mut route = toml::Table::new();
    route.insert("method".into(), "GET".into());
    route.insert("path".into(), path.into());
    table.insert("route".into(), vec![toml::Value::from(route)].into());
    toml::to_string(&table).unwrap_or_else(|err| panic!("serialising {path:?}: {err}"))
}

/// A segment the manifest must refuse.
fn bad_segment() -> impl Strategy<Value = String> {
    prop_oneof![
        select(vec![
            "{x", "a{x}", "*", "{}", "x}", "{x}}", "{{x}}", "{*rest}", "?", "#"
        ])
        .prop_map(str::to_owned),
        // An opening brace never closed.
        "\\{[A-Za-z0-9_]{0,8}",
        // Braces inside a segment.
        "[a-z]{1,4}\\{[a-z]{1,4}\\}",
        "\\{[a-z]{1,4}\\}[a-z]{1,4}",
        // A parameter name with a character outside A-Z, a-z, 0-9 and `_`.
        "\\{[a-z]{0,3}[^A-Za-z0-9_/{}][a-z]{0,3}\\}",
        // A reserved character in a literal segment.
        "[a-z]{0,3}[*?#}][a-z]{0,3}",
    ]
}

fn unknown_value() -> impl Strategy<Value = String> {
    prop_oneof![
        "0|-?[1-9][0-9]{0,8}",
        "\"[a-z ]{0,8}\"",
        select(vec!["true", "false", "[1, 2]", "{ a = 1 }", "\"\""]).prop_map(str::to_owned),
    ]
}

proptest! {
    #![proptest_config(config(1024))]

    #[test]
    fn manifest_parse_never_panics_on_arbitrary_text(text in any::<String>()) {
        if let Ok(manifest) = Manifest::parse(&text) {
            check_invariants(&manifest)?;
        }
    }

    #[test]
    fn manifest_parse_never_panics_on_tomlish_text(text in tomlish_text()) {
        if let Ok(manifest) = Manifest::parse(&text) {
            check_invariants(&manifest)?;
        }
    }
}

proptest! {
    #![proptest_config(config(512))]

    #[test]
    fn well_formed_manifests_parse_to_what_they_say(generated in gen_manifest()) {
        let text = generated.to_toml();
        let manifest = Manifest::parse(&text)
            .map_err(|err| TestCaseError::fail(format!("{err:#}\n{text}")))?;
        prop_assert_eq!(&manifest.name, &generated.name);
        prop_assert_eq!(&manifest.version, &generated.version);
        prop_assert_eq!(&manifest.component, &generated.component);
        prop_assert_eq!(manifest.limits, generated.expected_limits());
        let got: Vec<_> = manifest
            .routes
            .iter()
            .map(|r| (r.method.as_str(), r.path.as_str(), r.auth, r.rate_limit))
            .collect();
        let want: Vec<_> = generated
            .routes
            .iter()
            .map(|r| {
                (
                    r.method,
                    r.path.as_str(),
                    r.auth.unwrap_or_default(),
                    r.rate_limit.unwrap_or_default(),
                )
            })
            .collect();
        prop_assert_eq!(got, want);
    }

    #[test]
    fn reserved_paths_are_refused_and_near_misses_are_not(
        prefix in select(RESERVED.to_vec()),
        rest in proptest::option::of((segments(), any::<bool>())),
        near_miss in "[a-z0-9]{1,5}",
    ) {
        let path = match &rest {
            None => prefix.to_owned(),
            Some((segments, trailing)) => {
                let mut path = format!("{prefix}/{}", segments.join("/"));
                if *trailing && !segments.is_empty() {
                    path.push('/');
                }
                path
            }
        };
        match Manifest::parse(&one_route(&path)) {
            Ok(_) => prop_assert!(false, "reserved path {path:?} accepted"),
            Err(err) => {
                let message = format!("{err:#}");
                prop_assert!(message.contains("reserved for the host"), "{path:?}: {message}");
            }
        }
        // Same letters, another first segment: not the host's.
        let other = format!("{prefix}{near_miss}");
        if let Err(err) = Manifest::parse(&one_route(&other)) {
            prop_assert!(false, "{other:?} refused: {err:#}");
        }
    }

    #[test]
    fn malformed_segments_are_refused_and_named(
        segments in segments(),
        bad in bad_segment(),
        at in any::<Index>(),
        trailing in any::<bool>(),
    ) {
        let mut segments = segments;
        segments.insert(at.index(segments.len() + 1), bad.clone());
        let path = join_path(&segments, trailing);
        match Manifest::parse(&one_route(&path)) {
            Ok(_) => prop_assert!(false, "path {path:?} with segment {bad:?} accepted"),
            Err(err) => {
                let message = format!("{err:#}");
                prop_assert!(
                    message.contains("route path") && message.contains(&format!("`{bad}`")),
                    "{path:?}: {message}"
                );
            }
        }
    }

    #[test]
    fn unknown_keys_are_refused_and_named(
        (top_level, key) in any::<bool>().prop_flat_map(|top_level| {
            let (known, elsewhere) = if top_level {
                (TOP_LEVEL_KEYS, LIMIT_KEYS)
            } else {
                (LIMIT_KEYS, TOP_LEVEL_KEYS)
            };
            let key = prop_oneof![
                "[a-z][a-z0-9_]{0,15}".prop_filter("unknown", move |k| !known.contains(&k.as_str())),
                // A key of the other table.
                select(elsewhere.to_vec()).prop_map(str::to_owned),
            ];
            (Just(top_level), key)
        }),
        value in unknown_value(),
        limits in gen_limits(),
        at in any::<Index>(),
    ) {
        let unknown = format!("{key} = {value}");
        let mut top = vec![
            "name = \"x\"".to_owned(),
            "version = \"1\"".to_owned(),
            "component = \"x.wasm\"".to_owned(),
        ];
        let mut limit_lines: Vec<String> =
            limits.iter().map(|(k, v)| format!("{k} = {v}")).collect();
        if top_level {
            top.insert(at.index(top.len() + 1), unknown);
        } else {
            limit_lines.insert(at.index(limit_lines.len() + 1), unknown);
        }
        let text = format!(
            "{}\n[limits]\n{}\n[[route]]\nmethod = \"GET\"\npath = \"/a/{{b}}\"\n",
            top.join("\n"),
            limit_lines.join("\n"),
        );
        match Manifest::parse(&text) {
            Ok(_) => prop_assert!(false, "unknown key accepted:\n{text}"),
            Err(err) => {
                let message = format!("{err:#}");
                prop_assert!(message.contains(&format!("`{key}`")), "{text}\n{message}");
            }
        }
    }
}

// ---------------------------------------------------------------------------------------
// Route parameters: what `RouteTable::resolve` does with a matched path
// ---------------------------------------------------------------------------------------

/// A route pattern of literal and `{pN}` segments, and a value for each parameter.
fn pattern_and_values() -> impl Strategy<Value = (Vec<Option<String>>, Vec<String>)> {
    proptest::collection::vec(
        prop_oneof![
            "[a-z0-9]{1,6}".prop_map(Some),
            Just(None), // a parameter
        ],
        1..6,
    )
    .prop_flat_map(|shape| {
        let params = shape.iter().filter(|s| s.is_none()).count();
        (
            Just(shape),
            // Non-empty: an empty segment matches no parameter.
            proptest::collection::vec(
                (any::<char>(), any::<String>()).prop_map(|(c, s)| format!("{c}{s}")),
                params,
            ),
        )
    })
}

proptest! {
    #![proptest_config(config(1024))]

    #[test]
    fn percent_encoded_params_decode_to_the_original((shape, values) in pattern_and_values()) {
        let mut pattern = String::new();
        let mut path = String::new();
        let mut next = values.iter();
        for (i, segment) in shape.iter().enumerate() {
            match segment {
                Some(literal) => {
                    pattern.push_str(&format!("/{literal}"));
                    path.push_str(&format!("/{literal}"));
                }
                None => {
                    pattern.push_str(&format!("/{{p{i}}}"));
                    let value = next.next().map(String::as_str).unwrap_or_default();
                    let encoded =
                        percent_encoding::utf8_percent_encode(value, percent_encoding::NON_ALPHANUMERIC);
                    path.push_str(&format!("/{encoded}"));
                }
            }
        }
        let mut router = matchit::Router::new();
        router
            .insert(pattern.as_str(), ())
            .map_err(|err| TestCaseError::fail(format!("{pattern}: {err}")))?;
        let matched = router
            .at(&path)
            .map_err(|err| TestCaseError::fail(format!("{path} does not match {pattern}: {err}")))?;
        // As `RouteTable::resolve` decodes them.
        let decoded: Vec<String> = matched
            .params
            .iter()
            .map(|(_, raw)| crate::plugins::routes::decode_param(raw))
            .collect();
        prop_assert_eq!(decoded, values);
    }
}

// ---------------------------------------------------------------------------------------
// Client address
// ---------------------------------------------------------------------------------------

/// Written as IPv4 or, for an IPv4 address, optionally as IPv4-mapped IPv6, in either case.
#[derive(Debug, Clone, Copy)]
struct Written {
    ip: IpAddr,
    mapped: bool,
    upper: bool,
}

impl Written {
    fn as_ip(self) -> IpAddr {
        match self.ip {
            IpAddr::V4(v4) if self.mapped => IpAddr::V6(v4.to_ipv6_mapped()),
            ip => ip,
        }
    }

    fn text(self) -> String {
        let text = self.as_ip().to_string();
        if self.upper {
            text.to_uppercase()
        } else {
            text
        }
    }
}

fn written(ip: impl Strategy<Value = IpAddr>) -> impl Strategy<Value = Written> {
    (ip, any::<bool>(), any::<bool>()).prop_map(|(ip, mapped, upper)| Written { ip, mapped, upper })
}

/// A trusted network: inside 10.0.0.0/8 or fd00::/8; an IPv4 one optionally written as
/// its IPv4-mapped IPv6 network.
#[derive(Debug, Clone, Copy)]
struct TrustedNet {
    net: IpNet,
    mapped: bool,
}

impl TrustedNet {
    fn as_net(self) -> IpNet {
        match self.net {
            IpNet::V4(v4) if self.mapped => {
                Ipv6Net::new(v4.addr().to_ipv6_mapped(), v4.prefix_len() + 96)
                    .map(IpNet::V6)
                    .unwrap_or(self.net)
            }
            net => net,
        }
    }
}

fn trusted_net() -> impl Strategy<Value = TrustedNet> {
    let net = prop_oneof![
        (any::<u32>(), 8..=32u8).prop_map(|(bits, prefix)| {
            let addr = Ipv4Addr::from(0x0a00_0000 | (bits & 0x00ff_ffff));
            IpNet::V4(
                Ipv4Net::new(addr, prefix)
                    .map(|n| n.trunc())
                    .unwrap_or_default(),
            )
        }),
        (any::<u128>(), 8..=128u8).prop_map(|(bits, prefix)| {
            let addr = Ipv6Addr::from((0xfd_u128 << 120) | (bits & ((1 << 120) - 1)));
            IpNet::V6(
                Ipv6Net::new(addr, prefix)
                    .map(|n| n.trunc())
                    .unwrap_or_default(),
            )
        }),
    ];
    (net, any::<bool>()).prop_map(|(net, mapped)| TrustedNet { net, mapped })
}

/// An address inside `net`.
fn inside(net: IpNet, bits: u128) -> IpAddr {
    match net {
        IpNet::V4(n) => IpAddr::V4(Ipv4Addr::from(
            u32::from(n.network()) | (bits as u32 & u32::from(n.hostmask())),
        )),
        IpNet::V6(n) => IpAddr::V6(Ipv6Addr::from(
            u128::from(n.network()) | (bits & u128::from(n.hostmask())),
        )),
    }
}

/// An address in none of the trusted networks: IPv4 outside 10.0.0.0/8, IPv6 in 2001:db8::/32.
fn untrusted_ip() -> impl Strategy<Value = IpAddr> {
    prop_oneof![
        any::<Ipv4Addr>()
            .prop_filter("outside 10.0.0.0/8", |ip| ip.octets()[0] != 10)
            .prop_map(IpAddr::V4),
        any::<u128>().prop_map(|bits| IpAddr::V6(Ipv6Addr::from(
            (0x2001_0db8_u128 << 96) | (bits & ((1 << 96) - 1))
        ))),
    ]
}

/// Entries no address parser accepts (some empty, some nearly addresses).
fn garbage() -> impl Strategy<Value = String> {
    prop_oneof![
        select(vec![
            "",
            "unknown",
            "_hidden",
            "1.2.3",
            "1.2.3.4.5",
            "256.0.0.1",
            "10.0.0.1:8080",
            "[::1]",
            "[::1]:80",
            "::g",
            "fe80::1%eth0",
            "::ffff:10.0.0.300",
            "localhost",
            "0x0a000001",
            "01.2.3.4",
        ])
        .prop_map(str::to_owned),
        "[0-9a-fA-F:.\\[\\]%]{1,16}",
    ]
    .prop_filter("not an address", |s| s.trim().parse::<IpAddr>().is_err())
}

#[derive(Debug, Clone)]
enum Entry {
    Trusted(Written),
    Untrusted(Written),
    Garbage(String),
}

#[derive(Debug, Clone)]
struct Scenario {
    nets: Vec<TrustedNet>,
    peer: Written,
    /// `X-Forwarded-For` lines, each a list of entries with the whitespace around them.
    lines: Vec<Vec<(Entry, &'static str, &'static str)>>,
}

impl Scenario {
    fn nets(&self) -> Vec<IpNet> {
        self.nets.iter().map(|n| n.as_net()).collect()
    }

    fn headers(&self) -> HeaderMap {
        let mut headers = HeaderMap::new();
        for line in &self.lines {
            let text = line
                .iter()
                .map(|(entry, before, after)| {
                    let entry = match entry {
                        Entry::Trusted(w) | Entry::Untrusted(w) => w.text(),
                        Entry::Garbage(g) => g.clone(),
                    };
                    format!("{before}{entry}{after}")
                })
                .collect::<Vec<_>>()
                .join(",");
            let value = HeaderValue::from_str(&text)
                .unwrap_or_else(|err| panic!("{text:?} is not a header value: {err}"));
            headers.append("x-forwarded-for", value);
        }
        headers
    }

    /// The right-most untrusted entry, else the peer, as IPv4 when IPv4.
    fn expected(&self) -> IpAddr {
        self.lines
            .iter()
            .flatten()
            .rev()
            .find_map(|(entry, _, _)| match entry {
                Entry::Untrusted(w) => Some(w.ip),
                _ => None,
            })
            .unwrap_or(self.peer.ip)
    }
}

fn scenario() -> impl Strategy<Value = Scenario> {
    proptest::collection::vec(trusted_net(), 1..4).prop_flat_map(|nets| {
        let trusted_ip = (any::<Index>(), any::<u128>()).prop_map({
            let nets = nets.clone();
            move |(which, bits)| inside(nets[which.index(nets.len())].net, bits)
        });
        let entry = prop_oneof![
            3 => written(trusted_ip.clone()).prop_map(Entry::Trusted),
            2 => written(untrusted_ip()).prop_map(Entry::Untrusted),
            1 => garbage().prop_map(Entry::Garbage),
        ];
        let space = select(vec!["", "", " ", "  ", "\t"]);
        let line = proptest::collection::vec((entry, space.clone(), space), 0..5);
        (
            Just(nets),
            written(trusted_ip),
            proptest::collection::vec(line, 0..4),
        )
            .prop_map(|(nets, peer, lines)| Scenario { nets, peer, lines })
    })
}

/// `X-Forwarded-For` lines of arbitrary bytes (those that are header values at all), of
/// address-like text, or of lists of addresses (in any form) and garbage.
fn forwarded_bytes() -> impl Strategy<Value = HeaderMap> {
    let entry = prop_oneof![written(any::<IpAddr>()).prop_map(Written::text), garbage(),];
    let value = prop_oneof![
        proptest::collection::vec(any::<u8>(), 0..64),
        "[0-9a-fA-F:., \t%\\[\\]]{0,48}".prop_map(String::into_bytes),
        proptest::collection::vec(entry, 0..6).prop_map(|entries| entries.join(", ").into_bytes()),
    ];
    proptest::collection::vec(value, 0..4).prop_map(|values| {
        let mut headers = HeaderMap::new();
        for value in values {
            if let Ok(value) = HeaderValue::from_bytes(&value) {
                headers.append("x-forwarded-for", value);
            }
        }
        headers
    })
}

fn any_net() -> impl Strategy<Value = IpNet> {
    prop_oneof![
        (any::<Ipv4Addr>(), 0..=32u8)
            .prop_map(|(a, p)| IpNet::V4(Ipv4Net::new(a, p).unwrap_or_default())),
        (any::<Ipv6Addr>(), 0..=128u8)
            .prop_map(|(a, p)| IpNet::V6(Ipv6Net::new(a, p).unwrap_or_default())),
        // IPv4 networks written IPv4-mapped.
        (any::<Ipv4Addr>(), 96..=128u8).prop_map(|(a, p)| {
            IpNet::V6(Ipv6Net::new(a.to_ipv6_mapped(), p).unwrap_or_default())
        }),
        // IPv6 networks holding all the IPv4-mapped addresses.
        (
            select(vec![
                Ipv6Addr::UNSPECIFIED,
                Ipv4Addr::UNSPECIFIED.to_ipv6_mapped()
            ]),
            0..=96u8
        )
            .prop_map(|(a, p)| IpNet::V6(Ipv6Net::new(a, p).unwrap_or_default().trunc())),
    ]
}

/// Networks, and a peer that is any address or one inside one of them.
fn peer_and_nets() -> impl Strategy<Value = (IpAddr, Vec<IpNet>)> {
    proptest::collection::vec(any_net(), 0..4).prop_flat_map(|nets| {
        let in_one = (any::<Index>(), any::<u128>(), any::<bool>()).prop_map({
            let nets = nets.clone();
            move |(which, bits, mapped)| match nets.get(which.index(nets.len().max(1))) {
                Some(net) => Written {
                    ip: inside(*net, bits),
                    mapped,
                    upper: false,
                }
                .as_ip(),
                None => IpAddr::V6(Ipv6Addr::from(bits)),
            }
        });
        (prop_oneof![any::<IpAddr>(), in_one], Just(nets))
    })
}

proptest! {
    #![proptest_config(config(1024))]

    #[test]
    fn client_ip_never_panics_and_answers_the_peer_or_a_listed_address(
        (peer, nets) in peer_and_nets(),
        headers in forwarded_bytes(),
    ) {
        let client = client_ip(peer, &headers, &nets);
        prop_assert_eq!(client, client.to_canonical(), "not canonical");
        let listed = headers
            .get_all("x-forwarded-for")
            .iter()
            .flat_map(|v| v.as_bytes().split(|b| *b == b','))
            .filter_map(|entry| std::str::from_utf8(entry).ok())
            .filter_map(|entry| entry.trim().parse::<IpAddr>().ok())
            .any(|ip| ip.to_canonical() == client);
        prop_assert!(client == peer.to_canonical() || listed, "{client} came from nowhere");
    }

    #[test]
    fn untrusted_peers_are_answered_with_themselves(
        nets in proptest::collection::vec(trusted_net(), 0..4),
        peer in written(untrusted_ip()),
        arbitrary in forwarded_bytes(),
        chain in scenario(),
    ) {
        let nets: Vec<IpNet> = nets.iter().map(|n| n.as_net()).collect();
        prop_assert_eq!(client_ip(peer.as_ip(), &arbitrary, &nets), peer.ip);
        prop_assert_eq!(client_ip(peer.as_ip(), &chain.headers(), &nets), peer.ip);
        // Trusting the chain's networks changes nothing for a peer outside them.
        prop_assert_eq!(client_ip(peer.as_ip(), &chain.headers(), &chain.nets()), peer.ip);
    }

    #[test]
    fn trusted_peers_are_answered_with_the_rightmost_untrusted_entry(scenario in scenario()) {
        let client = client_ip(scenario.peer.as_ip(), &scenario.headers(), &scenario.nets());
        prop_assert_eq!(client, scenario.expected());
    }
}

// ---------------------------------------------------------------------------------------
// Tokens
// ---------------------------------------------------------------------------------------

const SECRET: &[u8] = b"properties-secret-0123456789abcdef";

thread_local! {
    /// One runtime and one service per test thread (proptest runs a test's cases on one).
    static RUNTIME: tokio::runtime::Runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap_or_else(|err| panic!("a runtime: {err}"));
    static TOKENS: RefCell<Option<TokenService>> = const { RefCell::new(None) };
}

fn token_service() -> TokenService {
    let config = TokenConfig {
        secret: SECRET.to_vec(),
        ephemeral_secret: false,
        access_ttl: Duration::from_secs(600),
        refresh_ttl: Duration::from_secs(3600),
        refresh_max_lifetime: Duration::from_secs(7200),
    };
    let metrics = Metrics::new(false).unwrap_or_else(|err| panic!("metrics: {err:#}"));
    TokenService::new(
        &config,
        KvStore::in_process(),
        "p",
        metrics.token_verifications,
    )
}

/// Runs `f` with this thread's service on this thread's runtime.
fn with_tokens<T>(f: impl AsyncFnOnce(&TokenService) -> T) -> T {
    TOKENS.with(|cell| {
        let mut service = cell.borrow_mut();
        let service = service.get_or_insert_with(token_service);
        RUNTIME.with(|rt| rt.block_on(f(service)))
    })
}

fn issue(subject: &str, kind: TokenKind) -> String {
    with_tokens(async |s| s.issue(subject, kind).await)
        .unwrap_or_else(|err| panic!("issuing: {err}"))
        .token
}

fn verify(token: &str, kind: TokenKind) -> Result<Claims, TokenError> {
    with_tokens(async |s| s.verify(token, kind).await)
}

fn kind() -> impl Strategy<Value = TokenKind> {
    select(vec![TokenKind::Access, TokenKind::Refresh])
}

fn other(kind: TokenKind) -> TokenKind {
    match kind {
        TokenKind::Access => TokenKind::Refresh,
        TokenKind::Refresh => TokenKind::Access,
    }
}

/// base64url without padding, as JWS segments are written.
fn b64url(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let mut out = String::new();
    for chunk in bytes.chunks(3) {
        let n = chunk
            .iter()
            .enumerate()
            .fold(0u32, |n, (i, b)| n | u32::from(*b) << (16 - 8 * i));
        for i in 0..=chunk.len() {
            out.push(char::from(ALPHABET[(n >> (18 - 6 * i)) as usize & 63]));
        }
    }
    out
}

/// The claims of a genuine token, as JSON.
fn claims_of(token: &str) -> serde_json::Value {
    jsonwebtoken::dangerous::insecure_decode::<serde_json::Value>(token)
        .unwrap_or_else(|err| panic!("decoding {token}: {err}"))
        .claims
}

fn jwt_shaped() -> impl Strategy<Value = String> {
    let segment = "[A-Za-z0-9_-]{0,80}";
    prop_oneof![
        (segment, segment, segment).prop_map(|(h, p, s)| format!("{h}.{p}.{s}")),
        // A real header and claims-like JSON, unsigned or signed with junk.
        (
            select(vec!["HS256", "none", "HS384"]),
            any::<String>(),
            any::<u64>(),
            "[A-Za-z0-9_-]{0,60}",
        )
            .prop_map(|(alg, sub, exp, sig)| {
                let header = b64url(format!(r#"{{"alg":"{alg}","typ":"JWT"}}"#).as_bytes());
                let claims = serde_json::json!({
                    "sub": sub, "iat": 0, "nbf": 0, "exp": exp, "jti": "x",
                    "iss": "plinth", "aud": "plinth-api", "type": "access", "gen": 0,
                });
                format!("{header}.{}.{sig}", b64url(claims.to_string().as_bytes()))
            }),
        "[A-Za-z0-9_.=+/-]{0,200}",
    ]
}

/// One edit of a token: replace, delete or insert a character.
#[derive(Debug, Clone)]
enum Edit {
    Replace(Index, char),
    Delete(Index),
    Insert(Index, char),
}

fn edit() -> impl Strategy<Value = Edit> {
    let ch = prop_oneof![
        4 => select(
            "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
                .chars()
                .collect::<Vec<_>>()
        ),
        1 => select(vec!['.', '=', '+', '/', ' ']),
        1 => any::<char>(),
    ];
    prop_oneof![
        4 => (any::<Index>(), ch.clone()).prop_map(|(i, c)| Edit::Replace(i, c)),
        1 => any::<Index>().prop_map(Edit::Delete),
        1 => (any::<Index>(), ch).prop_map(|(i, c)| Edit::Insert(i, c)),
    ]
}

impl Edit {
    /// The edited token (a replacement by the same character takes another one).
    fn apply(&self, token: &str) -> String {
        let mut chars: Vec<char> = token.chars().collect();
        match *self {
            Self::Replace(at, c) => {
                let at = at.index(chars.len());
                chars[at] = match c {
                    c if c != chars[at] => c,
                    'A' => 'B',
                    _ => 'A',
                };
            }
            Self::Delete(at) => {
                chars.remove(at.index(chars.len()));
            }
            Self::Insert(at, c) => chars.insert(at.index(chars.len() + 1), c),
        }
        chars.into_iter().collect()
    }
}

proptest! {
    #![proptest_config(config(512))]

    #[test]
    fn arbitrary_strings_never_verify(
        token in prop_oneof![any::<String>(), jwt_shaped()],
        kind in kind(),
    ) {
        prop_assert_eq!(verify(&token, kind).err(), Some(TokenError::Invalid));
    }

    #[test]
    fn issued_tokens_verify_as_their_kind_only(subject in any::<String>(), kind in kind()) {
        let issued = with_tokens(async |s| s.issue(&subject, kind).await)
            .map_err(|err| TestCaseError::fail(format!("issuing: {err}")))?;
        let claims = verify(&issued.token, kind)
            .map_err(|err| TestCaseError::fail(format!("verifying: {err}")))?;
        prop_assert_eq!(&claims.subject, &subject);
        prop_assert_eq!(&claims.token_id, &issued.claims.token_id);
        prop_assert_eq!(claims.kind, kind);
        prop_assert_eq!(claims.expires_at, issued.claims.expires_at);
        prop_assert_eq!(verify(&issued.token, other(kind)).err(), Some(TokenError::WrongKind));
    }

    #[test]
    fn revoking_a_subject_revokes_only_its_tokens_of_that_kind(
        revoked in any::<String>(),
        bystander in any::<String>(),
        kind in kind(),
    ) {
        prop_assume!(revoked != bystander);
        // Subjects are fresh per case: nothing of another case's revocations applies.
        let nonce = uuid::Uuid::new_v4();
        let revoked = format!("{revoked}{nonce}");
        let bystander = format!("{bystander}{nonce}");
        let target = issue(&revoked, kind);
        let same_subject_other_kind = issue(&revoked, other(kind));
        let other_subject = issue(&bystander, kind);
        with_tokens(async |s| s.revoke_subject(&revoked, kind).await)
            .map_err(|err| TestCaseError::fail(format!("revoking: {err}")))?;
        prop_assert_eq!(verify(&target, kind).err(), Some(TokenError::Revoked));
        prop_assert!(verify(&same_subject_other_kind, other(kind)).is_ok());
        prop_assert!(verify(&other_subject, kind).is_ok());
        // Tokens issued after the revocation are good.
        prop_assert!(verify(&issue(&revoked, kind), kind).is_ok());
    }

    #[test]
    fn any_single_character_change_is_refused(
        subject in "[a-z0-9]{1,12}",
        kind in kind(),
        edit in edit(),
    ) {
        let token = issue(&subject, kind);
        let edited = edit.apply(&token);
        prop_assert_ne!(&edited, &token);
        prop_assert_eq!(
            verify(&edited, kind).err(),
            Some(TokenError::Invalid),
            "{:?} of {} gives {}",
            edit,
            token,
            edited
        );
    }

    #[test]
    fn the_same_claims_signed_with_another_secret_are_refused(
        subject in "[a-z0-9]{1,12}",
        kind in kind(),
        secret in proptest::collection::vec(any::<u8>(), 0..64),
    ) {
        prop_assume!(secret != SECRET);
        let claims = claims_of(&issue(&subject, kind));
        let header = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256);
        let sign = |secret: &[u8]| {
            jsonwebtoken::encode(&header, &claims, &jsonwebtoken::EncodingKey::from_secret(secret))
                .unwrap_or_else(|err| panic!("signing: {err}"))
        };
        // The re-signing itself is sound: with the host's secret the token verifies.
        prop_assert!(verify(&sign(SECRET), kind).is_ok());
        prop_assert_eq!(verify(&sign(&secret), kind).err(), Some(TokenError::Invalid));
    }

    #[test]
    fn the_same_claims_under_another_algorithm_are_refused(
        subject in "[a-z0-9]{1,12}",
        kind in kind(),
        alg in select(vec!["none", "None", "NONE", "nOnE", "HS384", "HS512", "RS256", "ES256", "PS256", "EdDSA"]),
        typ in select(vec![None, Some("JWT"), Some("jwt")]),
        signature in 0..3u8,
    ) {
        let token = issue(&subject, kind);
        let mut parts = token.split('.');
        let (_, payload, genuine) = (
            parts.next().unwrap_or_default(),
            parts.next().unwrap_or_default(),
            parts.next().unwrap_or_default(),
        );
        let forged = match (alg, signature) {
            // A genuine signature under the host's secret, with the algorithm it names.
            ("HS384" | "HS512", 2) => {
                let algorithm = if alg == "HS384" {
                    jsonwebtoken::Algorithm::HS384
                } else {
                    jsonwebtoken::Algorithm::HS512
                };
                let mut header = jsonwebtoken::Header::new(algorithm);
                header.typ = typ.map(str::to_owned);
                jsonwebtoken::encode(
                    &header,
                    &claims_of(&token),
                    &jsonwebtoken::EncodingKey::from_secret(SECRET),
                )
                .unwrap_or_else(|err| panic!("signing: {err}"))
            }
            _ => {
                let header = match typ {
                    Some(typ) => format!(r#"{{"alg":"{alg}","typ":"{typ}"}}"#),
                    None => format!(r#"{{"alg":"{alg}"}}"#),
                };
                let signature = if signature == 0 { "" } else { genuine };
                format!("{}.{payload}.{signature}", b64url(header.as_bytes()))
            }
        };
        prop_assert_eq!(verify(&forged, kind).err(), Some(TokenError::Invalid), "{}", forged);
    }
}

#[test]
fn b64url_matches_the_jws_encoding() {
    // The genuine header of every token the host issues.
    let token = issue("b64", TokenKind::Access);
    let header = token.split('.').next().unwrap_or_default();
    assert_eq!(b64url(br#"{"typ":"JWT","alg":"HS256"}"#), header);
    assert_eq!(b64url(b""), "");
    assert_eq!(b64url(b"f"), "Zg");
    assert_eq!(b64url(b"fo"), "Zm8");
    assert_eq!(b64url(b"foo"), "Zm9v");
    assert_eq!(b64url(&[0xfb, 0xff]), "-_8");
}
