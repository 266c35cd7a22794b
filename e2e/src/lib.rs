//! End-to-end tests live in `tests/`; `tests/support` starts `strata up` and runs kubectl.
