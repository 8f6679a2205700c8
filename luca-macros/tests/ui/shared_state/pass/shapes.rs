// Every counter type, raw identifiers, a struct with no fields,
// a `crate = "…"` override, and other attributes kept on the struct and its fields.
use luca_core::shared_state;

mod reexport {
    pub use luca_core as luca;
}

#[shared_state]
#[allow(dead_code)]
#[derive(Default)]
struct Counters {
    #[shared(counter)]
    a: u8,
    #[shared(counter)]
    b: u16,
    #[shared(counter)]
    c: u32,
    #[shared(counter)]
    d: u64,
    #[shared(counter)]
    e: usize,
    #[shared(counter)]
    f: i8,
    #[shared(counter)]
    g: i16,
    #[shared(counter)]
    h: i32,
    #[shared(counter)]
    i: i64,
    #[shared(counter)]
    j: isize,
    #[shared(counter)]
    qualified: core::primitive::u64,
}

#[shared_state]
struct Raw {
    r#type: String,
    #[allow(unused)]
    plain: (),
}

#[shared_state]
#[derive(Debug, Default)]
struct Empty {}

#[shared_state(crate = "reexport::luca")]
struct Renamed {
    value: u8,
}

fn main() {
    let c = Counters::default();
    assert_eq!(c.add_j(-3), -3);
    assert_eq!(c.incr_qualified(), 1);
    let r = Raw::new("t".into(), ());
    assert_eq!(r.r#type(), "t");
    r.set_type("u".into());
    r.update(|f| f.r#type.push('!'));
    assert_eq!(r.with_type(|t| t.clone()), "u!");
    let _ = Empty::new();
    let _ = format!("{:?}", Empty::default());
    assert_eq!(Renamed::new(3).value(), 3);
}
