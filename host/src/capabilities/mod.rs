//! Capabilities: what a plugin may ask of the host, one module per WIT interface.
//!
//! Each module owns its configuration, its shared state and its WIT `Host` impl, and says
//! how it is linked. [`link_granted`] links exactly what a manifest grants; a component
//! importing anything else is refused at load time (see `plugins::loader`).

pub mod log;

use wasmtime::component::{HasSelf, Linker};

use crate::plugins::manifest::Grants;
use crate::plugins::runtime::InstanceState;

/// The WIT interfaces of `plinth:plugin` this host implements, with the grant that enables
/// each. An import outside this list (and outside WASI) is never linked.
pub fn granted_interfaces(grants: &Grants) -> Vec<&'static str> {
    let _ = grants; // sql, kv, tokens and passwords arrive with their modules.
    vec![log::INTERFACE]
}

/// Adds the granted capability interfaces to `linker`.
pub fn link_granted(linker: &mut Linker<InstanceState>, grants: &Grants) -> anyhow::Result<()> {
    let _ = grants;
    crate::bindings::plinth::plugin::log::add_to_linker::<_, HasSelf<_>>(linker, |s| s)?;
    Ok(())
}
