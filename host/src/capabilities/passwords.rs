//! `passwords`: argon2id hashing and verification, on a bounded blocking pool.
//!
//! Hashing is deliberately expensive (m=19456 KiB, t=2, p=1), so it never runs on a tokio
//! worker: jobs run on the blocking pool, at most `max_parallel` at once, and when more than
//! `max_queued` are waiting the call answers `unavailable` (the plugin answers 503) instead
//! of letting a login flood queue without bound. Verifying with no stored hash checks a
//! dummy hash, so an unknown account costs the same time as a wrong password.

use argon2::password_hash::{PasswordHash, PasswordHasher as _, PasswordVerifier as _, SaltString};
use argon2::{Algorithm, Argon2, Params, Version};

use std::sync::Arc;

use wasmtime::component::{HasSelf, Linker};

use super::{CapabilityView, Descriptor};
use crate::bindings::plinth::plugin::passwords::{self as wit, Error};
use crate::bounded::BoundedSemaphore;
use crate::telemetry::metrics::HostCalls;

pub fn descriptor<T: CapabilityView>() -> Descriptor<T> {
    Descriptor {
        interface: "passwords",
        granted: |grants| grants.passwords,
        link: |linker: &mut Linker<T>| {
            wit::add_to_linker::<T, HasSelf<PasswordsInstance>>(linker, |state| {
                &mut state.capabilities().passwords
            })
        },
    }
}

/// The parameters new hashes get (docs/API.md: at least m=19456 KiB, t=2, p=1).
const MEMORY_KIB: u32 = 19_456;
const ITERATIONS: u32 = 2;
const PARALLELISM: u32 = 1;

/// Stored hashes beyond these are refused rather than verified (a planted hash with
/// absurd parameters must not be able to exhaust the host).
const MAX_MEMORY_KIB: u32 = 256 * 1024;
const MAX_ITERATIONS: u32 = 16;
const MAX_PARALLELISM: u32 = 8;

/// Longest password accepted for hashing (docs/API.md allows 128 characters; UTF-8 may take 4
/// bytes each).
const MAX_PASSWORD_BYTES: usize = 4 * 128;

#[derive(Debug)]
pub struct PasswordService {
    /// Hashing jobs running, and the bounded line of those waiting to.
    jobs: BoundedSemaphore,
    dummy_hash: String,
}

impl PasswordService {
    /// `max_parallel` hashing jobs at once (leave a core for serving on small machines).
    pub async fn new(max_parallel: usize, max_queued: usize) -> anyhow::Result<Self> {
        let dummy_hash =
            tokio::task::spawn_blocking(|| hash_blocking("plinth-dummy-password")).await??;
        Ok(Self {
            jobs: BoundedSemaphore::new(max_parallel.max(1), max_queued),
            dummy_hash,
        })
    }

    async fn run<T: Send + 'static>(
        &self,
        job: impl FnOnce() -> T + Send + 'static,
    ) -> Result<T, Error> {
        // No wait limit of its own: the calling plugin's deadline bounds the wait.
        let permit = self.jobs.acquire(None).await.map_err(|_| {
            tracing::warn!("password hashing queue is full");
            Error::Unavailable
        })?;
        tokio::task::spawn_blocking(move || {
            let result = job();
            drop(permit);
            result
        })
        .await
        .map_err(|_| Error::Unavailable)
    }

    pub async fn hash(&self, password: String) -> Result<String, Error> {
        if password.len() > MAX_PASSWORD_BYTES {
            return Err(Error::Unavailable);
        }
        self.run(move || hash_blocking(&password))
            .await?
            .map_err(|_| Error::Unavailable)
    }

    pub async fn verify(&self, password: String, hash: Option<String>) -> Result<bool, Error> {
        let known = hash.is_some();
        let hash = hash.unwrap_or_else(|| self.dummy_hash.clone());
        check_parameters(&hash)?;
        let matches = self.run(move || verify_blocking(&password, &hash)).await?;
        Ok(known && matches)
    }
}

fn argon2() -> Argon2<'static> {
    let params = Params::new(MEMORY_KIB, ITERATIONS, PARALLELISM, None)
        .unwrap_or_else(|_| Params::default());
    Argon2::new(Algorithm::Argon2id, Version::V0x13, params)
}

fn hash_blocking(password: &str) -> anyhow::Result<String> {
    let salt = SaltString::generate(&mut rand::rngs::OsRng);
    argon2()
        .hash_password(password.as_bytes(), &salt)
        .map(|h| h.to_string())
        .map_err(|e| anyhow::anyhow!("argon2: {e}"))
}

fn verify_blocking(password: &str, hash: &str) -> bool {
    PasswordHash::new(hash)
        .map(|parsed| {
            Argon2::default()
                .verify_password(password.as_bytes(), &parsed)
                .is_ok()
        })
        .unwrap_or(false)
}

/// Accepts only argon2id PHC strings with sane parameters.
fn check_parameters(hash: &str) -> Result<(), Error> {
    let parsed = PasswordHash::new(hash).map_err(|_| Error::InvalidHash)?;
    if parsed.algorithm.as_str() != "argon2id" {
        return Err(Error::InvalidHash);
    }
    let params = Params::try_from(&parsed).map_err(|_| Error::InvalidHash)?;
    if params.m_cost() > MAX_MEMORY_KIB
        || params.t_cost() > MAX_ITERATIONS
        || params.p_cost() > MAX_PARALLELISM
    {
        return Err(Error::InvalidHash);
    }
    Ok(())
}

/// A request's view of `passwords`: the shared hashing service.
#[derive(Debug)]
pub struct PasswordsInstance {
    service: Option<Arc<PasswordService>>,
    calls: HostCalls,
}

impl PasswordsInstance {
    pub fn new(service: Option<Arc<PasswordService>>, calls: HostCalls) -> Self {
        Self { service, calls }
    }

    fn service(&self) -> wasmtime::Result<&PasswordService> {
        // Unreachable for a plugin: `passwords` is linked only when granted.
        self.service
            .as_deref()
            .ok_or_else(|| wasmtime::Error::msg("passwords called without the grant"))
    }
}

impl wit::Host for PasswordsInstance {
    async fn hash(&mut self, password: String) -> wasmtime::Result<Result<String, Error>> {
        let _timed = self.calls.time("passwords", "hash");
        Ok(self.service()?.hash(password).await)
    }

    async fn verify(
        &mut self,
        password: String,
        hash: Option<String>,
    ) -> wasmtime::Result<Result<bool, Error>> {
        let _timed = self.calls.time("passwords", "verify");
        Ok(self.service()?.verify(password, hash).await)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn hashes_are_argon2id_with_the_required_cost() -> anyhow::Result<()> {
        let service = PasswordService::new(1, 8).await?;
        let hash = service
            .hash("correct horse".into())
            .await
            .map_err(|e| anyhow::anyhow!("{e:?}"))?;
        assert!(
            hash.starts_with("$argon2id$v=19$m=19456,t=2,p=1$"),
            "{hash}"
        );
        assert!(matches!(
            service
                .verify("correct horse".into(), Some(hash.clone()))
                .await,
            Ok(true)
        ));
        assert!(matches!(
            service.verify("wrong horse".into(), Some(hash)).await,
            Ok(false)
        ));
        assert!(matches!(
            service.verify("anything".into(), None).await,
            Ok(false)
        ));
        Ok(())
    }

    #[test]
    fn absurd_or_foreign_hashes_are_refused() {
        let absurd = "$argon2id$v=19$m=4194304,t=2,p=1$c2FsdHNhbHQ$aGFzaGhhc2hoYXNoaGFzaA";
        assert!(matches!(check_parameters(absurd), Err(Error::InvalidHash)));
        let bcrypt = "$2b$12$abcdefghijklmnopqrstuu5h8R8DRh0EyJr7Z7H9YV7i3wZb3bX9i";
        assert!(matches!(check_parameters(bcrypt), Err(Error::InvalidHash)));
    }
}
