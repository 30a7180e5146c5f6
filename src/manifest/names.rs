//! Validation of database and cursor names and of generation file names.
//!
//! Names are compared byte for byte: `my-db` and `my_db` are two different databases, and so are
//! `Db` and `db`. Allowed: 1 to [`NAME_BYTES_MAX`] bytes of `[A-Za-z0-9_.-]`, not starting with
//! `.` (so `.`, `..` and hidden-file names never appear if a name is used as a path component).

use super::error::{shown_name, ManifestError, NameKind, Result};

/// Longest database or cursor name.
pub const NAME_BYTES_MAX: usize = 128;

/// Longest generation file name.
pub const FILE_NAME_BYTES_MAX: usize = 255;

/// Checks a database or cursor name.
pub fn validate_name(kind: NameKind, name: &str) -> Result<()> {
    let reject =
        |reason: &'static str| ManifestError::InvalidName { kind, name: shown_name(name, 160), reason };
    if name.is_empty() {
        return Err(reject("the name is empty"));
    }
    if name.len() > NAME_BYTES_MAX {
        return Err(reject("the name is longer than 128 bytes"));
    }
    if name.starts_with('.') {
        return Err(reject("the name starts with '.'"));
    }
    if !name.bytes().all(|byte| byte.is_ascii_alphanumeric() || matches!(byte, b'_' | b'.' | b'-')) {
        return Err(reject("the name holds a character outside [A-Za-z0-9_.-]"));
    }
    Ok(())
}

/// Checks a generation file name.
pub(crate) fn validate_file_name(name: &str) -> Result<()> {
    let reject =
        |reason: &'static str| ManifestError::InvalidFileName { name: shown_name(name, 300), reason };
    if name.is_empty() {
        return Err(reject("the file name is empty"));
    }
    if name.len() > FILE_NAME_BYTES_MAX {
        return Err(reject("the file name is longer than 255 bytes"));
    }
    if name.bytes().any(|byte| byte == b'/' || byte == 0) {
        return Err(reject("the file name holds '/' or NUL"));
    }
    if name == "." || name == ".." {
        return Err(reject("the file name is '.' or '..'"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_the_documented_set() {
        for name in ["a", "my-db", "my_db", "My.DB-2", "x".repeat(128).as_str()] {
            validate_name(NameKind::Database, name).unwrap();
        }
    }

    #[test]
    fn rejects_with_a_reason() {
        let long = "x".repeat(129);
        for (name, reason) in [
            ("", "the name is empty"),
            (long.as_str(), "the name is longer than 128 bytes"),
            (".hidden", "the name starts with '.'"),
            ("a b", "the name holds a character outside [A-Za-z0-9_.-]"),
            ("a/b", "the name holds a character outside [A-Za-z0-9_.-]"),
            ("é", "the name holds a character outside [A-Za-z0-9_.-]"),
        ] {
            match validate_name(NameKind::Database, name) {
                Err(ManifestError::InvalidName { reason: got, .. }) => assert_eq!(got, reason),
                other => panic!("{name:?}: {other:?}"),
            }
        }
        let message = validate_name(NameKind::Cursor, "").unwrap_err().to_string();
        assert!(message.contains("[A-Za-z0-9_.-]"), "{message}");
    }

    #[test]
    fn file_names() {
        validate_file_name("gen-000001.pages").unwrap();
        assert!(validate_file_name("").is_err());
        assert!(validate_file_name("a/b").is_err());
        assert!(validate_file_name("..").is_err());
        assert!(validate_file_name(&"f".repeat(256)).is_err());
    }
}
