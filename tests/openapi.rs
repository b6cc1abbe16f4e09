//! The contract as served: `/openapi.json` describes exactly the routes the host serves (its
//! route table, as the admin API lists it), follows a reload, refuses a plugin whose
//! description does not hold, and `/docs` is a page whose every file comes from the host.

use std::collections::BTreeSet;

use plinth_tests::{PluginsDir, TestHost, json_body};
use reqwest::Method;
use serde_json::Value;

const HOST_ENDPOINTS: [(&str, &str); 7] = [
    ("GET", "/health"),
    ("GET", "/ready"),
    ("GET", "/admin/plugins"),
    ("POST", "/admin/plugins/{name}/reload"),
    ("GET", "/admin/fleet"),
    ("GET", "/openapi.json"),
    ("GET", "/docs"),
];

async fn document(host: &TestHost) -> Value {
    let response = host.get("/openapi.json").await;
    assert_eq!(response.status(), 200);
    assert_eq!(
        response.headers()["content-type"],
        "application/json; charset=utf-8"
    );
    json_body(response).await
}

/// Every (METHOD, path) the document has an operation for.
fn operations(document: &Value) -> BTreeSet<(String, String)> {
    let mut operations = BTreeSet::new();
    for (path, item) in document["paths"].as_object().expect("paths") {
        for method in item.as_object().expect("a path item").keys() {
            operations.insert((method.to_ascii_uppercase(), path.clone()));
        }
    }
    operations
}

fn operation<'a>(document: &'a Value, method: &str, path: &str) -> &'a Value {
    let operation = &document["paths"][path][method.to_ascii_lowercase()];
    assert!(operation.is_object(), "no {method} {path} in the document");
    operation
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_document_describes_exactly_the_route_table() {
    // `counter` describes nothing about its routes: it is listed all the same.
    let (_plugins, host, root) =
        TestHost::start_admin(&["auth", "users", "hello", "counter"]).await;
    let document = document(&host).await;
    assert_eq!(document["openapi"], "3.1.0");

    let table = host.get_as("/admin/plugins", &root.access).await;
    table.expect(200, None);
    let mut expected: BTreeSet<(String, String)> = HOST_ENDPOINTS
        .iter()
        .map(|(m, p)| ((*m).to_owned(), (*p).to_owned()))
        .collect();
    for plugin in table.body.as_array().expect("plugins") {
        for route in plugin["routes"].as_array().expect("routes") {
            expected.insert((
                route["method"].as_str().expect("method").to_owned(),
                route["path"].as_str().expect("path").to_owned(),
            ));
        }
    }
    assert!(expected.len() > HOST_ENDPOINTS.len() + 15, "{expected:?}");
    assert_eq!(operations(&document), expected);

    // One operation id per operation: client generators name their functions after them.
    let mut ids = BTreeSet::new();
    for (method, path) in &expected {
        let id = operation(&document, method, path)["operationId"]
            .as_str()
            .expect("an operationId")
            .to_owned();
        assert!(ids.insert(id.clone()), "operationId {id} used twice");
    }

    // The host's own answers, in the shared error shape, on every plugin route...
    let me = operation(&document, "GET", "/api/v1/users/me");
    assert_eq!(me["security"], serde_json::json!([{"bearerAuth": []}]));
    for status in ["401", "429", "500", "503", "504"] {
        assert!(
            me["responses"][status].is_object(),
            "GET /me has no {status}"
        );
    }
    assert_eq!(
        me["responses"]["200"]["content"]["application/json"]["schema"]["$ref"],
        "#/components/schemas/User"
    );
    // ... 401 only where a token is looked at, 413 only where a body is taken.
    let register = operation(&document, "POST", "/api/v1/auth/register");
    assert!(register.get("security").is_none());
    assert!(register["responses"]["401"].is_null());
    assert!(register["responses"]["413"].is_object());
    assert!(me["responses"]["413"].is_null());
    assert_eq!(
        register["requestBody"]["content"]["application/json"]["schema"]["$ref"],
        "#/components/schemas/Registration"
    );
    assert_eq!(
        register["responses"]["409"]["content"]["application/json"]["schema"]["$ref"],
        "#/components/schemas/Error"
    );
    assert_eq!(
        register["responses"]["422"]["content"]["application/json"]["schema"]["$ref"],
        "#/components/schemas/ValidationError"
    );
    let logout = operation(&document, "POST", "/api/v1/auth/logout");
    assert_eq!(
        logout["security"],
        serde_json::json!([{}, {"bearerAuth": []}])
    );
    let login = operation(&document, "POST", "/api/v1/auth/login");
    let media_types: Vec<&String> = login["requestBody"]["content"]
        .as_object()
        .expect("content")
        .keys()
        .collect();
    assert_eq!(
        media_types,
        ["application/json", "application/x-www-form-urlencoded"]
    );

    // Path parameters come from the pattern, typed where the manifest says so.
    let read_user = operation(&document, "GET", "/api/v1/users/{id}");
    assert_eq!(read_user["parameters"][0]["name"], "id");
    assert_eq!(read_user["parameters"][0]["in"], "path");
    assert_eq!(read_user["parameters"][0]["schema"]["type"], "integer");
    let counted = operations(&document)
        .into_iter()
        .find(|(_, path)| path.starts_with("/counter"))
        .expect("a counter route");
    let undescribed = operation(&document, &counted.0, &counted.1);
    assert!(undescribed["responses"]["default"].is_object());
    assert_eq!(undescribed["tags"], serde_json::json!(["counter"]));

    // auth and users ship the same schemas: one `User`, no qualified copies.
    let schemas = document["components"]["schemas"]
        .as_object()
        .expect("schemas");
    assert!(schemas.contains_key("User") && schemas.contains_key("Error"));
    assert!(
        !schemas.keys().any(|name| name.contains('.')),
        "{schemas:?}"
    );
    // Every reference in the document resolves.
    let text = document.to_string();
    for reference in text.split("\"$ref\":\"").skip(1) {
        let target = &reference[..reference.find('"').expect("a closing quote")];
        let pointer = target.strip_prefix('#').expect("a local reference");
        assert!(
            document.pointer(pointer).is_some(),
            "{target} does not resolve"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_updates_the_document_and_a_bad_description_is_refused() {
    let (plugins, host, root) = TestHost::start_admin(&["auth", "users", "hello"]).await;
    let before = document(&host).await;
    assert_eq!(
        operation(&before, "GET", "/hello/{name}")["summary"],
        "A greeting"
    );

    let manifest_path = plugins.path().join("hello/plugin.toml");
    let manifest = std::fs::read_to_string(&manifest_path).expect("manifest");
    let changed = manifest
        .replace(
            "summary = \"A greeting\"",
            "summary = \"A warmer greeting\"",
        )
        .replace("version = \"1.0.0\"", "version = \"1.1.0\"");
    std::fs::write(&manifest_path, &changed).expect("write");
    host.admin_reload("hello", &root.access)
        .await
        .expect(200, None);
    let after = document(&host).await;
    assert_eq!(
        operation(&after, "GET", "/hello/{name}")["summary"],
        "A warmer greeting"
    );

    // A description that does not hold refuses the new version, with the reason; the old
    // one keeps serving, and the document keeps describing it.
    for (broken, reason) in [
        (
            changed.replace(
                "schema = { type = \"object\"",
                "schema = { type = \"objekt\"",
            ),
            "not a valid JSON Schema",
        ),
        (
            changed.replace("params.name = {", "params.nom = {"),
            "no `{nom}` segment",
        ),
        (
            changed.replace(
                "responses.200 = \"The body as sent.\"",
                "responses.200 = { description = \"x\", schema = \"Echo\" }",
            ),
            "not in the plugin's `schemas` file",
        ),
    ] {
        assert_ne!(broken, changed, "the edit for `{reason}` applies");
        std::fs::write(&manifest_path, &broken).expect("write");
        let reply = host.admin_reload("hello", &root.access).await;
        reply.expect(422, Some("VALIDATION_ERROR"));
        assert!(reply.body.to_string().contains(reason), "{}", reply.body);
    }
    assert_eq!(host.get("/hello/x").await.status(), 200);
    assert_eq!(document(&host).await, after);

    // The schemas file is part of the description: a broken one refuses the plugin too.
    let users_dir = plugins.path().join("users");
    std::fs::write(users_dir.join("schemas.json"), r#"{"User": {"type": 7}}"#).expect("write");
    let reply = host.admin_reload("users", &root.access).await;
    reply.expect(422, Some("VALIDATION_ERROR"));
    assert!(
        reply.body.to_string().contains("schemas.json"),
        "{}",
        reply.body
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plugins_defining_one_schema_name_differently_keep_their_own() {
    let plugins = PluginsDir::with(&["hello"]);
    for (dir, schema) in [("greeter-a", "string"), ("greeter-b", "integer")] {
        let plugin = plugins.deploy_as("hello", dir, |manifest| {
            manifest
                .replace("name = \"hello\"", &format!("name = \"{dir}\""))
                .replace("/hello/{name}", &format!("/{dir}/{{name}}"))
                .replace("/echo", &format!("/{dir}/echo"))
                .replace(
                    "operation_id = \"",
                    &format!("operation_id = \"{}_", dir.replace('-', "_")),
                )
                .replace("component =", "schemas = \"schemas.json\"\ncomponent =")
                .replace("params.name = {", "params.name = { schema = \"Name\",")
        });
        std::fs::write(
            plugin.join("schemas.json"),
            format!(r#"{{"Name": {{"type": "{schema}"}}, "Shared": {{"type": "boolean"}}}}"#),
        )
        .expect("write");
    }
    let host = TestHost::start(&plugins);
    let document = document(&host).await;
    let schemas = &document["components"]["schemas"];
    assert_eq!(schemas["greeter-a.Name"]["type"], "string");
    assert_eq!(schemas["greeter-b.Name"]["type"], "integer");
    assert!(schemas["Name"].is_null());
    assert_eq!(schemas["Shared"]["type"], "boolean");
    assert_eq!(
        operation(&document, "GET", "/greeter-b/{name}")["parameters"][0]["schema"]["$ref"],
        "#/components/schemas/greeter-b.Name"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_docs_page_loads_only_files_the_host_serves() {
    let host = TestHost::start(&PluginsDir::with(&["hello"]));
    let page = host.get("/docs").await;
    assert_eq!(page.status(), 200);
    assert_eq!(page.headers()["content-type"], "text/html; charset=utf-8");
    let policy = page.headers()["content-security-policy"]
        .to_str()
        .expect("ascii")
        .to_owned();
    assert!(policy.contains("script-src 'self'"), "{policy}");
    let html = page.text().await.expect("body");

    // Every script and stylesheet the page names, relative to it, is served here.
    let mut files = Vec::new();
    for attribute in ["src=\"", "href=\""] {
        for rest in html.split(attribute).skip(1) {
            files.push(rest[..rest.find('"').expect("closing quote")].to_owned());
        }
    }
    assert!(files.len() >= 3, "{files:?}");
    for file in &files {
        assert!(!file.contains("//"), "{file} is not the host's own");
        let response = host.get(&format!("/{file}")).await;
        assert_eq!(response.status(), 200, "{file}");
        let content_type = response.headers()["content-type"]
            .to_str()
            .expect("ascii")
            .to_owned();
        if file.ends_with(".js") {
            assert!(content_type.starts_with("text/javascript"), "{file}");
        }
    }
    // Our own script points Swagger UI at this host's document and nowhere else.
    let init = host.get("/docs/init.js").await.text().await.expect("body");
    assert!(init.contains("url: \"openapi.json\""), "{init}");
    assert!(init.contains("validatorUrl: null"), "{init}");
    assert!(!init.contains("http"), "{init}");
    let bundle = host.get("/docs/swagger-ui-bundle.js").await;
    assert!(
        bundle
            .text()
            .await
            .expect("body")
            .contains("SwaggerUIBundle")
    );

    assert_eq!(host.get("/docs/nope.js").await.status(), 404);
    let post = host.call(Method::POST, "/openapi.json", None, None).await;
    post.expect(405, Some("METHOD_NOT_ALLOWED"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn both_endpoints_can_be_switched_off() {
    let plugins = PluginsDir::with(&["hello"]);
    let host = TestHost::builder()
        .env("DOCS_ENABLED", "false")
        .start(&plugins);
    assert_eq!(host.get("/docs").await.status(), 404);
    assert_eq!(host.get("/docs/swagger-ui-bundle.js").await.status(), 404);
    let document = document(&host).await;
    assert!(document["paths"]["/docs"].is_null());
    drop(host);

    let host = TestHost::builder()
        .env("OPENAPI_ENABLED", "false")
        .env("DOCS_ENABLED", "false")
        .start(&plugins);
    assert_eq!(host.get("/openapi.json").await.status(), 404);
    assert_eq!(host.get("/docs").await.status(), 404);
    drop(host);

    let (status, output) = TestHost::builder()
        .env("OPENAPI_ENABLED", "false")
        .start_expecting_failure(&plugins);
    assert!(!status.success());
    assert!(output.contains("DOCS_ENABLED"), "{output}");
}
