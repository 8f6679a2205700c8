//! Runtime of `#[shared_state]`: the storage each field is rewritten into.
//!
//! Generated code reaches these types through `luca_core::__private`; they are not public
//! API. Three kinds of storage:
//!
//! - [`Locked`]: a plain field behind its own mutex. The lock recovers from poisoning
//!   (counting each recovery) and checks, on every call and before it waits, the rule that
//!   makes nested locks deadlock-free (see below).
//! - [`Counter`]: an integer field as an atomic.
//! - [`ReadMostly`]: a field behind an [`arc_swap::ArcSwap`], read without any lock.
//!
//! # The lock order
//!
//! Each thread keeps a short list of the [`Locked`] fields it holds right now (pushed by
//! [`Locked::lock`], removed when the [`Guard`] drops). Taking the lock of field `i` of a
//! struct while the same thread holds field `j >= i` of the *same struct type* (any value
//! of it: the order is per type, not per value) panics at once, naming both fields:
//!
//! - `j == i` on the same value is re-entrancy: the thread would wait for itself;
//! - `j > i` is nesting against declaration order: a thread nesting in declaration order
//!   could hold `i` and wait for `j`, a deadlock that would only show under contention;
//! - `j == i` on another value of the type: two threads nesting the same field of two
//!   values in opposite orders deadlock just the same, and no order between values is
//!   visible to the program, so this is refused too.
//!
//! Since every thread then takes the locks of one struct type in strictly increasing
//! declaration order, no cycle of waits, and so no deadlock, can form among them.
//! `update(|fields| …)` takes its locks in that order too. Counters and read-mostly fields
//! hold no lock and take no part. Locks of two *different* `#[shared_state]` types are not
//! ordered against each other: a program that nests them must keep one order itself.
//!
//! The check costs one thread-local access on lock and one on unlock, and is skipped on
//! a thread whose thread-locals are already torn down (in a thread-local's destructor).

use std::cell::{Cell, RefCell};
use std::fmt;
use std::ops::{Deref, DerefMut};
use std::sync::atomic::{
    AtomicI8, AtomicI16, AtomicI32, AtomicI64, AtomicIsize, AtomicU8, AtomicU16, AtomicU32,
    AtomicU64, AtomicUsize, Ordering,
};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock, TryLockError};

use arc_swap::ArcSwap;

/// Names a field in a panic message (`Struct::field`) and gives its place in the lock
/// order.
#[derive(Debug)]
pub struct Site {
    /// The struct's name.
    pub ty: &'static str,
    /// The field's name.
    pub field: &'static str,
    /// The field's position in the struct's declaration, from 0.
    pub index: u32,
}

/// The identity of one `#[shared_state]` struct in the lock-order check: the generated
/// code keeps one `static` of it per struct definition (shared by every instantiation of
/// a generic struct), and its address is the key.
pub struct LockOrder {
    /// Not zero-sized, so that every `static` of it has an address of its own.
    _byte: u8,
}

impl LockOrder {
    /// A new key (place it in a `static`).
    #[allow(clippy::new_without_default)]
    pub const fn new() -> Self {
        LockOrder { _byte: 0 }
    }

    #[inline]
    fn key(&'static self) -> usize {
        std::ptr::from_ref(self).addr()
    }
}

/// One lock held by this thread.
struct Held {
    /// [`LockOrder::key`] of its struct.
    order: usize,
    /// The address of the [`Locked`].
    lock: usize,
    site: &'static Site,
}

thread_local! {
    /// The [`Locked`] fields this thread holds, in the order it took them.
    static HELD: RefCell<Vec<Held>> = const { RefCell::new(Vec::new()) };
    /// Addresses of the `ReadMostly` fields whose `update` closure runs on this thread.
    static RCU_ACTIVE: RefCell<Vec<usize>> = const { RefCell::new(Vec::new()) };
}

/// Why a lock may not be taken.
enum Refused {
    /// This thread holds this very lock.
    Reentered,
    /// This thread holds a field of the same struct type at this place or later.
    Order(&'static Site),
}

#[cold]
#[inline(never)]
#[track_caller]
fn reentered(site: &Site) -> ! {
    panic!(
        "re-entrant use of `{}::{}`: one of its accessors was called from inside a closure \
         that already holds its lock, which would deadlock; use the value the closure \
         receives instead of calling the accessor again",
        site.ty, site.field
    )
}

#[cold]
#[inline(never)]
#[track_caller]
fn out_of_order(held: &Site, site: &Site) -> ! {
    if held.index == site.index {
        panic!(
            "lock order: `{ty}::{f}` of another `{ty}` is held while `{ty}::{f}` is locked; \
             the same field of two values cannot be nested (two threads doing it in \
             opposite orders would deadlock); copy the value out of one of them first",
            ty = site.ty,
            f = site.field
        )
    }
    panic!(
        "lock order: `{ty}::{held}` is held while `{ty}::{wanted}` is locked; nest accessors \
         in declaration order (`{wanted}` before `{held}`) or use `update(|fields| …)`",
        ty = site.ty,
        held = held.field,
        wanted = site.field
    )
}

/// A plain field: its value behind a mutex that only closures can reach.
pub struct Locked<T> {
    /// How many times the lock was found poisoned and the value recovered.
    poisoned: AtomicU64,
    mutex: Mutex<T>,
}

impl<T> Locked<T> {
    /// Wraps a value.
    #[inline]
    pub const fn new(value: T) -> Self {
        Locked {
            poisoned: AtomicU64::new(0),
            mutex: Mutex::new(value),
        }
    }

    #[inline]
    fn addr(&self) -> usize {
        std::ptr::from_ref(self).addr()
    }

    /// Locks the field.
    ///
    /// A poisoned lock (a closure panicked while holding it) is recovered: the value is
    /// kept as the closure left it and the recovery is counted.
    ///
    /// # Panics
    ///
    /// Before waiting, when this thread holds this lock already (an accessor called from
    /// inside a closure of the same field: the alternative is a deadlock), or holds a
    /// field of the same struct type declared at `site` or after it (see the
    /// [module docs](self) for the lock order), with a message naming the fields.
    #[inline]
    #[track_caller]
    pub fn lock(&self, site: &'static Site, order: &'static LockOrder) -> Guard<'_, T> {
        let lock = self.addr();
        let order = order.key();
        let tracked = HELD.try_with(|held| {
            let Ok(mut held) = held.try_borrow_mut() else {
                return Ok(false);
            };
            let mut refused = None;
            for h in held.iter().filter(|h| h.order == order) {
                if h.lock == lock {
                    return Err(Refused::Reentered);
                }
                if h.site.index >= site.index
                    && refused.is_none_or(|r: &Site| h.site.index > r.index)
                {
                    refused = Some(h.site);
                }
            }
            if let Some(h) = refused {
                return Err(Refused::Order(h));
            }
            held.push(Held { order, lock, site });
            Ok(true)
        });
        let tracked = match tracked {
            Ok(Ok(tracked)) => tracked,
            // Thread-locals already torn down: no check.
            Err(_) => false,
            Ok(Err(Refused::Reentered)) => reentered(site),
            Ok(Err(Refused::Order(held))) => out_of_order(held, site),
        };
        let guard = match self.mutex.lock() {
            Ok(g) => g,
            Err(poison) => self.recover(poison.into_inner()),
        };
        Guard {
            lock: if tracked { lock } else { 0 },
            guard,
        }
    }

    #[cold]
    #[inline(never)]
    fn recover<'a>(&'a self, guard: MutexGuard<'a, T>) -> MutexGuard<'a, T> {
        self.poisoned.fetch_add(1, Ordering::Relaxed);
        self.mutex.clear_poison();
        guard
    }

    /// Runs `f` on the value if the lock is free right now; `None` when it is held.
    /// Never blocks, never counts a recovery; used by `Debug`.
    pub fn try_with<R>(&self, f: impl FnOnce(&T) -> R) -> Option<R> {
        match self.mutex.try_lock() {
            Ok(g) => Some(f(&g)),
            Err(TryLockError::Poisoned(p)) => Some(f(&p.into_inner())),
            Err(TryLockError::WouldBlock) => None,
        }
    }

    /// How many times this lock was recovered from poisoning.
    #[inline]
    pub fn poison_count(&self) -> u64 {
        self.poisoned.load(Ordering::Relaxed)
    }

    /// The value, consuming the lock (recovering it if poisoned).
    pub fn into_inner(self) -> T {
        self.mutex
            .into_inner()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// Removes the lock at `lock` from this thread's list (the newest entry first, which is
/// where it is unless guards were dropped out of order).
#[inline]
fn release(lock: usize) {
    let _ = HELD.try_with(|held| {
        if let Ok(mut held) = held.try_borrow_mut() {
            if held.last().is_some_and(|h| h.lock == lock) {
                held.pop();
            } else if let Some(i) = held.iter().rposition(|h| h.lock == lock) {
                held.remove(i);
            }
        }
    });
}

impl<T: Default> Default for Locked<T> {
    fn default() -> Self {
        Locked::new(T::default())
    }
}

/// Access to a [`Locked`] value; takes the lock off this thread's list before the mutex
/// unlocks.
pub struct Guard<'a, T> {
    /// The address of the [`Locked`], or 0 when it is not on the list.
    lock: usize,
    guard: MutexGuard<'a, T>,
}

impl<T> Drop for Guard<'_, T> {
    #[inline]
    fn drop(&mut self) {
        // Runs before `guard` (a field) is dropped, i.e. before the mutex is released.
        if self.lock != 0 {
            release(self.lock);
        }
    }
}

impl<T> Deref for Guard<'_, T> {
    type Target = T;
    #[inline]
    fn deref(&self) -> &T {
        &self.guard
    }
}

impl<T> DerefMut for Guard<'_, T> {
    #[inline]
    fn deref_mut(&mut self) -> &mut T {
        &mut self.guard
    }
}

/// `Debug` for a [`Locked`] that never blocks: `<locked>` while someone holds it.
pub struct DebugLocked<'a, T>(pub &'a Locked<T>);

impl<T: fmt::Debug> fmt::Debug for DebugLocked<'_, T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0
            .try_with(|v| fmt::Debug::fmt(v, f))
            .unwrap_or_else(|| f.write_str("<locked>"))
    }
}

// ---------------------------------------------------------------------------------------
// Counters

/// An integer type that `#[shared(counter)]` can store as an atomic.
#[diagnostic::on_unimplemented(
    message = "`#[shared(counter)]` needs an integer field, not `{Self}`",
    label = "not an integer type with an atomic counterpart",
    note = "use one of `u8`, `u16`, `u32`, `u64`, `usize`, `i8`, `i16`, `i32`, `i64`, `isize`, or remove `#[shared(counter)]`"
)]
pub trait CounterInt: Copy + Sized {
    /// The matching `std::sync::atomic` type.
    type Atomic: Send + Sync;
    /// A new atomic holding `v`.
    fn new_atomic(v: Self) -> Self::Atomic;
    /// Current value.
    fn load(a: &Self::Atomic) -> Self;
    /// Adds `n` (wrapping) and returns the new value.
    fn add(a: &Self::Atomic, n: Self) -> Self;
    /// Stores `v` and returns the old value.
    fn swap(a: &Self::Atomic, v: Self) -> Self;
    /// The value one.
    const ONE: Self;
}

macro_rules! counter_int {
    ($($t:ty => $a:ty),* $(,)?) => {$(
        impl CounterInt for $t {
            type Atomic = $a;
            #[inline]
            fn new_atomic(v: Self) -> $a {
                <$a>::new(v)
            }
            #[inline]
            fn load(a: &$a) -> Self {
                a.load(Ordering::Acquire)
            }
            #[inline]
            fn add(a: &$a, n: Self) -> Self {
                a.fetch_add(n, Ordering::AcqRel).wrapping_add(n)
            }
            #[inline]
            fn swap(a: &$a, v: Self) -> Self {
                a.swap(v, Ordering::AcqRel)
            }
            const ONE: Self = 1;
        }
    )*};
}

counter_int!(
    u8 => AtomicU8, u16 => AtomicU16, u32 => AtomicU32, u64 => AtomicU64, usize => AtomicUsize,
    i8 => AtomicI8, i16 => AtomicI16, i32 => AtomicI32, i64 => AtomicI64, isize => AtomicIsize,
);

/// An integer field stored as an atomic: every operation is one lock-free instruction.
pub struct Counter<T: CounterInt>(T::Atomic);

impl<T: CounterInt> Counter<T> {
    /// Wraps a value.
    #[inline]
    pub fn new(v: T) -> Self {
        Counter(T::new_atomic(v))
    }
    /// Current value.
    #[inline]
    pub fn get(&self) -> T {
        T::load(&self.0)
    }
    /// Adds `n` (wrapping on overflow) and returns the new value.
    #[inline]
    pub fn add(&self, n: T) -> T {
        T::add(&self.0, n)
    }
    /// Adds one (wrapping on overflow) and returns the new value.
    #[inline]
    pub fn incr(&self) -> T {
        T::add(&self.0, T::ONE)
    }
    /// Stores `v` and returns the old value.
    #[inline]
    pub fn set(&self, v: T) -> T {
        T::swap(&self.0, v)
    }
}

impl<T: CounterInt + Default> Default for Counter<T> {
    fn default() -> Self {
        Counter::new(T::default())
    }
}

impl<T: CounterInt + fmt::Debug> fmt::Debug for Counter<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&self.get(), f)
    }
}

// ---------------------------------------------------------------------------------------
// Read-mostly fields

/// A field read far more often than written: readers never lock, writers swap in a new
/// `Arc` and bump `version`.
///
/// [`ReadMostly::with`] keeps, per thread, the last `Arc` it loaded together with the
/// version it loaded it at; while the version is unchanged a read is one atomic load and
/// a thread-local lookup, with no atomic read-modify-write at all (arc-swap's own load
/// writes to a per-thread slot and is about as costly as an uncontended `RwLock`).
pub struct ReadMostly<T> {
    swap: ArcSwap<T>,
    /// Bumped (Release) after every install; a reader that sees version `v` (Acquire)
    /// then loads a value at least as new as the one `v` stands for.
    version: AtomicU64,
    /// Process-unique id of this field (never reused), the key of the per-thread cache.
    id: u64,
}

/// Ids of `ReadMostly` instances; 0 is never used.
static NEXT_READ_MOSTLY: AtomicU64 = AtomicU64::new(1);

/// Entries of the per-thread cache of `ReadMostly::with`.
const CACHE_ENTRIES: usize = 16;

/// One cached value: `(field id, version, Rc<Arc<T>>)`, type-erased.
type CacheEntry = (u64, u64, std::rc::Rc<dyn std::any::Any>);

thread_local! {
    static READ_CACHE: RefCell<Vec<CacheEntry>> = const { RefCell::new(Vec::new()) };
    static READ_CACHE_NEXT: Cell<usize> = const { Cell::new(0) };
}

/// Removes the field's address from this thread's active `update` set when dropped
/// (also on unwind).
struct RcuScope(usize);

impl Drop for RcuScope {
    fn drop(&mut self) {
        let _ = RCU_ACTIVE.try_with(|s| {
            if let Ok(mut s) = s.try_borrow_mut()
                && let Some(i) = s.iter().rposition(|a| *a == self.0)
            {
                s.remove(i);
            }
        });
    }
}

impl<T> ReadMostly<T> {
    /// Wraps a value.
    #[inline]
    pub fn new(v: T) -> Self {
        ReadMostly {
            swap: ArcSwap::from_pointee(v),
            version: AtomicU64::new(0),
            id: NEXT_READ_MOSTLY.fetch_add(1, Ordering::Relaxed),
        }
    }

    fn addr(&self) -> usize {
        std::ptr::from_ref(self).addr()
    }

    /// Panics when this thread is inside this field's own `update` closure: a write there
    /// would make the update retry forever.
    #[inline]
    #[track_caller]
    fn check_not_updating(&self, site: &Site) {
        let addr = self.addr();
        let inside = RCU_ACTIVE
            .try_with(|s| s.try_borrow().is_ok_and(|s| s.contains(&addr)))
            .unwrap_or(false);
        if inside {
            reentered_update(site);
        }
    }

    /// A snapshot of the current value; lock-free.
    #[inline]
    pub fn load_full(&self) -> Arc<T> {
        self.swap.load_full()
    }

    /// Runs `f` on the current value; lock-free, and while the value is unchanged since
    /// this thread last read it, free of atomic read-modify-writes.
    ///
    /// The thread keeps the `Arc` it last read (one per field, for the last
    /// `CACHE_ENTRIES` fields it read), so a replaced value is freed only once every
    /// thread that read it reads the field again, reads other fields, or exits.
    #[inline]
    pub fn with<R>(&self, f: impl FnOnce(&T) -> R) -> R
    where
        T: 'static,
    {
        let version = self.version.load(Ordering::Acquire);
        let hit = READ_CACHE
            .try_with(|c| {
                c.try_borrow().ok().and_then(|c| {
                    c.iter()
                        .find(|(id, v, _)| *id == self.id && *v == version)
                        .map(|(_, _, value)| std::rc::Rc::clone(value))
                })
            })
            .ok()
            .flatten();
        if let Some(value) = hit
            && let Some(arc) = value.downcast_ref::<Arc<T>>()
        {
            return f(arc);
        }
        self.with_slow(version, f)
    }

    #[cold]
    #[inline(never)]
    fn with_slow<R>(&self, version: u64, f: impl FnOnce(&T) -> R) -> R
    where
        T: 'static,
    {
        let arc = self.swap.load_full();
        let value: std::rc::Rc<dyn std::any::Any> = std::rc::Rc::new(Arc::clone(&arc));
        let _ = READ_CACHE.try_with(|c| {
            let Ok(mut c) = c.try_borrow_mut() else {
                return;
            };
            if let Some(entry) = c.iter_mut().find(|(id, _, _)| *id == self.id) {
                *entry = (self.id, version, value);
            } else if c.len() < CACHE_ENTRIES {
                c.push((self.id, version, value));
            } else {
                let next = READ_CACHE_NEXT
                    .try_with(|n| {
                        let i = n.get() % CACHE_ENTRIES;
                        n.set(i + 1);
                        i
                    })
                    .unwrap_or(0);
                c[next] = (self.id, version, value);
            }
        });
        f(&arc)
    }

    /// Replaces the value; returns the previous one.
    #[inline]
    #[track_caller]
    pub fn store(&self, v: T, site: &Site) -> Arc<T> {
        self.check_not_updating(site);
        let old = self.swap.swap(Arc::new(v));
        self.version.fetch_add(1, Ordering::Release);
        old
    }

    /// Read-copy-update: computes the new value from the current one and installs it
    /// unless another writer got there first, in which case `f` runs again on the newer
    /// value. Returns the value installed.
    #[track_caller]
    pub fn rcu(&self, mut f: impl FnMut(&T) -> T, site: &Site) -> Arc<T> {
        self.check_not_updating(site);
        let addr = self.addr();
        let _ = RCU_ACTIVE.try_with(|s| {
            if let Ok(mut s) = s.try_borrow_mut() {
                s.push(addr);
            }
        });
        let _scope = RcuScope(addr);
        let mut current = self.swap.load_full();
        loop {
            let new = Arc::new(f(&current));
            let previous = self.swap.compare_and_swap(&current, Arc::clone(&new));
            if Arc::ptr_eq(&previous, &current) {
                self.version.fetch_add(1, Ordering::Release);
                return new;
            }
            current = arc_swap::Guard::into_inner(previous);
        }
    }
}

#[cold]
#[inline(never)]
#[track_caller]
fn reentered_update(site: &Site) -> ! {
    panic!(
        "re-entrant write to `{}::{}`: it was written from inside its own `update_{}` \
         closure, which would make the update retry forever; return the new value from \
         the closure instead",
        site.ty, site.field, site.field
    )
}

impl<T: Default> Default for ReadMostly<T> {
    fn default() -> Self {
        ReadMostly::new(T::default())
    }
}

impl<T: fmt::Debug> fmt::Debug for ReadMostly<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&**self.swap.load(), f)
    }
}

// ---------------------------------------------------------------------------------------
// Globals

/// Storage of a `#[shared_state(global)]` instance: built on first use, exactly once.
pub type Global<T> = OnceLock<T>;

/// A field type of a `#[shared_state(global)]` struct: the global is built with `Default`.
#[diagnostic::on_unimplemented(
    message = "`#[shared_state(global)]` needs every field to implement `Default`; `{Self}` does not",
    label = "this field has no `Default`",
    note = "implement `Default` for `{Self}`, or remove `global` and build the state with `new(…)`"
)]
pub trait GlobalField {
    /// The value the global starts with.
    fn global_default() -> Self;
}

impl<T: Default> GlobalField for T {
    #[inline]
    fn global_default() -> Self {
        T::default()
    }
}
