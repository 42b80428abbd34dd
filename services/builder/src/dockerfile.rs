//! The Dockerfile parser: directives (`syntax`, `escape`), comments, line
//! continuations, instructions with their flags, JSON (exec) and shell forms.
//! Variable substitution happens at build time (see `shell.rs`), because it depends
//! on ARG and ENV values that change from step to step.

use std::fmt;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParseError {
    pub line: usize,
    pub message: String,
}

impl fmt::Display for ParseError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "dockerfile parse error line {}: {}", self.line, self.message)
    }
}

/// One instruction as written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Instruction {
    /// Upper-case keyword (FROM, RUN, ...).
    pub cmd: String,
    /// `--name=value` flags before the arguments.
    pub flags: Vec<(String, String)>,
    /// The arguments after the flags, continuations joined.
    pub rest: String,
    /// Exec (JSON array) form, when the arguments were one.
    pub json: Option<Vec<String>>,
    /// The instruction as Docker prints it in `Step N/M : ...`.
    pub original: String,
    pub line: usize,
}

impl Instruction {
    pub fn flag(&self, name: &str) -> Option<&str> {
        self.flags.iter().rev().find(|(k, _)| k == name).map(|(_, v)| v.as_str())
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Dockerfile {
    pub escape: char,
    pub instructions: Vec<Instruction>,
}

pub const KNOWN: &[&str] = &[
    "ADD", "ARG", "CMD", "COPY", "ENTRYPOINT", "ENV", "EXPOSE", "FROM", "HEALTHCHECK", "LABEL", "MAINTAINER",
    "ONBUILD", "RUN", "SHELL", "STOPSIGNAL", "USER", "VOLUME", "WORKDIR",
];

/// Flags each instruction accepts (classic builder).
fn allowed_flags(cmd: &str) -> &'static [&'static str] {
    match cmd {
        "FROM" => &["platform"],
        "COPY" => &["from", "chown", "chmod", "link", "parents", "exclude"],
        "ADD" => &["chown", "chmod", "link", "checksum", "keep-git-dir", "exclude"],
        "HEALTHCHECK" => &["interval", "timeout", "start-period", "start-interval", "retries"],
        "RUN" => &["mount", "network", "security"],
        _ => &[],
    }
}

pub fn parse(text: &str) -> Result<Dockerfile, ParseError> {
    let lines: Vec<&str> = text.split('\n').map(|l| l.strip_suffix('\r').unwrap_or(l)).collect();
    // parser directives: only at the top, before anything else
    let mut escape = '\\';
    let mut i = 0;
    let mut seen = std::collections::HashSet::new();
    while i < lines.len() {
        let t = lines[i].trim();
        let Some(d) = t.strip_prefix('#') else { break };
        let d = d.trim();
        let Some((k, v)) = d.split_once('=') else { break };
        let k = k.trim().to_ascii_lowercase();
        if k.contains(' ') {
            break;
        }
        if !seen.insert(k.clone()) {
            return Err(ParseError { line: i + 1, message: format!("only one {k} parser directive can be used") });
        }
        if k == "escape" {
            let v = v.trim();
            escape = match v {
                "\\" => '\\',
                "`" => '`',
                _ => return Err(ParseError { line: i + 1, message: format!("invalid escape token '{v}' does not match ` or \\") }),
            };
        }
        i += 1;
    }

    let mut out = Vec::new();
    let mut cur: Option<(usize, String)> = None;
    for (n, raw) in lines.iter().enumerate() {
        let lineno = n + 1;
        let trimmed = raw.trim_start();
        if trimmed.starts_with('#') {
            continue; // comments, also inside continuations
        }
        if cur.is_none() && trimmed.trim().is_empty() {
            continue;
        }
        let body = raw.trim_end();
        let (content, continues) = match body.strip_suffix(escape) {
            Some(c) if !body.ends_with(&format!("{escape}{escape}")) || escape != '\\' => (c.to_string(), true),
            _ => (body.to_string(), false),
        };
        match cur.as_mut() {
            None => cur = Some((lineno, content.trim_start().to_string())),
            Some((_, acc)) => {
                if !content.trim().is_empty() {
                    acc.push_str(&content);
                }
            }
        }
        if !continues {
            let (start, acc) = cur.take().unwrap();
            out.push(parse_instruction(&acc, start, escape)?);
        }
    }
    if let Some((start, acc)) = cur.take() {
        if !acc.trim().is_empty() {
            out.push(parse_instruction(&acc, start, escape)?);
        }
    }
    if out.is_empty() {
        return Err(ParseError { line: 0, message: "file with no instructions".into() });
    }
    Ok(Dockerfile { escape, instructions: out })
}

fn parse_instruction(text: &str, line: usize, escape: char) -> Result<Instruction, ParseError> {
    let text = text.trim();
    let (kw, rest) = match text.find(char::is_whitespace) {
        Some(p) => (&text[..p], text[p..].trim_start()),
        None => (text, ""),
    };
    let cmd = kw.to_ascii_uppercase();
    if !KNOWN.contains(&cmd.as_str()) {
        return Err(ParseError { line, message: format!("unknown instruction: {kw}") });
    }
    // flags
    let mut flags = Vec::new();
    let mut rest = rest.to_string();
    if cmd != "ONBUILD" {
        loop {
            let r = rest.trim_start();
            if !r.starts_with("--") {
                rest = r.to_string();
                break;
            }
            let end = r.find(char::is_whitespace).unwrap_or(r.len());
            let tok = &r[2..end];
            let (k, v) = tok.split_once('=').unwrap_or((tok, ""));
            if !allowed_flags(&cmd).contains(&k) {
                return Err(ParseError { line, message: format!("unknown flag: {k}") });
            }
            flags.push((k.to_string(), v.to_string()));
            rest = r[end..].to_string();
        }
    }
    let rest = rest.trim().to_string();
    let json = if rest.starts_with('[') {
        serde_json::from_str::<Vec<serde_json::Value>>(&rest)
            .ok()
            .and_then(|v| v.into_iter().map(|x| x.as_str().map(str::to_string)).collect::<Option<Vec<String>>>())
    } else {
        None
    };
    let _ = escape;
    let needs_args = !matches!(cmd.as_str(), "CMD" | "ENTRYPOINT" | "RUN" | "SHELL" | "HEALTHCHECK");
    if needs_args && rest.is_empty() {
        return Err(ParseError { line, message: format!("{cmd} requires at least one argument") });
    }
    if cmd == "RUN" && rest.is_empty() {
        return Err(ParseError { line, message: "RUN requires at least one argument".into() });
    }
    Ok(Instruction { original: text.split_whitespace().collect::<Vec<_>>().join(" "), cmd, flags, rest, json, line })
}

/// Split `k=v k2="v 2"` (ENV, LABEL, ARG) into pairs, with Docker's quoting rules.
/// The legacy `ENV key value` form gives one pair (only for ENV).
pub fn key_values(rest: &str, legacy_ok: bool, escape: char) -> Result<Vec<(String, String)>, String> {
    let words = split_words(rest, escape);
    if words.is_empty() {
        return Err("requires at least one argument".into());
    }
    if !words[0].contains('=') {
        if !legacy_ok {
            return Err(format!("Syntax error - can't find = in \"{}\". Must be of the form: name=value", words[0]));
        }
        let mut it = rest.trim().splitn(2, char::is_whitespace);
        let k = it.next().unwrap_or("").to_string();
        let v = it.next().unwrap_or("").trim().to_string();
        if v.is_empty() {
            return Err(format!("ENV names can not be blank"));
        }
        return Ok(vec![(k, unquote(&v, escape))]);
    }
    let mut out = Vec::new();
    for w in words {
        let Some((k, v)) = w.split_once('=') else {
            return Err(format!("Syntax error - can't find = in \"{w}\". Must be of the form: name=value"));
        };
        if k.is_empty() {
            return Err("ENV names can not be blank".into());
        }
        out.push((k.to_string(), unquote(v, escape)));
    }
    Ok(out)
}

/// Words separated by unquoted whitespace; quotes kept (removed later by `unquote`).
pub fn split_words(s: &str, escape: char) -> Vec<String> {
    let mut words = Vec::new();
    let mut cur = String::new();
    let mut quote: Option<char> = None;
    let mut chars = s.chars().peekable();
    while let Some(c) = chars.next() {
        if c == escape && quote != Some('\'') {
            cur.push(c);
            if let Some(n) = chars.next() {
                cur.push(n);
            }
            continue;
        }
        match quote {
            Some(q) if c == q => {
                quote = None;
                cur.push(c);
            }
            Some(_) => cur.push(c),
            None if c == '"' || c == '\'' => {
                quote = Some(c);
                cur.push(c);
            }
            None if c.is_whitespace() => {
                if !cur.is_empty() {
                    words.push(std::mem::take(&mut cur));
                }
            }
            None => cur.push(c),
        }
    }
    if !cur.is_empty() {
        words.push(cur);
    }
    words
}

/// Remove quotes and escapes: `"a b"` -> `a b`, `a\ b` -> `a b`.
pub fn unquote(s: &str, escape: char) -> String {
    let mut out = String::new();
    let mut quote: Option<char> = None;
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        if c == escape && quote != Some('\'') {
            if let Some(n) = chars.next() {
                if quote == Some('"') && !matches!(n, '"' | '$') && n != escape {
                    out.push(c);
                }
                out.push(n);
            }
            continue;
        }
        match quote {
            Some(q) if c == q => quote = None,
            Some(_) => out.push(c),
            None if c == '"' || c == '\'' => quote = Some(c),
            None => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_getting_started() {
        let df = parse(
            "# Use an official runtime\nFROM python:2.7-slim\nWORKDIR /app\nCOPY . /app\nRUN pip install --trusted-host pypi.python.org \\\n    -r requirements.txt\nEXPOSE 80\nENV NAME World\nCMD [\"python\", \"app.py\"]\n",
        )
        .unwrap();
        let cmds: Vec<&str> = df.instructions.iter().map(|i| i.cmd.as_str()).collect();
        assert_eq!(cmds, ["FROM", "WORKDIR", "COPY", "RUN", "EXPOSE", "ENV", "CMD"]);
        assert_eq!(df.instructions[3].rest, "pip install --trusted-host pypi.python.org     -r requirements.txt");
        assert_eq!(df.instructions[6].json.as_ref().unwrap(), &vec!["python".to_string(), "app.py".into()]);
        assert_eq!(df.instructions[1].line, 3);
    }

    #[test]
    fn directives_comments_and_escape() {
        let df = parse("# escape=`\n# syntax=docker/dockerfile:1\nFROM x\nRUN echo a `\n# a comment inside\n  b\n").unwrap();
        assert_eq!(df.escape, '`');
        assert_eq!(df.instructions[1].rest, "echo a   b");
    }

    #[test]
    fn flags_and_errors() {
        let df = parse("FROM --platform=linux/amd64 busybox AS build\nCOPY --from=build --chown=1:2 /a /b\n").unwrap();
        assert_eq!(df.instructions[0].flag("platform"), Some("linux/amd64"));
        assert_eq!(df.instructions[0].rest, "busybox AS build");
        assert_eq!(df.instructions[1].flag("chown"), Some("1:2"));
        let e = parse("FROM x\nFOO bar\n").unwrap_err();
        assert_eq!(e.to_string(), "dockerfile parse error line 2: unknown instruction: FOO");
        assert!(parse("FROM x\nCOPY --bogus=1 a b\n").is_err());
        assert!(parse("# only comments\n\n").is_err());
        assert!(parse("FROM x\nWORKDIR\n").is_err());
    }

    #[test]
    fn key_value_forms() {
        assert_eq!(key_values("NAME World", true, '\\').unwrap(), vec![("NAME".into(), "World".into())]);
        assert_eq!(
            key_values(r#"A=1 B="two words" C=three\ words"#, true, '\\').unwrap(),
            vec![("A".into(), "1".into()), ("B".into(), "two words".into()), ("C".into(), "three words".into())]
        );
        assert!(key_values("nokv", false, '\\').is_err());
    }
}
