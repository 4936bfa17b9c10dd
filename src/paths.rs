//! The one way an id or a name becomes part of a file path (SPEC §11: no id
//! reaches a file path unchecked). Tenant ids, job ids, completion ids and
//! artifact names are validated by their own rules first; [`join`] is the
//! last line: it refuses anything that is not a single normal path
//! component, so a rule that is too lax somewhere never escapes a directory.

use std::path::{Component, Path, PathBuf};

/// The longest component accepted (the common `NAME_MAX`, in bytes).
pub const MAX_COMPONENT: usize = 255;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0:?} is not a single file-name component")]
pub struct UnsafeComponent(pub String);

impl From<UnsafeComponent> for std::io::Error {
    fn from(e: UnsafeComponent) -> std::io::Error {
        std::io::Error::new(std::io::ErrorKind::InvalidInput, e)
    }
}

/// `part` when it names one entry of a directory: not empty, not `.` or
/// `..`, no `/`, `\`, NUL or other control character, at most
/// [`MAX_COMPONENT`] bytes.
pub fn component(part: &str) -> Result<&str, UnsafeComponent> {
    let bad = || UnsafeComponent(part.to_owned());
    if part.is_empty()
        || part.len() > MAX_COMPONENT
        || part == "."
        || part == ".."
        || part
            .chars()
            .any(|c| c == '/' || c == '\\' || c.is_control())
    {
        return Err(bad());
    }
    // What the platform makes of it must be that very one component.
    let mut parts = Path::new(part).components();
    match (parts.next(), parts.next()) {
        (Some(Component::Normal(p)), None) if p == part => Ok(part),
        _ => Err(bad()),
    }
}

/// `base` joined with each of `parts`, every one checked by [`component`].
pub fn join(base: &Path, parts: &[&str]) -> Result<PathBuf, UnsafeComponent> {
    let mut path = base.to_path_buf();
    for part in parts {
        path.push(component(part)?);
    }
    Ok(path)
}

/// A relative path of several components (a pack's declared artifact path,
/// `out/report.txt`) joined under `base`, each component checked; `.` and
/// empty components (`out//a`, `./a`) are skipped, anything else refused.
pub fn join_relative(base: &Path, relative: &str) -> Result<PathBuf, UnsafeComponent> {
    if relative.starts_with('/') {
        return Err(UnsafeComponent(relative.to_owned()));
    }
    let parts: Vec<&str> = relative
        .split('/')
        .filter(|p| !p.is_empty() && *p != ".")
        .collect();
    if parts.is_empty() {
        return Err(UnsafeComponent(relative.to_owned()));
    }
    join(base, &parts)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn single_normal_components_pass() {
        for ok in [
            "acme",
            "a.b",
            "a:b",
            "01ARZ3NDEKTSV4RRFFQ69G5FAV",
            "report.txt",
            "...",
            ".hidden",
            "é",
            &"x".repeat(255),
        ] {
            assert_eq!(component(ok), Ok(ok), "{ok}");
        }
    }

    #[test]
    fn anything_else_is_refused() {
        for bad in [
            "",
            ".",
            "..",
            "a/b",
            "/",
            "/etc",
            "../x",
            "a\\b",
            "..\\x",
            "a\0b",
            "a\nb",
            "x/",
            &"x".repeat(256),
        ] {
            assert!(component(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn join_checks_every_part_and_stays_under_the_base() {
        let base = Path::new("/srv/artifacts");
        assert_eq!(
            join(base, &["acme", "01ARZ3NDEKTSV4RRFFQ69G5FAV", "out.bin"]).unwrap(),
            Path::new("/srv/artifacts/acme/01ARZ3NDEKTSV4RRFFQ69G5FAV/out.bin")
        );
        assert!(join(base, &["..", "job", "x"]).is_err());
        assert!(join(base, &["acme", "job", "../../etc/passwd"]).is_err());
        assert!(join(base, &["acme", "/etc/passwd"]).is_err());
        assert!(join(base, &["."]).is_err());
    }

    #[test]
    fn relative_paths_are_joined_component_by_component() {
        let base = Path::new("/ws/job");
        assert_eq!(
            join_relative(base, "out/report.txt").unwrap(),
            Path::new("/ws/job/out/report.txt")
        );
        assert_eq!(
            join_relative(base, "./out//a").unwrap(),
            Path::new("/ws/job/out/a")
        );
        for bad in ["", ".", "/etc/passwd", "../x", "out/../../x", "a\\..\\b"] {
            assert!(join_relative(base, bad).is_err(), "{bad:?}");
        }
    }
}
