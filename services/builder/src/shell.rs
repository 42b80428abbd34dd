//! Docker's variable substitution for Dockerfile words: `$VAR`, `${VAR}`,
//! `${VAR:-default}`, `${VAR:+alt}`, `${VAR-default}`, `${VAR+alt}`, escapes.

use std::collections::HashMap;

pub fn expand(s: &str, vars: &HashMap<String, String>, escape: char) -> Result<String, String> {
    let mut out = String::new();
    let chars: Vec<char> = s.chars().collect();
    let mut i = 0;
    let mut in_single = false;
    while i < chars.len() {
        let c = chars[i];
        if c == escape && i + 1 < chars.len() && !in_single {
            // keep the escape for `unquote` except before `$`
            if chars[i + 1] == '$' {
                out.push('$');
            } else {
                out.push(c);
                out.push(chars[i + 1]);
            }
            i += 2;
            continue;
        }
        if c == '\'' {
            in_single = !in_single;
            out.push(c);
            i += 1;
            continue;
        }
        if c == '$' && !in_single && i + 1 < chars.len() {
            if chars[i + 1] == '{' {
                let end = closing_brace(&chars[i + 2..], escape).ok_or_else(|| format!("missing '}}' in '{s}'"))?;
                let inner: String = chars[i + 2..i + 2 + end].iter().collect();
                out.push_str(&braced(&inner, vars, escape)?);
                i += 3 + end;
                continue;
            }
            if chars[i + 1].is_ascii_alphanumeric() || chars[i + 1] == '_' {
                let mut j = i + 1;
                while j < chars.len() && (chars[j].is_ascii_alphanumeric() || chars[j] == '_') {
                    j += 1;
                }
                let name: String = chars[i + 1..j].iter().collect();
                out.push_str(vars.get(&name).map(String::as_str).unwrap_or(""));
                i = j;
                continue;
            }
        }
        out.push(c);
        i += 1;
    }
    Ok(out)
}

/// Where the `}` closing a `${` is in `rest` (what follows the `${`): nested `${...}`
/// are skipped whole, as are quoted parts and escaped characters (Moby's lexer
/// expands the word after a modifier recursively, so `${A:-${B:-x}}` nests).
fn closing_brace(rest: &[char], escape: char) -> Option<usize> {
    let mut depth = 0usize;
    let mut i = 0;
    let mut quote: Option<char> = None;
    while i < rest.len() {
        let c = rest[i];
        match quote {
            Some('\'') => {
                if c == '\'' {
                    quote = None;
                }
            }
            Some(_) => {
                if c == escape {
                    i += 1;
                } else if c == '"' {
                    quote = None;
                } else if c == '$' && rest.get(i + 1) == Some(&'{') {
                    depth += 1;
                    i += 1;
                } else if c == '}' && depth > 0 {
                    depth -= 1;
                }
            }
            None => {
                if c == escape {
                    i += 1;
                } else if c == '\'' || c == '"' {
                    quote = Some(c);
                } else if c == '$' && rest.get(i + 1) == Some(&'{') {
                    depth += 1;
                    i += 1;
                } else if c == '}' {
                    if depth == 0 {
                        return Some(i);
                    }
                    depth -= 1;
                }
            }
        }
        i += 1;
    }
    None
}

fn braced(inner: &str, vars: &HashMap<String, String>, escape: char) -> Result<String, String> {
    let name_end = inner.find(|c: char| !(c.is_ascii_alphanumeric() || c == '_')).unwrap_or(inner.len());
    let (name, op) = inner.split_at(name_end);
    if name.is_empty() {
        return Err(format!("bad substitution: ${{{inner}}}"));
    }
    let val = vars.get(name);
    let set_nonempty = val.is_some_and(|v| !v.is_empty());
    Ok(match op {
        "" => val.cloned().unwrap_or_default(),
        o if o.starts_with(":-") => {
            if set_nonempty {
                val.cloned().unwrap()
            } else {
                expand(&o[2..], vars, escape)?
            }
        }
        o if o.starts_with(":+") => {
            if set_nonempty {
                expand(&o[2..], vars, escape)?
            } else {
                String::new()
            }
        }
        o if o.starts_with('-') => match val {
            Some(v) => v.clone(),
            None => expand(&o[1..], vars, escape)?,
        },
        o if o.starts_with('+') => match val {
            Some(_) => expand(&o[1..], vars, escape)?,
            None => String::new(),
        },
        o if o.starts_with(":?") || o.starts_with('?') => match val {
            Some(v) if !v.is_empty() || o.starts_with('?') => v.clone(),
            _ => return Err(format!("{name}: {}", o.trim_start_matches(':').trim_start_matches('?'))),
        },
        _ => return Err(format!("unsupported modifier ({op}) in substitution")),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    #[test]
    fn expands() {
        let v: HashMap<String, String> = [("A", "1"), ("E", "")].into_iter().map(|(a, b)| (a.into(), b.into())).collect();
        let x = |s: &str| expand(s, &v, '\\').unwrap();
        assert_eq!(x("$A/${A}"), "1/1");
        assert_eq!(x("${B:-def}"), "def");
        assert_eq!(x("${E:-def}"), "def");
        assert_eq!(x("${E-def}"), "");
        assert_eq!(x("${A:+alt}"), "alt");
        assert_eq!(x("${B:+alt}"), "");
        assert_eq!(x("\\$A"), "$A");
        assert_eq!(x("'$A'"), "'$A'");
        assert_eq!(x("$UNSET-x"), "-x");
        assert!(expand("${", &v, '\\').is_err());
    }

    #[test]
    fn nested() {
        let v: HashMap<String, String> = [("A", "1"), ("C", "3"), ("E", "")].into_iter().map(|(a, b)| (a.into(), b.into())).collect();
        let x = |s: &str| expand(s, &v, '\\').unwrap();
        // Moby's lexer: the word after a modifier is itself expanded
        assert_eq!(x("${B:-${C:-x}}"), "3");
        assert_eq!(x("${B:-${D:-x}}"), "x");
        assert_eq!(x("${A:-${C:-x}}"), "1");
        assert_eq!(x("${A:+${C}}"), "3");
        assert_eq!(x("${B:+${C}}"), "");
        assert_eq!(x("${E:-${B:-${C:+deep}}}"), "deep");
        assert_eq!(x("${B:-${C}}/${A}"), "3/1");
        assert_eq!(x("${B-$C}"), "3");
        // an escaped brace is part of the word, not its end
        assert_eq!(x("${B:-a\\}b}"), "a\\}b");
        assert_eq!(x("${B:-'}'}"), "'}'");
        assert!(expand("${B:-${C}", &v, '\\').is_err());
        // the escape token of the Dockerfile is honoured
        assert_eq!(expand("${B:-${C:-x}}", &v, '`').unwrap(), "3");
    }
}
