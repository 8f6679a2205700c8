//! Nothing here: the test is what a downstream user writes.
