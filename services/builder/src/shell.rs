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
                let end = chars[i + 2..].iter().position(|&x| x == '}').ok_or_else(|| format!("missing '}}' in '{s}'"))?;
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
}
