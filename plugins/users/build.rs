//! The `Route` enum from this crate's plugin.toml (see plinth-sdk-build).
fn main() {
    plinth_sdk_build::routes();
}
