//! The `Route` enum from plugin.toml (plinth-sdk-build): routes are declared once, there.
fn main() {
    plinth_sdk_build::routes();
}
