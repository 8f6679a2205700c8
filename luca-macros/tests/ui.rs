//! Compile-time behaviour of the macros: what must compile, and every misuse with the
//! message it produces. Regenerate snapshots with `TRYBUILD=overwrite` and review the diff.

#[test]
fn db_retry_ui() {
    let t = trybuild::TestCases::new();
    t.pass("tests/ui/db_retry/pass/*.rs");
    t.compile_fail("tests/ui/db_retry/fail/*.rs");
}

#[test]
fn shared_state_ui() {
    let t = trybuild::TestCases::new();
    t.pass("tests/ui/shared_state/pass/*.rs");
    t.compile_fail("tests/ui/shared_state/fail/*.rs");
}
