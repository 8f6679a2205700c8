//! Runtime support for macro expansions. Not public API: only generated code uses it.

use std::error::Error as StdError;
use std::time::{Duration, Instant};

pub use crate::retry::{BusyCode, Jitter, RetryEvent, RetryHook, RetryPolicy, Schedule};
pub use std::panic::Location;

/// Builds the policy written in `#[db_retry(…)]`; evaluated at compile time.
pub const fn policy(
    max_retries: u32,
    delay_ms: u64,
    max_delay_ms: Option<u64>,
    jitter: Jitter,
    deadline_ms: Option<u64>,
) -> RetryPolicy {
    let mut p = RetryPolicy::new()
        .with_max_retries(max_retries)
        .with_delay(Duration::from_millis(delay_ms))
        .with_jitter(jitter);
    if let Some(ms) = max_delay_ms {
        p = p.with_max_delay(Duration::from_millis(ms));
    }
    if let Some(ms) = deadline_ms {
        p = p.with_deadline(Some(Duration::from_millis(ms)));
    }
    p
}

/// The monotonic clock of sync code.
#[inline]
pub fn now_sync() -> Instant {
    Instant::now()
}

/// The monotonic clock of async code: tokio's, so paused-time tests control it (outside a
/// tokio runtime it is the system's monotonic clock).
#[inline]
pub fn now_async() -> Instant {
    tokio::time::Instant::now().into_std()
}

/// Blocking backoff sleep.
#[inline]
pub fn sleep_sync(delay: Duration) {
    std::thread::sleep(delay);
}

/// Async backoff sleep: tokio's timer inside a tokio runtime (paused-clock tests see it),
/// a runtime-neutral timer thread under any other executor.
#[inline]
pub fn sleep_async(delay: Duration) -> impl std::future::Future<Output = ()> + Send {
    crate::retry::sleep(delay)
}

/// What one attempt of a `#[db_retry]` function ended with.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// `Ok`: return it.
    Ok,
    /// An error that is not busy/locked: return it unchanged.
    Fatal,
    /// A busy/locked error: retry if the policy allows.
    Busy(BusyCode),
}

/// Gives the expansion's classifier closure its signature (`Fn(&R) -> Outcome`, with `R`
/// the function's return type) without writing the type, which may hold `impl Trait`.
#[inline(always)]
pub fn classifier<R, C: Fn(&R) -> Outcome>(_first: &R, classify: C) -> C {
    classify
}

/// Everything a sync `#[db_retry]` function does after its first attempt failed: classify
/// the error, and while it is busy and the policy allows, sleep and attempt again.
///
/// Kept out of line (and marked cold) so the function's success path is the hand-written
/// body plus one branch: no schedule, no captured-argument spills, no copy of the result.
/// The attempt comes as `&mut dyn FnMut`: the expansion's cast to it is where a body that
/// consumes an argument fails to compile, with no bound of this function in the message.
#[cold]
#[inline(never)]
#[allow(clippy::too_many_arguments)]
pub fn retry_sync_after_error<R, C>(
    first: R::Error,
    policy: &RetryPolicy,
    function: &'static str,
    location: &'static Location<'static>,
    hook: Option<RetryHook>,
    started: Option<Instant>,
    attempt: &mut dyn FnMut() -> R,
    classify: C,
) -> R
where
    R: DbResult,
    C: Fn(&R) -> Outcome,
{
    let first = R::__luca_fail(first);
    let Outcome::Busy(code) = classify(&first) else {
        return first;
    };
    let mut schedule = Schedule::new(policy, function, location, hook).started_at(started);
    let mut result = first;
    let mut code = code;
    loop {
        match schedule.on_error(Some(code), now_sync) {
            Some(delay) => {
                drop(result);
                sleep_sync(delay);
            }
            None => {
                schedule.finish(false);
                return result;
            }
        }
        result = attempt();
        match classify(&result) {
            Outcome::Busy(c) => code = c,
            outcome => {
                schedule.finish(outcome == Outcome::Ok);
                return result;
            }
        }
    }
}

/// The return type of a `#[db_retry]` function must be a `Result`.
#[diagnostic::on_unimplemented(
    message = "`#[db_retry]` needs a function that returns `Result<T, E>`, not `{Self}`",
    label = "this must be `Result<T, E>` (or an alias of it)",
    note = "return `rusqlite::Result<T>`, `luca_core::Result<T>` or `Result<T, YourError>`"
)]
pub trait DbResult: Sized {
    /// The success type.
    type Ok;
    /// The error type.
    type Error;
    /// The error, if the attempt failed.
    fn __luca_err(&self) -> Option<&Self::Error>;
    /// Views the value as the `Result` it is (the identity).
    fn __luca_into(self) -> Result<Self::Ok, Self::Error>;
    /// Rebuilds the value from a success (the identity on `Ok`).
    fn __luca_ok(ok: Self::Ok) -> Self;
    /// Rebuilds the value from an error (the identity on `Err`).
    fn __luca_fail(err: Self::Error) -> Self;
}

#[diagnostic::do_not_recommend]
impl<T, E> DbResult for Result<T, E> {
    type Ok = T;
    type Error = E;
    #[inline(always)]
    fn __luca_err(&self) -> Option<&E> {
        self.as_ref().err()
    }
    #[inline(always)]
    fn __luca_into(self) -> Result<T, E> {
        self
    }
    #[inline(always)]
    fn __luca_ok(ok: T) -> Self {
        Ok(ok)
    }
    #[inline(always)]
    fn __luca_fail(err: E) -> Self {
        Err(err)
    }
}

/// Autoref-specialisation wrapper: `(&&Wrap(e)).__luca_busy_code()` picks, in order,
/// `Retryable`, then a `source()` walk for `Error + 'static`, then a fallback whose
/// result only converts with [`IntoBusyCode`] when `E: Retryable` (so the user sees
/// `Retryable`'s diagnostic).
pub struct Wrap<'a, E: ?Sized>(pub &'a E);

/// First choice: the error implements `Retryable`.
pub trait ViaRetryable {
    /// Classifies the error.
    fn __luca_busy_code(&self) -> Option<BusyCode>;
}

impl<E: crate::retry::Retryable + ?Sized> ViaRetryable for &Wrap<'_, E> {
    #[inline]
    fn __luca_busy_code(&self) -> Option<BusyCode> {
        self.0.busy_code()
    }
}

/// Second choice: the error is an `Error + 'static`; search its `source()` chain.
pub trait ViaSource {
    /// Classifies the error.
    fn __luca_busy_code(&self) -> Option<BusyCode>;
}

impl<E: StdError + 'static> ViaSource for Wrap<'_, E> {
    #[inline]
    fn __luca_busy_code(&self) -> Option<BusyCode> {
        crate::retry::classify(self.0)
    }
}

/// Last resort, for an error that is neither: yields a value that [`IntoBusyCode`]
/// rejects with `Retryable`'s diagnostic.
pub trait ViaFallback<'a, E: ?Sized> {
    /// Returns the unclassifiable error.
    fn __luca_busy_code(self) -> Unclassified<'a, E>;
}

impl<'a, E: ?Sized> ViaFallback<'a, E> for Wrap<'a, E> {
    #[inline]
    fn __luca_busy_code(self) -> Unclassified<'a, E> {
        Unclassified(self.0)
    }
}

/// An error that could not be classified.
pub struct Unclassified<'a, E: ?Sized>(pub &'a E);

/// Turns the classification result into `Option<BusyCode>`.
pub trait IntoBusyCode {
    /// The busy code, if any.
    fn __luca_code(self) -> Option<BusyCode>;
}

impl IntoBusyCode for Option<BusyCode> {
    #[inline]
    fn __luca_code(self) -> Option<BusyCode> {
        self
    }
}

impl<E: crate::retry::Retryable + ?Sized> IntoBusyCode for Unclassified<'_, E> {
    #[inline]
    fn __luca_code(self) -> Option<BusyCode> {
        self.0.busy_code()
    }
}

// --- `#[shared_state]` ------------------------------------------------------------------

pub use crate::shared::{
    Counter, CounterInt, DebugLocked, Global, GlobalField, Guard, LockOrder, Locked, ReadMostly,
    Site,
};
pub use std::sync::Arc;
