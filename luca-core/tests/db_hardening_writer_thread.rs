//! The cases of `db_hardening.rs` (in `hardening/cases.rs`) with inline writes off, so
//! that every write, lone ones included, runs on the writer thread.

#[path = "hardening/cases.rs"]
mod cases;

/// Every write on the writer thread.
fn mode(b: luca_core::DbBuilder) -> luca_core::DbBuilder {
    b.inline_limit(std::time::Duration::ZERO)
}
