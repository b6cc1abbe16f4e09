//! Host-side bindings for the `plinth:plugin` world, generated once, here.
//!
//! Every import is async (no capability call may block a tokio worker) and trappable
//! (a host bug traps the one guest call instead of panicking the host). Resources map to
//! the capability modules' own types.

wasmtime::component::bindgen!({
    path: "../wit",
    world: "plugin",
    imports: { default: async | trappable },
    exports: { default: async },
    with: {
        "plinth:plugin/sql.transaction": crate::capabilities::sql::Transaction,
    },
});

pub use exports::plinth::plugin::handler::{Request, Response};
pub use plinth::plugin::types::Principal;
