//! Go's `path.Clean`, the lexical cleaning Docker applies to slash paths (mount
//! targets, container paths, `.dockerignore` patterns).

/// The shortest path equal to `p` by purely lexical processing (Go's `path.Clean`):
/// repeated slashes become one, `.` elements go, `..` removes the element before it
/// (and is dropped at the root of an absolute path, kept at the start of a relative
/// one), no trailing slash; an empty result is `.` (relative) or `/` (absolute).
pub fn clean(p: &str) -> String {
    let rooted = p.starts_with('/');
    let mut out: Vec<&str> = Vec::new();
    for part in p.split('/') {
        match part {
            "" | "." => {}
            ".." => {
                if out.last().is_some_and(|l| *l != "..") {
                    out.pop();
                } else if !rooted {
                    out.push("..");
                }
            }
            x => out.push(x),
        }
    }
    let s = out.join("/");
    match (rooted, s.is_empty()) {
        (true, _) => format!("/{s}"),
        (false, true) => ".".into(),
        (false, false) => s,
    }
}

/// `p` as a path inside a root: made absolute, then cleaned, so no `..` climbs out
/// (`clean("/" + p)`).
pub fn clean_in_root(p: &str) -> String {
    clean(&format!("/{p}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn go_path_clean() {
        // Go's path/path_test.go cases
        for (i, o) in [
            ("", "."),
            ("abc", "abc"),
            ("abc/def", "abc/def"),
            (".", "."),
            ("..", ".."),
            ("../..", "../.."),
            ("../../abc", "../../abc"),
            ("/abc", "/abc"),
            ("/", "/"),
            ("abc/", "abc"),
            ("abc/def/", "abc/def"),
            ("/abc/", "/abc"),
            ("//abc", "/abc"),
            ("abc//def//ghi", "abc/def/ghi"),
            ("abc/./def", "abc/def"),
            ("/./abc/def", "/abc/def"),
            ("abc/.", "abc"),
            ("abc/def/ghi/../jkl", "abc/def/jkl"),
            ("abc/def/../ghi/../jkl", "abc/jkl"),
            ("abc/def/..", "abc"),
            ("abc/def/../..", "."),
            ("/abc/def/../..", "/"),
            ("abc/def/../../..", ".."),
            ("/abc/def/../../..", "/"),
            ("abc/def/../../../ghi/jkl/../../../mno", "../../mno"),
            ("abc/./../def", "def"),
            ("abc//./../def", "def"),
            ("abc/../../././../def", "../../def"),
        ] {
            assert_eq!(clean(i), o, "clean({i:?})");
        }
    }

    #[test]
    fn in_root_never_climbs_out() {
        assert_eq!(clean_in_root("../../etc/passwd"), "/etc/passwd");
        assert_eq!(clean_in_root("a/./b/"), "/a/b");
        assert_eq!(clean_in_root(""), "/");
        assert_eq!(clean_in_root("/x/.."), "/");
    }
}
