// Every invalid option of `#[shared_state(…)]` and `#[shared(…)]`, one per struct.
use luca_core::shared_state;

#[shared_state(globl)]
struct UnknownStructArgument {
    a: u8,
}

#[shared_state(global, global)]
struct DuplicateStructArgument {
    a: u8,
}

#[shared_state(global = true)]
struct GlobalWithValue {
    a: u8,
}

#[shared_state(crate = luca_core)]
struct CrateNotAString {
    a: u8,
}

#[shared_state(crate = "not a path")]
struct CrateNotAPath {
    a: u8,
}

#[shared_state]
struct UnknownFieldOption {
    #[shared(atomic)]
    a: u64,
}

#[shared_state]
struct DuplicateFieldOption {
    #[shared(counter, counter)]
    a: u64,
}

#[shared_state]
struct DuplicateFieldAttribute {
    #[shared(read_mostly)]
    #[shared(read_mostly)]
    a: u64,
}

#[shared_state]
struct CounterAndReadMostly {
    #[shared(counter, read_mostly)]
    a: u64,
}

#[shared_state]
struct BareShared {
    #[shared]
    a: u64,
}

#[shared_state]
struct OptionWithValue {
    #[shared(counter = 1)]
    a: u64,
}

fn main() {}
