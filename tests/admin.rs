//! The admin API: superusers list plugins and reload one on demand; a refused build
//! changes nothing that serves.

use plinth_tests::{PluginsDir, TestHost};
use reqwest::Method;

async fn start() -> (PluginsDir, TestHost, plinth_tests::api::Tokens) {
    TestHost::start_admin(&["auth", "users", "hello"]).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_superusers_see_the_plugin_list() {
    let (_plugins, host, root) = start().await;
    host.call(Method::GET, "/admin/plugins", None, None)
        .await
        .expect(401, Some("NOT_AUTHENTICATED"));
    let (_, normal) = host.user("nora").await;
    host.get_as("/admin/plugins", &normal.access)
        .await
        .expect(403, Some("FORBIDDEN"));

    let list = host.get_as("/admin/plugins", &root.access).await;
    list.expect(200, None);
    let entries = list.body.as_array().expect("a list");
    let names: Vec<&str> = entries.iter().filter_map(|e| e["name"].as_str()).collect();
    assert_eq!(names, ["auth", "hello", "users"]);
    let hello = &entries[1];
    assert_eq!(hello["version"], "1.0.0");
    assert_eq!(hello["content_hash"].as_str().map(str::len), Some(64));
    assert_eq!(hello["state"], "active");
    assert!(hello["last_error"].is_null());
    assert!(
        hello["loaded_at"]
            .as_str()
            .is_some_and(|t| t.ends_with('Z'))
    );
    assert_eq!(hello["routes"][0]["path"], "/hello/{name}");
    assert_eq!(hello["routes"][0]["method"], "GET");

    // Counters since loading.
    for _ in 0..3 {
        assert_eq!(host.get("/hello/x").await.status(), 200);
    }
    let list = host.get_as("/admin/plugins", &root.access).await;
    assert_eq!(list.body[1]["counters"]["requests"], 3);
    assert_eq!(list.body[1]["counters"]["traps"], 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_swaps_in_the_new_version() {
    let (plugins, host, root) = start().await;
    host.admin_reload("nope", &root.access)
        .await
        .expect(404, Some("NOT_FOUND"));
    let (_, normal) = host.user("olga").await;
    host.admin_reload("hello", &normal.access)
        .await
        .expect(403, Some("FORBIDDEN"));

    let manifest = plugins.path().join("hello/plugin.toml");
    let text = std::fs::read_to_string(&manifest).expect("manifest");
    std::fs::write(
        &manifest,
        text.replace("version = \"1.0.0\"", "version = \"1.1.0\""),
    )
    .expect("write");
    let reply = host.admin_reload("hello", &root.access).await;
    reply.expect(200, None);
    assert_eq!(reply.body["version"], "1.1.0");
    assert_eq!(host.get("/hello/x").await.status(), 200);
    let list = host.get_as("/admin/plugins", &root.access).await;
    assert_eq!(list.body[1]["version"], "1.1.0");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_build_keeps_the_old_version_serving() {
    let (plugins, host, root) = start().await;
    let dir = plugins.path().join("hello");
    let component = std::fs::read(dir.join("hello.wasm")).expect("component");
    let manifest = std::fs::read_to_string(dir.join("plugin.toml")).expect("manifest");

    // Garbage bytes.
    std::fs::write(dir.join("hello.wasm"), b"not a component").expect("write");
    let reply = host.admin_reload("hello", &root.access).await;
    reply.expect(422, Some("VALIDATION_ERROR"));
    assert!(
        reply.body.to_string().contains("not a loadable component"),
        "{}",
        reply.body
    );
    assert_eq!(host.get("/hello/x").await.status(), 200);
    let list = host.get_as("/admin/plugins", &root.access).await;
    assert!(
        list.body[1]["last_error"]
            .as_str()
            .is_some_and(|e| e.contains("not a loadable component")),
        "{}",
        list.body
    );

    // A component importing capabilities the manifest does not grant (auth's, as hello).
    let auth = std::fs::read(plugins.path().join("auth/auth.wasm")).expect("auth component");
    std::fs::write(dir.join("hello.wasm"), auth).expect("write");
    let reply = host.admin_reload("hello", &root.access).await;
    reply.expect(422, Some("VALIDATION_ERROR"));
    assert!(
        reply.body.to_string().contains("does not grant"),
        "{}",
        reply.body
    );

    // A route that conflicts with another plugin.
    std::fs::write(dir.join("hello.wasm"), &component).expect("write");
    std::fs::write(
        dir.join("plugin.toml"),
        format!("{manifest}\n[[route]]\nmethod = \"GET\"\npath = \"/api/v1/users/me\"\n"),
    )
    .expect("write");
    let reply = host.admin_reload("hello", &root.access).await;
    reply.expect(422, Some("VALIDATION_ERROR"));
    assert!(
        reply.body.to_string().contains("route conflict"),
        "{}",
        reply.body
    );

    // Through all of it the old version served, and users still has its route.
    assert_eq!(host.get("/hello/x").await.status(), 200);
    host.get_as("/api/v1/users/me", &root.access)
        .await
        .expect(200, None);

    // Fixed again: the reload succeeds and the error is cleared.
    std::fs::write(dir.join("plugin.toml"), &manifest).expect("write");
    host.admin_reload("hello", &root.access)
        .await
        .expect(200, None);
    let list = host.get_as("/admin/plugins", &root.access).await;
    assert!(list.body[1]["last_error"].is_null());
}
