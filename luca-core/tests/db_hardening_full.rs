//! The cases of `db_hardening.rs` (in `hardening/cases.rs`) at `synchronous=FULL`, where a
//! group waits for the writers of the group before it (see `DbBuilder::max_wait`): every
//! guarantee holds with that wait in the path too.

#[path = "hardening/cases.rs"]
mod cases;

/// Every commit syncs; groups wait for their writers' next writes.
fn mode(b: luca_core::DbBuilder) -> luca_core::DbBuilder {
    b.synchronous(luca_core::pragmas::Synchronous::Full)
}
