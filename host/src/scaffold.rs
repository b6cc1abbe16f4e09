//! `plinth new NAME`: a plugin project that builds, passes its test and serves as created.
//!
//! Rust: a crate of its own (its own workspace) using plinth-sdk and plinth-sdk-build by
//! path from a Plinth checkout. Python: `app.py` for componentize-py; JavaScript: `app.js`
//! for componentize-js; both with the contract (`wit/plugin.wit`) copied in. Both come with `plugin.toml` (one described route,
//! `GET /<name>/{who}`), a test, and a README with the commands to build, check and deploy.

use std::path::{Path, PathBuf};

use anyhow::{Context, bail, ensure};

/// The plugin languages `plinth new` knows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Language {
    Rust,
    Python,
    /// JavaScript (componentize-js).
    Js,
}

const PLUGIN_TOML: &str = include_str!("../templates/plugin.toml");
const RUST_CARGO_TOML: &str = include_str!("../templates/rust-Cargo.toml");
const RUST_BUILD_RS: &str = include_str!("../templates/rust-build.rs");
const RUST_LIB_RS: &str = include_str!("../templates/rust-lib.rs");
const RUST_TEST_SERVE: &str = include_str!("../templates/rust-test-serve.rs");
const PYTHON_APP: &str = include_str!("../templates/python-app.py");
const PYTHON_TEST: &str = include_str!("../templates/python-test_app.py");
const JS_APP: &str = include_str!("../templates/js-app.js");
const JS_TEST: &str = include_str!("../templates/js-app.test.mjs");
const WIT: &str = include_str!("../../wit/plugin.wit");

/// Writes a new plugin project into `dir` (which must not exist yet) and returns the
/// files written. `sdk`: the Plinth checkout whose `plugins/sdk` a Rust plugin uses.
pub fn create(
    name: &str,
    language: Language,
    dir: &Path,
    sdk: Option<&Path>,
) -> anyhow::Result<Vec<PathBuf>> {
    ensure!(
        name.len() <= 40
            && name.starts_with(|c: char| c.is_ascii_lowercase())
            && name
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_'),
        "a plugin name is 1-40 characters of a-z, 0-9 and `_`, starting with a letter \
         (it names the crate, the component and the route)"
    );
    ensure!(!dir.exists(), "{} already exists", dir.display());

    let fill = |template: &str| template.replace("{name}", name);
    let mut files: Vec<(PathBuf, String)> = Vec::new();
    match language {
        Language::Rust => {
            let sdk = match sdk {
                Some(sdk) => sdk.to_path_buf(),
                None => checkout_of_this_binary()
                    .context("cannot tell where the Plinth checkout is: pass --sdk <checkout>")?,
            };
            ensure!(
                sdk.join("plugins/sdk/Cargo.toml").is_file(),
                "{} is not a Plinth checkout (no plugins/sdk)",
                sdk.display()
            );
            let sdk = std::path::absolute(&sdk)?;
            files.push((
                "Cargo.toml".into(),
                fill(RUST_CARGO_TOML).replace("{sdk}", &sdk.display().to_string()),
            ));
            files.push(("build.rs".into(), RUST_BUILD_RS.to_owned()));
            files.push((
                "src/lib.rs".into(),
                // Named as the plugin's build will name it (plinth-sdk-build).
                fill(RUST_LIB_RS).replace(
                    "{Variant}",
                    &plinth_sdk_build::route_variant(
                        "GET",
                        &format!("/{name}/{{who}}"),
                        Some(&format!("{name}_greet")),
                    ),
                ),
            ));
            files.push(("tests/serve.rs".into(), fill(RUST_TEST_SERVE)));
            files.push((
                "plugin.toml".into(),
                fill(PLUGIN_TOML)
                    .replace("{capabilities}", "")
                    .replace("{memory_mb}", "16"),
            ));
            files.push(("README.md".into(), rust_readme(name)));
        }
        Language::Python => {
            files.push(("app.py".into(), fill(PYTHON_APP)));
            files.push(("test_app.py".into(), PYTHON_TEST.to_owned()));
            files.push(("wit/plugin.wit".into(), WIT.to_owned()));
            files.push((
                "plugin.toml".into(),
                script_manifest(&fill(PLUGIN_TOML), "componentize-py", "CPython"),
            ));
            files.push(("README.md".into(), python_readme(name)));
        }
        Language::Js => {
            files.push(("app.js".into(), fill(JS_APP)));
            files.push(("app.test.mjs".into(), fill(JS_TEST)));
            files.push((
                "package.json".into(),
                format!(
                    "{{\n  \"name\": \"{name}\",\n  \"private\": true,\n  \"type\": \"module\",\n  \
                     \"scripts\": {{ \"test\": \"node --test\" }}\n}}\n"
                ),
            ));
            files.push(("wit/plugin.wit".into(), WIT.to_owned()));
            files.push((
                "plugin.toml".into(),
                script_manifest(&fill(PLUGIN_TOML), "componentize-js", "SpiderMonkey"),
            ));
            files.push(("README.md".into(), js_readme(name)));
        }
    }

    let mut written = Vec::new();
    for (file, text) in files {
        let path = dir.join(file);
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent)
                .with_context(|| format!("cannot create {}", parent.display()))?;
        }
        std::fs::write(&path, text).with_context(|| format!("cannot write {}", path.display()))?;
        written.push(path);
    }
    Ok(written)
}

/// The manifest of a plugin whose toolchain (`tool`) builds against the `plugin-kv` world
/// and puts a language runtime into the component: `kv` granted, room for the runtime.
fn script_manifest(template: &str, tool: &str, runtime: &str) -> String {
    template
        .replace(
            "{capabilities}",
            &format!(
                "\n# {tool} imports every interface of its world (`plugin-kv`).\n\
                 [capabilities]\nkv = true\n"
            ),
        )
        .replace(
            "{memory_mb}",
            &format!("64             # {runtime} lives in the component"),
        )
}

/// A `plinth` binary built in a checkout lives at `<checkout>/target/<profile>/plinth`.
fn checkout_of_this_binary() -> anyhow::Result<PathBuf> {
    let exe = std::env::current_exe()?;
    let Some(checkout) = exe.ancestors().nth(3) else {
        bail!("{} is not inside a checkout", exe.display());
    };
    ensure!(
        checkout.join("plugins/sdk/Cargo.toml").is_file(),
        "{} is not inside a Plinth checkout",
        exe.display()
    );
    Ok(checkout.to_path_buf())
}

fn rust_readme(name: &str) -> String {
    format!(
        "# {name}\n\n\
         A Plinth plugin made by `plinth new`. `GET /{name}/{{who}}` answers\n\
         `{{\"message\": \"Hello, <who>!\"}}`.\n\n\
         ```sh\n\
         rustup target add wasm32-wasip2                     # once\n\
         cargo test                                          # unit test, and the component in a real host (tests/serve.rs)\n\
         plinth build                                        # the component, laid out as a plugin directory (printed)\n\
         plinth check target/plinth/{name}                   # as a host would load it\n\
         plinth deploy target/plinth/{name} --plugins-dir \"$PLUGINS_DIR\"  # checked, then copied in: a watching host serves it\n\
         ```\n\n\
         Routes are declared once, in `plugin.toml`: `build.rs` turns them into the `Route`\n\
         enum `src/lib.rs` matches on, so a route without a handler does not compile. What a\n\
         route says about itself there (summary, parameters, schemas) is what clients read in\n\
         the host's `/openapi.json`. `tests/serve.rs` uses plinth-harness: the first `cargo test`\n\
         compiles a Plinth host into the test (minutes), later runs take seconds.\n"
    )
}

fn python_readme(name: &str) -> String {
    format!(
        "# {name}\n\n\
         A Plinth plugin in Python made by `plinth new --lang python`. `GET /{name}/{{who}}`\n\
         answers `{{\"message\": \"Hello, <who>!\"}}`.\n\n\
         ```sh\n\
         python3 test_app.py                                  # its unit test\n\
         pip install componentize-py==0.25.1                  # once (Plinth's scripts use this version)\n\
         plinth build                                         # componentize-py, laid out as target/plinth/{name}\n\
         plinth check target/plinth/{name}                    # as a host would load it\n\
         plinth deploy target/plinth/{name} --plugins-dir \"$PLUGINS_DIR\"  # checked, then copied in: a watching host serves it\n\
         ```\n\n\
         `wit/plugin.wit` is the contract with the host (copied from Plinth); the `plugin-kv`\n\
         world gives `log` and `kv` (`wit_world.imports.kv`), which the manifest grants.\n"
    )
}

fn js_readme(name: &str) -> String {
    format!(
        "# {name}\n\n\
         A Plinth plugin in JavaScript made by `plinth new --lang js`. `GET /{name}/{{who}}`\n\
         answers `{{\"message\": \"Hello, <who>!\"}}`.\n\n\
         ```sh\n\
         node --test                                          # its unit test (app.test.mjs)\n\
         npm install -g @bytecodealliance/componentize-js@0.23.0 @bytecodealliance/preview2-shim@0.17.4  # once\n\
         plinth build                                         # componentize-js, laid out as target/plinth/{name}\n\
         plinth check target/plinth/{name}                    # as a host would load it\n\
         plinth deploy target/plinth/{name} --plugins-dir \"$PLUGINS_DIR\"  # checked, then copied in: a watching host serves it\n\
         ```\n\n\
         `wit/plugin.wit` is the contract with the host (copied from Plinth); the `plugin-kv`\n\
         world gives `log` and `kv` (`import {{ get, set }} from 'plinth:plugin/kv@0.1.0'`), which the\n\
         manifest grants. A capability call whose result is an error throws, with the error\n\
         in `payload`.\n"
    )
}
