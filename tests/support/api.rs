//! Client helpers for the auth and users API, and a macro that runs a test against both
//! backends.

use serde_json::{Value, json};

use crate::TestHost;

/// Declares `mod sqlite` and `mod postgres`, each with one `#[tokio::test]` per listed
/// async fn taking a `Backend`.
#[macro_export]
macro_rules! on_both_backends {
    ($($name:ident),* $(,)?) => {
        mod sqlite {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    super::$name($crate::Backend::sqlite()).await;
                }
            )*
        }
        mod postgres {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    super::$name($crate::Backend::postgres()).await;
                }
            )*
        }
    };
}

/// A status and a parsed JSON body (`Value::Null` for an empty body).
#[derive(Debug, Clone)]
pub struct Reply {
    pub status: u16,
    pub headers: reqwest::header::HeaderMap,
    pub body: Value,
}

impl Reply {
    async fn from(response: reqwest::Response) -> Self {
        let status = response.status().as_u16();
        let headers = response.headers().clone();
        let text = response.text().await.expect("reading body");
        let body = if text.is_empty() {
            Value::Null
        } else {
            serde_json::from_str(&text).unwrap_or_else(|_| panic!("not JSON ({status}): {text}"))
        };
        Self {
            status,
            headers,
            body,
        }
    }

    pub fn code(&self) -> &str {
        self.body["code"].as_str().unwrap_or_default()
    }

    /// Asserts status (and code when given), with the body in the message.
    #[track_caller]
    pub fn expect(&self, status: u16, code: Option<&str>) -> &Self {
        assert_eq!(self.status, status, "body: {}", self.body);
        if let Some(code) = code {
            assert_eq!(self.code(), code, "body: {}", self.body);
        }
        self
    }
}

/// A token pair as returned by login and refresh.
#[derive(Debug, Clone)]
pub struct Tokens {
    pub access: String,
    pub refresh: String,
}

impl TestHost {
    pub async fn call(
        &self,
        method: reqwest::Method,
        path: &str,
        token: Option<&str>,
        body: Option<Value>,
    ) -> Reply {
        let mut request = self.client.request(method, self.url(path));
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        if let Some(body) = body {
            request = request.json(&body);
        }
        Reply::from(request.send().await.expect("request failed")).await
    }

    pub async fn post_json(&self, path: &str, body: Value) -> Reply {
        self.call(reqwest::Method::POST, path, None, Some(body))
            .await
    }

    pub async fn post_form(&self, path: &str, form: &[(&str, &str)]) -> Reply {
        let response = self
            .client
            .post(self.url(path))
            .form(form)
            .send()
            .await
            .expect("request failed");
        Reply::from(response).await
    }

    pub async fn get_as(&self, path: &str, token: &str) -> Reply {
        self.call(reqwest::Method::GET, path, Some(token), None)
            .await
    }

    /// `POST /admin/plugins/{name}/reload` with `token`.
    pub async fn admin_reload(&self, name: &str, token: &str) -> Reply {
        self.call(
            reqwest::Method::POST,
            &format!("/admin/plugins/{name}/reload"),
            Some(token),
            None,
        )
        .await
    }

    /// Plugin `name`'s entry in `GET /admin/plugins` (read with a superuser's `token`).
    pub async fn admin_plugin(&self, name: &str, token: &str) -> Value {
        let list = self.get_as("/admin/plugins", token).await;
        list.expect(200, None);
        list.body
            .as_array()
            .and_then(|all| all.iter().find(|p| p["name"] == name))
            .unwrap_or_else(|| panic!("plugin `{name}` not listed: {}", list.body))
            .clone()
    }

    pub async fn register(&self, email: &str, username: &str, password: &str) -> Reply {
        self.post_json(
            "/api/v1/auth/register",
            json!({"email": email, "username": username, "password": password}),
        )
        .await
    }

    pub async fn login(&self, login: &str, password: &str) -> Reply {
        self.post_json(
            "/api/v1/auth/login",
            json!({"email": login, "password": password}),
        )
        .await
    }

    /// Logs in and returns the pair (panics unless 200).
    pub async fn tokens(&self, login: &str, password: &str) -> Tokens {
        let reply = self.login(login, password).await;
        reply.expect(200, None);
        Tokens {
            access: reply.body["access_token"]
                .as_str()
                .expect("access")
                .to_owned(),
            refresh: reply.body["refresh_token"]
                .as_str()
                .expect("refresh")
                .to_owned(),
        }
    }

    /// Registers `name@example.com` / `name` / `password-<name>` and logs in.
    pub async fn user(&self, name: &str) -> (Value, Tokens) {
        let password = format!("password-{name}");
        let reply = self
            .register(&format!("{name}@example.com"), name, &password)
            .await;
        reply.expect(201, None);
        let tokens = self.tokens(&format!("{name}@example.com"), &password).await;
        (reply.body, tokens)
    }
}

/// The header and claims of a JWT, decoded without checking its signature (what a client
/// can read of its own token).
pub fn jwt_parts(jwt: &str) -> (Value, Value) {
    use base64::Engine;
    let parts: Vec<&str> = jwt.split('.').collect();
    assert_eq!(parts.len(), 3, "not a JWT: {jwt}");
    let decode = |part: &str| -> Value {
        let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(part)
            .expect("base64url");
        serde_json::from_slice(&bytes).expect("json")
    };
    (decode(parts[0]), decode(parts[1]))
}
