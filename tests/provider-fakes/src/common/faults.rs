//! Injected faults: what they do, and the queue of them per route.

use std::time::Duration;

use axum::body::Body;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};

/// What an injected fault does to a matching call. `C` is the provider's error code (Hetzner's
/// is a string such as `locked`, Cloudflare's a number such as 1022).
#[derive(Clone, Debug)]
pub enum Fault<C> {
    /// Answer with this HTTP status and the provider's error code (in its error envelope)
    /// instead of doing the call.
    Error {
        status: u16,
        code: C,
        message: String,
    },
    /// Wait this long, then do the call and answer normally.
    Stall(Duration),
    /// Do the call at once, then wait this long before answering (a client that times out
    /// meanwhile has had its call done all the same).
    StallAnswer(Duration),
    /// Do the call (the resource is created, deleted, …), then lose the answer.
    Crash(CrashMode),
}

/// How a crash between "done" and "answered" looks to the client.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CrashMode {
    /// The connection is closed before a full answer arrives.
    DropConnection,
    /// A bare 500 with an empty body.
    EmptyServerError,
}

struct FaultEntry<C> {
    method: String,
    template: String,
    remaining: u32,
    fault: Fault<C>,
}

/// The faults waiting for their calls, in the order injected.
pub(crate) struct Faults<C> {
    entries: Vec<FaultEntry<C>>,
}

impl<C: Clone> Faults<C> {
    pub(crate) fn new() -> Faults<C> {
        Faults {
            entries: Vec::new(),
        }
    }

    /// The next `times` calls to `method template` meet `fault`.
    pub(crate) fn push(&mut self, method: &str, template: &str, times: u32, fault: Fault<C>) {
        if times == 0 {
            return;
        }
        self.entries.push(FaultEntry {
            method: method.to_owned(),
            template: template.to_owned(),
            remaining: times,
            fault,
        });
    }

    /// The fault the next call to `method template` meets, if any; spends one of its times.
    pub(crate) fn take(&mut self, method: &str, template: &str) -> Option<Fault<C>> {
        let i = self
            .entries
            .iter()
            .position(|f| f.method == method && f.template == template)?;
        let entry = &mut self.entries[i];
        let fault = entry.fault.clone();
        entry.remaining = entry.remaining.saturating_sub(1);
        if entry.remaining == 0 {
            self.entries.remove(i);
        }
        Some(fault)
    }

    pub(crate) fn clear(&mut self) {
        self.entries.clear();
    }
}

/// Marks a crash answer whose body must not be read (reading it would end it early).
#[derive(Clone, Copy)]
struct CrashMarker(CrashMode);

/// The crash an answer stands for, if it is one.
pub(crate) fn injected_crash(parts: &axum::http::response::Parts) -> Option<CrashMode> {
    parts.extensions.get::<CrashMarker>().map(|m| m.0)
}

/// The answer of a call whose answer is lost.
pub(crate) fn crash_response(mode: CrashMode) -> Response {
    let mut response = match mode {
        CrashMode::EmptyServerError => StatusCode::INTERNAL_SERVER_ERROR.into_response(),
        CrashMode::DropConnection => {
            // A body that fails before its first byte makes the server abort the connection.
            let failing = futures_util::stream::once(async {
                Err::<axum::body::Bytes, std::io::Error>(std::io::Error::other("crash injected"))
            });
            Response::new(Body::from_stream(failing))
        }
    };
    response.extensions_mut().insert(CrashMarker(mode));
    response
}
