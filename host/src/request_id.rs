//! `X-Request-Id`: the client's value when it is sane, else a fresh unique id.

use http::HeaderMap;

pub const HEADER: &str = "x-request-id";

/// Longest client-supplied id kept (docs/API.md).
const MAX_LEN: usize = 128;

/// The client's id if it is 1–128 visible ASCII characters, else a new UUIDv7 (unique and
/// time-ordered, so ids sort roughly by arrival in the logs).
pub fn from_headers_or_new(headers: &HeaderMap) -> String {
    headers
        .get(HEADER)
        .and_then(|v| v.to_str().ok())
        .filter(|id| is_sane(id))
        .map(str::to_owned)
        .unwrap_or_else(|| uuid::Uuid::now_v7().to_string())
}

fn is_sane(id: &str) -> bool {
    !id.is_empty() && id.len() <= MAX_LEN && id.bytes().all(|b| b.is_ascii_graphic())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id_for(value: &[u8]) -> String {
        let mut headers = HeaderMap::new();
        if let Ok(value) = http::HeaderValue::from_bytes(value) {
            headers.insert(HEADER, value);
        }
        from_headers_or_new(&headers)
    }

    #[test]
    fn keeps_a_sane_client_id() {
        assert_eq!(id_for(b"abc-123_XYZ:~"), "abc-123_XYZ:~");
        let longest = "a".repeat(128);
        assert_eq!(id_for(longest.as_bytes()), longest);
    }

    #[test]
    fn replaces_an_insane_one() {
        for bad in [
            &b"has space"[..],
            &b""[..],
            "a".repeat(129).as_bytes(),
            b"tab\there",
        ] {
            let id = id_for(bad);
            assert_ne!(id.as_bytes(), bad);
            assert!(uuid::Uuid::parse_str(&id).is_ok(), "{id}");
        }
    }

    #[test]
    fn generated_ids_are_unique() {
        let a = from_headers_or_new(&HeaderMap::new());
        let b = from_headers_or_new(&HeaderMap::new());
        assert_ne!(a, b);
    }
}
