//! Request validation that reports every problem at once, in docs/API.md's 422 shape
//! (FastAPI's): `{"detail": [{"loc": [...], "msg": ..., "type": ...}], "code": "VALIDATION_ERROR"}`.
//!
//! ```ignore
//! let mut body = Fields::from_json_request(&request)?;   // 415 unless sent as JSON
//! let email = body.required_str("email");
//! let name = body.optional_str("full_name");
//! body.finish(&["email", "full_name"])?;   // unknown fields are problems too
//! ```

use serde::Serialize;
use serde_json::{Map, Value};

use crate::{Request, Response};

/// One problem with the request.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct Issue {
    pub loc: Vec<String>,
    pub msg: String,
    #[serde(rename = "type")]
    pub kind: String,
}

impl Issue {
    pub fn new(loc: &[&str], msg: &str, kind: &str) -> Self {
        Self {
            loc: loc.iter().map(|s| (*s).to_owned()).collect(),
            msg: msg.to_owned(),
            kind: kind.to_owned(),
        }
    }
}

/// The 422 response for `issues`.
pub fn unprocessable(issues: Vec<Issue>) -> Response {
    Response::json(
        422,
        &serde_json::json!({ "detail": issues, "code": crate::ErrorCode::ValidationError.as_str() }),
    )
}

/// The fields of a JSON object body (or a form), collecting problems as they are read.
#[derive(Debug)]
pub struct Fields {
    values: Map<String, Value>,
    location: &'static str,
    issues: Vec<Issue>,
}

impl Fields {
    /// The JSON object body of `request`: 415 unless it was sent as JSON (a cross-site HTML
    /// form cannot send that without a CORS preflight), 422 unless it is a JSON object.
    pub fn from_json_request(request: &Request) -> Result<Self, Response> {
        if !request.is_json() {
            return Err(Response::unsupported_media_type(&["application/json"]));
        }
        Self::from_json(&request.body)
    }

    /// A JSON object body; anything else is a 422 at once.
    pub fn from_json(body: &[u8]) -> Result<Self, Response> {
        let value: Value = serde_json::from_slice(body).map_err(|err| {
            unprocessable(vec![Issue::new(
                &["body"],
                &format!("Invalid JSON: {err}"),
                "json_invalid",
            )])
        })?;
        match value {
            Value::Object(values) => Ok(Self {
                values,
                location: "body",
                issues: Vec::new(),
            }),
            _ => Err(unprocessable(vec![Issue::new(
                &["body"],
                "Input should be a JSON object",
                "model_attributes_type",
            )])),
        }
    }

    /// An `application/x-www-form-urlencoded` body: every value is a string.
    pub fn from_form(body: &[u8]) -> Self {
        let values = form_urlencoded::parse(body)
            .map(|(k, v)| (k.into_owned(), Value::String(v.into_owned())))
            .collect();
        Self {
            values,
            location: "body",
            issues: Vec::new(),
        }
    }

    /// Query-string parameters (`location` "query").
    pub fn from_query(query: &str) -> Self {
        let values = form_urlencoded::parse(query.as_bytes())
            .map(|(k, v)| (k.into_owned(), Value::String(v.into_owned())))
            .collect();
        Self {
            values,
            location: "query",
            issues: Vec::new(),
        }
    }

    /// Records a problem with field `name`.
    pub fn invalid(&mut self, name: &str, msg: &str, kind: &str) {
        self.issues
            .push(Issue::new(&[self.location, name], msg, kind));
    }

    pub fn contains(&self, name: &str) -> bool {
        self.values.contains_key(name)
    }

    /// A required string; a missing or non-string value is recorded.
    pub fn required_str(&mut self, name: &str) -> Option<String> {
        match self.values.get(name) {
            None => {
                self.invalid(name, "Field required", "missing");
                None
            }
            Some(Value::String(s)) => Some(s.clone()),
            Some(_) => {
                self.invalid(name, "Input should be a valid string", "string_type");
                None
            }
        }
    }

    /// An optional string: `None` when absent, `Some(None)` when `null`.
    pub fn optional_str(&mut self, name: &str) -> Option<Option<String>> {
        match self.values.get(name) {
            None => None,
            Some(Value::Null) => Some(None),
            Some(Value::String(s)) => Some(Some(s.clone())),
            Some(_) => {
                self.invalid(name, "Input should be a valid string", "string_type");
                None
            }
        }
    }

    /// An optional string that may not be `null` when present.
    pub fn optional_non_null_str(&mut self, name: &str) -> Option<String> {
        match self.optional_str(name) {
            Some(Some(s)) => Some(s),
            Some(None) => {
                self.invalid(name, "Input should be a valid string", "string_type");
                None
            }
            None => None,
        }
    }

    /// An optional boolean (JSON `true`/`false` only).
    pub fn optional_bool(&mut self, name: &str) -> Option<bool> {
        match self.values.get(name) {
            None => None,
            Some(Value::Bool(b)) => Some(*b),
            Some(_) => {
                self.invalid(name, "Input should be a valid boolean", "bool_type");
                None
            }
        }
    }

    /// An optional integer in `range`, read from a JSON number or a query string.
    pub fn optional_int(&mut self, name: &str, min: i64, max: i64) -> Option<i64> {
        let parsed = match self.values.get(name)? {
            Value::Number(n) => n.as_i64(),
            Value::String(s) => s.trim().parse::<i64>().ok(),
            _ => None,
        };
        match parsed {
            None => {
                self.invalid(name, "Input should be a valid integer", "int_parsing");
                None
            }
            Some(v) if v < min => {
                self.invalid(
                    name,
                    &format!("Input should be greater than or equal to {min}"),
                    "greater_than_equal",
                );
                None
            }
            Some(v) if v > max => {
                self.invalid(
                    name,
                    &format!("Input should be less than or equal to {max}"),
                    "less_than_equal",
                );
                None
            }
            Some(v) => Some(v),
        }
    }

    /// Ends validation: unknown fields are problems; any problem is a 422 listing all.
    pub fn finish(mut self, allowed: &[&str]) -> Result<(), Response> {
        let mut extra: Vec<String> = self
            .values
            .keys()
            .filter(|k| !allowed.contains(&k.as_str()))
            .cloned()
            .collect();
        extra.sort();
        for name in extra {
            self.invalid(&name, "Extra inputs are not permitted", "extra_forbidden");
        }
        if self.issues.is_empty() {
            Ok(())
        } else {
            Err(unprocessable(self.issues))
        }
    }

    /// [`finish`](Self::finish), then the values of the `required_*` reads, unwrapped: a
    /// missing or invalid one was recorded as a problem, so when validation passes they are
    /// all there.
    ///
    /// ```ignore
    /// let email = body.required_str("email");
    /// let password = body.required_str("password");
    /// let (email, password) = body.finish_with(&["email", "password"], (email, password))?;
    /// ```
    pub fn finish_with<V: Required>(
        self,
        allowed: &[&str],
        values: V,
    ) -> Result<V::Values, Response> {
        self.finish(allowed)?;
        values.present().ok_or_else(|| {
            Response::internal(
                "Fields::finish_with got an absent value no required_* read recorded as a \
                 problem: pass only the results of required reads",
            )
        })
    }

    /// Like [`finish`](Self::finish) but ignores unknown fields (query strings).
    pub fn finish_lenient(self) -> Result<(), Response> {
        if self.issues.is_empty() {
            Ok(())
        } else {
            Err(unprocessable(self.issues))
        }
    }
}

/// The results of `required_*` reads, as [`Fields::finish_with`] takes them: one
/// `Option` or a tuple of up to four.
pub trait Required {
    type Values;
    /// All the values, or `None` if one is absent.
    fn present(self) -> Option<Self::Values>;
}

impl<A> Required for Option<A> {
    type Values = A;
    fn present(self) -> Option<A> {
        self
    }
}

impl<A, B> Required for (Option<A>, Option<B>) {
    type Values = (A, B);
    fn present(self) -> Option<(A, B)> {
        Some((self.0?, self.1?))
    }
}

impl<A, B, C> Required for (Option<A>, Option<B>, Option<C>) {
    type Values = (A, B, C);
    fn present(self) -> Option<(A, B, C)> {
        Some((self.0?, self.1?, self.2?))
    }
}

impl<A, B, C, D> Required for (Option<A>, Option<B>, Option<C>, Option<D>) {
    type Values = (A, B, C, D);
    fn present(self) -> Option<(A, B, C, D)> {
        Some((self.0?, self.1?, self.2?, self.3?))
    }
}

/// Whether `text` holds a control character (U+0000–U+001F, U+007F), which no text field
/// accepts (docs/API.md "Users"): PostgreSQL cannot store U+0000, and the rule is the same on
/// every backend.
pub fn has_control_chars(text: &str) -> bool {
    text.chars().any(|c| c.is_ascii_control())
}

/// A deliberately plain email check: `local@domain.tld`, no spaces, sane lengths.
pub fn is_valid_email(email: &str) -> bool {
    let Some((local, domain)) = email.rsplit_once('@') else {
        return false;
    };
    let local_ok = !local.is_empty()
        && local.len() <= 64
        && !local.starts_with('.')
        && !local.ends_with('.')
        && !local.contains("..")
        && local
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "!#$%&'*+/=?^_`{|}~.-".contains(c));
    let labels: Vec<&str> = domain.split('.').collect();
    let domain_ok = labels.len() >= 2
        && domain.len() <= 253
        && labels.iter().all(|l| {
            !l.is_empty()
                && l.len() <= 63
                && !l.starts_with('-')
                && !l.ends_with('-')
                && l.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
        })
        && labels
            .last()
            .is_some_and(|tld| tld.len() >= 2 && tld.chars().all(|c| c.is_ascii_alphabetic()));
    local_ok && domain_ok
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finish_with_gives_the_required_values_or_every_problem() {
        let mut body = Fields::from_json(br#"{"email": "a@b.io", "password": "pw"}"#)
            .unwrap_or_else(|_| panic!("a JSON object"));
        let email = body.required_str("email");
        let password = body.required_str("password");
        let values = body.finish_with(&["email", "password"], (email, password));
        assert_eq!(values.ok(), Some(("a@b.io".to_owned(), "pw".to_owned())));

        let mut body = Fields::from_json(br#"{"email": 5, "extra": 1}"#)
            .unwrap_or_else(|_| panic!("a JSON object"));
        let email = body.required_str("email");
        let password = body.required_str("password");
        let refused = body.finish_with(&["email", "password"], (email, password));
        let Err(response) = refused else {
            panic!("invalid input passed")
        };
        assert_eq!(response.status, 422);
        let body: Value = serde_json::from_slice(&response.body).unwrap_or_default();
        let kinds: Vec<&str> = body["detail"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|issue| issue["type"].as_str())
            .collect();
        assert_eq!(kinds, ["string_type", "missing", "extra_forbidden"]);
    }

    #[test]
    fn control_characters() {
        for bad in ["a\u{0}b", "tab\there", "line\n", "\u{1f}", "del\u{7f}"] {
            assert!(has_control_chars(bad), "{bad:?}");
        }
        for ok in ["Ana Pérez", "", "a b", "\u{80}é\u{a0}"] {
            assert!(!has_control_chars(ok), "{ok:?}");
        }
    }

    #[test]
    fn emails() {
        for ok in [
            "ana@example.com",
            "a.b+c@sub.example.org",
            "X_Y@ex-ample.io",
        ] {
            assert!(is_valid_email(ok), "{ok}");
        }
        for bad in [
            "",
            "ana",
            "ana@",
            "@example.com",
            "ana@example",
            "a b@example.com",
            "ana@@example.com",
            "ana@example.c",
            "ana@-example.com",
            ".ana@example.com",
        ] {
            assert!(!is_valid_email(bad), "{bad}");
        }
    }
}
