//! Host-side bindings for the `plinth:plugin` world, generated once, here.
//!
//! Every import is async (no capability call may block a tokio worker) and trappable
//! (a host bug traps the one guest call instead of panicking the host).

wasmtime::component::bindgen!({
    path: "../wit",
    world: "plugin",
    imports: { default: async | trappable },
    exports: { default: async },
});

pub use exports::plinth::plugin::handler::{Request, Response};
pub use plinth::plugin::types::Principal;
