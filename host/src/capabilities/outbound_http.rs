//! `outbound_http`: requests a standard `wasi:http` component sends out
//! (`wasi:http/outgoing-handler`).
//!
//! The interface is linked for every `wasi:http` component (the standard `proxy` world
//! imports it whatever the code does), so the decision is made per request: a request
//! leaves the host only for an authority the manifest grants (`outbound_http = [...]`) and
//! the operator policy allows. Anything else is answered `HTTP-request-denied` before a
//! connection is opened or a name looked up, and logged with the plugin's name. A grant
//! `"api.example.com"` allows that host on its scheme's default port (443 for https, 80
//! for http); `"api.example.com:8443"` allows that port only. Plinth-world plugins cannot
//! import it at all.

use std::collections::BTreeSet;
use std::sync::Arc;

use http_body_util::BodyExt;
use wasmtime_wasi_http::{Error, RequestOptions, WasiBody, WasiHttpHooks};

/// What one plugin version may reach, from its resolved grant.
#[derive(Debug, Clone, Default)]
pub struct PluginOutbound {
    plugin: Arc<str>,
    allowed: Arc<BTreeSet<String>>,
}

impl PluginOutbound {
    pub fn new(plugin: Arc<str>, allowed: &BTreeSet<String>) -> Self {
        Self {
            plugin,
            // Normalised (lower case) when the grant was resolved.
            allowed: Arc::new(allowed.clone()),
        }
    }

    pub fn instance(&self) -> OutboundInstance {
        OutboundInstance {
            plugin: self.plugin.clone(),
            allowed: self.allowed.clone(),
        }
    }
}

/// A request's view of `outbound_http`: the `wasi:http` hooks of its store.
#[derive(Debug)]
pub struct OutboundInstance {
    plugin: Arc<str>,
    allowed: Arc<BTreeSet<String>>,
}

impl OutboundInstance {
    /// Whether `uri` names a granted authority (`host`, on its scheme's default port, or
    /// `host:port`).
    fn allows(&self, uri: &http::Uri) -> bool {
        let Some(authority) = uri.authority() else {
            return false;
        };
        let host = authority.host().to_ascii_lowercase();
        let default_port = match uri.scheme_str() {
            Some("https") => 443,
            Some("http") => 80,
            _ => return false,
        };
        let port = authority.port_u16().unwrap_or(default_port);
        (port == default_port && self.allowed.contains(&host))
            || self.allowed.contains(&format!("{host}:{port}"))
    }
}

type Sent = Box<
    dyn Future<
            Output = Result<
                (
                    http::Response<WasiBody>,
                    Box<dyn Future<Output = Result<(), Error>> + Send>,
                ),
                Error,
            >,
        > + Send,
>;

impl WasiHttpHooks for OutboundInstance {
    fn send_request(
        &mut self,
        request: http::Request<WasiBody>,
        options: Option<RequestOptions>,
        fut: Box<dyn Future<Output = Result<(), Error>> + Send>,
    ) -> Sent {
        drop(fut);
        if !self.allows(request.uri()) {
            tracing::warn!(
                plugin = %self.plugin,
                authority = request.uri().authority().map(|a| a.as_str()).unwrap_or(""),
                "outbound HTTP refused: not granted by the manifest's `outbound_http`"
            );
            return Box::new(async { Err(Error::HttpRequestDenied) });
        }
        Box::new(async move {
            let (response, io) = wasmtime_wasi_http::default_send_request(request, options).await?;
            Ok((
                response.map(BodyExt::boxed_unsync),
                Box::new(io) as Box<dyn Future<Output = _> + Send>,
            ))
        })
    }
}

/// Checks one `outbound_http` entry (of a grant or of the policy): `host` or `host:port`,
/// nothing else (no scheme, path, user or wildcard). Returns it in lower case, the form
/// grants, the policy and requests are compared in.
pub fn normalize_authority(entry: &str) -> anyhow::Result<String> {
    let parsed: http::uri::Authority = entry
        .parse()
        .map_err(|_| anyhow::anyhow!("`{entry}` is not a host or host:port"))?;
    anyhow::ensure!(
        parsed.as_str() == entry
            && !entry.contains('@')
            && !entry.contains('*')
            && !parsed.host().is_empty(),
        "`{entry}` is not a host or host:port (no scheme, path, user or wildcard)"
    );
    Ok(entry.to_ascii_lowercase())
}

/// Every entry of an `outbound_http` list checked and normalised ([`normalize_authority`]).
pub fn normalize_authorities(entries: &BTreeSet<String>) -> anyhow::Result<BTreeSet<String>> {
    entries
        .iter()
        .map(|entry| normalize_authority(entry))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn instance(allowed: &[&str]) -> OutboundInstance {
        let allowed = allowed.iter().map(|s| normalize_authority(s));
        PluginOutbound::new(Arc::from("p"), &allowed.flatten().collect()).instance()
    }

    #[test]
    fn only_granted_authorities_on_their_ports() -> anyhow::Result<()> {
        let outbound = instance(&["api.example.com", "127.0.0.1:8080"]);
        for (uri, allowed) in [
            ("https://api.example.com/x", true),
            ("http://API.example.com/x", true),
            ("https://api.example.com:443/x", true),
            ("https://api.example.com:8443/x", false),
            ("https://evil.example.com/x", false),
            ("https://api.example.com.evil.io/x", false),
            ("http://127.0.0.1:8080/", true),
            ("http://127.0.0.1/", false),
            ("http://127.0.0.1:8081/", false),
        ] {
            assert_eq!(outbound.allows(&uri.parse()?), allowed, "{uri}");
        }
        assert!(!instance(&[]).allows(&"https://api.example.com/".parse()?));
        Ok(())
    }

    #[test]
    fn entries_are_plain_authorities() {
        for ok in ["api.example.com", "127.0.0.1:8080", "localhost:3000"] {
            assert!(normalize_authority(ok).is_ok(), "{ok}");
        }
        for bad in [
            "https://api.example.com",
            "api.example.com/path",
            "user@api.example.com",
            "*.example.com",
            "",
        ] {
            assert!(normalize_authority(bad).is_err(), "{bad}");
        }
        assert_eq!(
            normalize_authority("API.Example.com:8443").ok().as_deref(),
            Some("api.example.com:8443")
        );
    }
}
