// `#[cfg]` on a field goes with every item generated for it: a field compiled out takes
// its accessors, its `new` parameter, its `Default`, `Debug` and `global` parts, its
// member of the `…Fields` view and its lock in `update` with it. `#[cfg(all())]` is always
// on, `#[cfg(any())]` always off.
use luca_core::shared_state;

/// A type that exists only when the field that uses it is compiled in.
#[cfg(any())]
struct OnlyWhenOn;

#[shared_state(global)]
#[derive(Debug, Default)]
pub struct Flags {
    #[cfg(all())]
    on: Vec<u32>,
    #[cfg(any())]
    off: OnlyWhenOn,
    #[cfg(any())]
    #[shared(counter)]
    off_counter: u64,
    #[cfg(all())]
    #[shared(counter)]
    on_counter: u64,
    #[cfg(any())]
    #[shared(read_mostly)]
    off_mostly: OnlyWhenOn,
    #[shared(read_mostly)]
    always: u8,
    /// `cfg_attr` stays on the stored field only.
    #[cfg_attr(all(), allow(unused))]
    tagged: u64,
}

fn main() {
    let f = Flags::new(vec![1], 2, 3, 4);
    assert_eq!(f.on(), vec![1]);
    assert_eq!(f.incr_on_counter(), 3);
    assert_eq!(*f.always(), 3);
    assert_eq!(f.update(|v| v.on.len() as u64 + *v.tagged), 5);
    assert_eq!(
        format!("{f:?}"),
        "Flags { on: [1], on_counter: 3, always: 3, tagged: 4 }"
    );
    assert_eq!(Flags::default().on_counter(), 0);
    assert_eq!(Flags::global().poison_count(), 0);
}
