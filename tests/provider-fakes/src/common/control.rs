//! The part of a test's handle on a running fake that is the same for every provider: faults,
//! call counts and recorded answers. Each provider adds its own methods (its error codes, its
//! rate limit, what exists in the account) in an `impl` of its own. It never goes through HTTP,
//! so using it spends no budget and counts no call.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use axum::http::Method;
use tokio::time::Instant;

use super::faults::{CrashMode, Fault};
use super::gate::{Answer, Provider};
use super::lock;

/// Inspection and fault injection for one running fake; cheap to clone.
pub struct Control<P> {
    pub(crate) shared: Arc<P>,
}

impl<P> Clone for Control<P> {
    fn clone(&self) -> Control<P> {
        Control {
            shared: Arc::clone(&self.shared),
        }
    }
}

impl<P: Provider> Control<P> {
    pub(crate) fn new(shared: Arc<P>) -> Control<P> {
        Control { shared }
    }

    /// Makes the next `times` calls to `method template` (a template from the provider's
    /// `ROUTES`, e.g. `/v1/servers/{id}`) meet `fault`. Faults queue up per route in the order
    /// injected.
    ///
    /// # Panics
    /// If the route is not one the fake serves: a typo would otherwise inject nothing.
    pub fn inject(&self, method: &Method, template: &str, times: u32, fault: Fault<P::Code>) {
        assert!(
            P::ROUTES
                .iter()
                .any(|(m, t)| *m == method.as_str() && *t == template),
            "the {} fake serves no route {method} {template}",
            P::NAME
        );
        lock(self.shared.gate())
            .faults
            .push(method.as_str(), template, times, fault);
    }

    /// The next `times` matching calls wait `delay` before they are served.
    pub fn stall_next(&self, method: &Method, template: &str, times: u32, delay: Duration) {
        self.inject(method, template, times, Fault::Stall(delay));
    }

    /// The next `times` matching calls take effect at once but are answered after `delay`.
    pub fn stall_answer_next(&self, method: &Method, template: &str, times: u32, delay: Duration) {
        self.inject(method, template, times, Fault::StallAnswer(delay));
    }

    /// The next `times` matching calls take effect but their answer is lost.
    pub fn crash_next(&self, method: &Method, template: &str, times: u32, mode: CrashMode) {
        self.inject(method, template, times, Fault::Crash(mode));
    }

    pub fn clear_faults(&self) {
        lock(self.shared.gate()).faults.clear();
    }

    /// Requests left in the budget now (0 while a Cloudflare token is blocked).
    pub fn rate_limit_remaining(&self) -> u32 {
        P::remaining(&mut lock(self.shared.gate()).limiter, Instant::now())
    }

    /// Calls answered 429 because the budget was spent (injected 429s are not counted here).
    pub fn rate_limited_calls(&self) -> u64 {
        lock(self.shared.gate()).rate_limited
    }

    /// Calls made to one route, whatever their answer. Calls to paths the fake does not serve
    /// count under the template `<unmatched>`.
    pub fn calls(&self, method: &Method, template: &str) -> u64 {
        lock(self.shared.gate()).calls(method.as_str(), template)
    }

    pub fn calls_total(&self) -> u64 {
        lock(self.shared.gate()).total
    }

    /// Calls per (method, path template).
    pub fn call_counts(&self) -> BTreeMap<(String, String), u64> {
        lock(self.shared.gate()).calls.clone()
    }

    pub fn reset_calls(&self) {
        lock(self.shared.gate()).reset_calls();
    }

    /// Every answer given so far (when recording), oldest first.
    pub fn answers(&self) -> Vec<Answer> {
        lock(self.shared.gate()).answers()
    }

    /// Forgets the recorded answers (to check only what follows).
    pub fn clear_answers(&self) {
        lock(self.shared.gate()).clear_answers();
    }
}
