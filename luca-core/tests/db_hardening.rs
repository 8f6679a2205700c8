//! `Db` against hostile closures and settings (the cases are in `hardening/cases.rs`),
//! with the defaults: a write that finds the path idle runs inline, on its caller's
//! thread. `db_hardening_writer_thread.rs` runs the same cases with every write on the
//! writer thread.

#[path = "hardening/cases.rs"]
mod cases;

/// The defaults.
fn mode(b: luca_core::DbBuilder) -> luca_core::DbBuilder {
    b
}
