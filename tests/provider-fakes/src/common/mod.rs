//! The machinery both fakes share: fault injection, call counting, recorded answers, the gate
//! every call goes through, the test's [`control::Control`] handle and the server's
//! start and stop. What differs between providers (error envelopes, rate-limit rules and
//! headers, the token check) each provider says through [`gate::Provider`].

pub(crate) mod control;
pub(crate) mod faults;
pub(crate) mod gate;
pub(crate) mod serving;

use std::sync::{Mutex, MutexGuard, PoisonError};

/// Locks `m`, going on past a panic in another holder (a test's panic must not wedge the fake).
pub(crate) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}
