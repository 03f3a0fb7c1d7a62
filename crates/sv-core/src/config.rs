//! Validation helpers every config's `validate()` uses, so errors read alike everywhere.

use anyhow::{Result, bail};

/// `Ok` when `ok`, else an error naming `field` and the reason.
pub fn check(field: &str, ok: bool, reason: &str) -> Result<()> {
    if ok { Ok(()) } else { bail!("{field} {reason}") }
}

/// For a type that configs write as one string (`#[serde(try_from = "String", into = "String")]`):
/// implements `TryFrom<String>` through its `FromStr` (whose error is a `String`) and
/// `From<T> for String` through its `Display`, so parsing and printing live in one place each.
#[macro_export]
macro_rules! serde_as_string {
    ($t:ty) => {
        impl TryFrom<String> for $t {
            type Error = String;
            fn try_from(s: String) -> Result<Self, String> {
                s.parse()
            }
        }

        impl From<$t> for String {
            fn from(v: $t) -> String {
                v.to_string()
            }
        }
    };
}
