//! `.dockerignore` as Moby's classic builder reads it (moby/patternmatcher and
//! moby/buildkit's ignorefile): the client leaves ignored files out of the context;
//! the daemon only drops `.dockerignore` itself and the Dockerfile when the patterns
//! name them (`removeDockerfile`), so neither lands in the image through `COPY .`.
//! Hand-written: no crate implements Go's patternmatcher semantics (`**`, `!`
//! exceptions evaluated in order, a parent directory's match counting for a file).

use std::path::Path;

/// One pattern: a regular expression over slash-separated relative paths.
#[derive(Debug)]
struct Pattern {
    re: regex_lite::Regex,
    exclusion: bool,
}

#[derive(Debug, Default)]
pub struct Matcher {
    patterns: Vec<Pattern>,
}

use berth_rules::path::clean;

/// The lines of a `.dockerignore` as patterns: trimmed, comments and blank lines
/// skipped, `!` kept in front of the cleaned path, a leading `/` dropped.
pub fn read_patterns(text: &str) -> Vec<String> {
    let mut out = Vec::new();
    for line in text.lines() {
        let mut p = line.trim();
        if p.is_empty() || p.starts_with('#') {
            continue;
        }
        let mut excl = false;
        if let Some(rest) = p.strip_prefix('!') {
            excl = true;
            p = rest.trim();
        }
        if p.is_empty() {
            out.push("!".into());
            continue;
        }
        let mut c = clean(p);
        if c.len() > 1 && c.starts_with('/') {
            c = c[1..].to_string();
        }
        out.push(if excl { format!("!{c}") } else { c });
    }
    out
}

fn to_regex(pattern: &str) -> Result<regex_lite::Regex, String> {
    let mut re = String::from("^");
    let chars: Vec<char> = pattern.chars().collect();
    let mut i = 0;
    while i < chars.len() {
        let ch = chars[i];
        match ch {
            '*' if chars.get(i + 1) == Some(&'*') => {
                i += 1;
                if chars.get(i + 1) == Some(&'/') {
                    i += 1;
                }
                if i + 1 >= chars.len() {
                    re.push_str(".*");
                } else {
                    re.push_str("(.*/)?");
                }
            }
            '*' => re.push_str("[^/]*"),
            '?' => re.push_str("[^/]"),
            '.' | '$' | '+' | '(' | ')' | '{' | '}' | '|' | '^' => {
                re.push('\\');
                re.push(ch);
            }
            '\\' => {
                i += 1;
                match chars.get(i) {
                    Some(c) => {
                        re.push('\\');
                        re.push(*c);
                    }
                    None => re.push_str("\\\\"),
                }
            }
            '[' => {
                // a class as filepath.Match writes it; `!` negates like `^`
                let end = chars[i + 1..].iter().position(|c| *c == ']').map(|e| i + 1 + e).ok_or("syntax error in pattern")?;
                let mut class: String = chars[i + 1..end].iter().collect();
                if let Some(rest) = class.strip_prefix('!') {
                    class = format!("^{rest}");
                }
                re.push('[');
                re.push_str(&class);
                re.push(']');
                i = end;
            }
            c => re.push(c),
        }
        i += 1;
    }
    re.push('$');
    regex_lite::Regex::new(&re).map_err(|e| e.to_string())
}

impl Matcher {
    pub fn new(patterns: &[String]) -> Result<Matcher, String> {
        let mut m = Matcher::default();
        for p in patterns {
            let (exclusion, p) = match p.strip_prefix('!') {
                Some(rest) => (true, rest),
                None => (false, p.as_str()),
            };
            if p.is_empty() {
                return Err("illegal exclusion pattern: \"!\"".into());
            }
            m.patterns.push(Pattern { re: to_regex(&clean(p))?, exclusion });
        }
        Ok(m)
    }

    /// `MatchesOrParentMatches`: does `file` (relative, slash-separated) match, or
    /// one of its parent directories, once every pattern has had its say in order?
    pub fn matches_or_parent_matches(&self, file: &str) -> bool {
        let file = clean(file);
        let parent = match file.rfind('/') {
            Some(i) => file[..i].to_string(),
            None => ".".to_string(),
        };
        let dirs: Vec<&str> = parent.split('/').collect();
        let mut matched = false;
        for p in &self.patterns {
            if p.exclusion != matched {
                continue;
            }
            let mut hit = p.re.is_match(&file);
            if !hit && parent != "." {
                hit = (0..dirs.len()).any(|i| p.re.is_match(&dirs[..=i].join("/")));
            }
            if hit {
                matched = !p.exclusion;
            }
        }
        matched
    }
}

/// Moby's `removeDockerfile`: with a `.dockerignore` in the context, remove it and
/// the Dockerfile when its patterns name them. Nothing else is filtered: the client
/// already left the ignored files out.
pub fn remove_ignored_build_files(ctx: &Path, dockerfile: &str) -> Result<(), String> {
    let Ok(text) = std::fs::read_to_string(ctx.join(".dockerignore")) else { return Ok(()) };
    let m = Matcher::new(&read_patterns(&text)).map_err(|e| format!("error reading .dockerignore: {e}"))?;
    for f in [".dockerignore", dockerfile] {
        let rel = clean(f);
        if rel.starts_with("..") || rel.starts_with('/') || rel == "." {
            continue;
        }
        if m.matches_or_parent_matches(&rel) {
            // the context is the builder's own private copy; a directory named so
            // is left alone, as Moby's Remove of a file name would fail on it
            let p = ctx.join(&rel);
            if std::fs::symlink_metadata(&p).is_ok_and(|md| !md.is_dir()) {
                let _ = std::fs::remove_file(&p);
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn m(lines: &str) -> Matcher {
        Matcher::new(&read_patterns(lines)).unwrap()
    }

    #[test]
    fn reads_lines_as_the_ignorefile_does() {
        assert_eq!(
            read_patterns("ignored\nDockerfile\n .dockerignore \n ignored-with-spaces \n!ignored/subdir/excepted-file\n! ignored/subdir/excepted-with-spaces  \n\n#*\n/abs/./x/../y\n"),
            vec!["ignored", "Dockerfile", ".dockerignore", "ignored-with-spaces", "!ignored/subdir/excepted-file", "!ignored/subdir/excepted-with-spaces", "abs/y"]
        );
    }

    #[test]
    fn matches_as_moby() {
        let pm = m("ignored\n!ignored/subdir/excepted-file\n*.md\n!README.md\ndocs/**\n**/*.tmp\na?c\n[xy]z\n");
        assert!(pm.matches_or_parent_matches("ignored"));
        assert!(pm.matches_or_parent_matches("ignored/subdir/file"));
        assert!(!pm.matches_or_parent_matches("ignored/subdir/excepted-file"));
        assert!(pm.matches_or_parent_matches("notes.md"));
        assert!(!pm.matches_or_parent_matches("README.md"));
        assert!(!pm.matches_or_parent_matches("sub/notes.md"), "* does not cross /");
        assert!(pm.matches_or_parent_matches("docs/a/b"));
        assert!(pm.matches_or_parent_matches("x.tmp"));
        assert!(pm.matches_or_parent_matches("deep/er/x.tmp"));
        assert!(pm.matches_or_parent_matches("abc"));
        assert!(!pm.matches_or_parent_matches("abbc"));
        assert!(pm.matches_or_parent_matches("yz"));
        assert!(!pm.matches_or_parent_matches("Dockerfile"));
        assert!(Matcher::new(&["!".to_string()]).is_err());
    }

    #[test]
    fn removes_only_the_named_build_files() {
        let d = tempfile::tempdir().unwrap();
        std::fs::write(d.path().join(".dockerignore"), ".dockerignore\n.dockerfile.abc\n").unwrap();
        std::fs::write(d.path().join(".dockerfile.abc"), "FROM x\n").unwrap();
        std::fs::write(d.path().join("file.txt"), "x").unwrap();
        remove_ignored_build_files(d.path(), ".dockerfile.abc").unwrap();
        let mut left: Vec<String> = std::fs::read_dir(d.path()).unwrap().flatten().map(|e| e.file_name().to_string_lossy().into_owned()).collect();
        left.sort();
        assert_eq!(left, vec!["file.txt"]);
        // without a .dockerignore nothing goes
        let d = tempfile::tempdir().unwrap();
        std::fs::write(d.path().join("Dockerfile"), "FROM x\n").unwrap();
        remove_ignored_build_files(d.path(), "Dockerfile").unwrap();
        assert!(d.path().join("Dockerfile").exists());
    }
}
