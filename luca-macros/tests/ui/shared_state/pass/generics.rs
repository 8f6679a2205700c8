// Generic structs: lifetimes, type and const parameters, bounds and where clauses are kept,
// and the `…Fields<'_>` view carries them. A derived `Debug` / `Default` holds whenever the
// fields' types have it (`[u8; N]` is `Default` for `N = 2`, not for every `N`).
use std::collections::HashMap;
use std::hash::Hash;

use luca_core::shared_state;

#[shared_state]
#[derive(Debug, Default)]
struct Cache<'a, K: Hash + Eq, V, const N: usize>
where
    V: Clone,
{
    entries: HashMap<K, V>,
    label: &'a str,
    recent: [u8; N],
    #[shared(counter)]
    hits: u64,
    #[shared(read_mostly)]
    fallback: Option<V>,
}

#[shared_state]
struct OnlyLockFree<T: Send + Sync> {
    #[shared(read_mostly)]
    value: T,
    #[shared(counter)]
    reads: usize,
}

fn main() {
    let c: Cache<'static, String, u32, 4> =
        Cache::new(HashMap::new(), "c", [0; 4], 0, None);
    c.update_entries(|e| e.insert("a".into(), 1));
    let n: usize = c.update(|f| {
        f.recent[0] = 1;
        *f.label = "changed";
        f.entries.len()
    });
    assert_eq!(n, 1);
    assert_eq!(c.label(), "changed");
    assert_eq!(c.incr_hits(), 1);
    c.set_fallback(Some(7));
    assert_eq!(*c.fallback(), Some(7));
    let d: Cache<'_, u8, u8, 2> = Default::default();
    println!("{d:?}");

    let o = OnlyLockFree::new(String::from("x"), 0);
    assert_eq!(o.with_value(|v| v.len()), 1);
    assert_eq!(o.incr_reads(), 1);
}
