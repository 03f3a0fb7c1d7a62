//! Validation helpers every config's `validate()` uses, so errors read alike everywhere.

use anyhow::{Result, bail};

/// `Ok` when `ok`, else an error naming `field` and the reason.
pub fn check(field: &str, ok: bool, reason: &str) -> Result<()> {
    if ok { Ok(()) } else { bail!("{field} {reason}") }
}
