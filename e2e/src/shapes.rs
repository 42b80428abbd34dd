//! Shapes of Docker API answers, compared the way a strict client reads them: the
//! status, the content type, and for JSON every key Docker sends with the same
//! name, case and JSON type (`null` is not `[]`, a number is not a string), nothing
//! berth adds that Docker does not send; values that are data (IDs, times, sizes,
//! names) are not compared unless a case asks for them. Messages are compared as
//! text once the IDs and names of the run are replaced by placeholders.

use serde_json::Value;

/// The type of a JSON value as a client sees it.
pub fn kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "bool",
        Value::Number(n) if n.is_f64() => "float",
        Value::Number(_) => "int",
        Value::String(_) => "string",
        Value::Array(_) => "array",
        Value::Object(_) => "object",
    }
}

/// Rules of one comparison.
#[derive(Debug, Default, Clone)]
pub struct Rules {
    /// Objects whose keys are data (labels, networks by name, ports): only the
    /// values' shapes are compared. Pointer patterns, `*` for any one segment.
    pub maps: Vec<String>,
    /// Pointers whose values are compared exactly (after normalising text).
    pub exact: Vec<String>,
    /// Pointers Docker sends that berth may leave out or send otherwise (with why).
    pub ignore: Vec<String>,
}

/// Does a JSON pointer match a pattern (`*` matches one segment, a trailing `/**`
/// anything below)?
pub fn pointer_matches(pattern: &str, ptr: &str) -> bool {
    // `**/x/y`: the pointer ends with /x/y, at any depth
    if let Some(tail) = pattern.strip_prefix("**") {
        let n = tail.split('/').count() - 1;
        let segs: Vec<&str> = ptr.split('/').collect();
        if segs.len() < n + 1 {
            return false;
        }
        let suffix = format!("/{}", segs[segs.len() - n..].join("/"));
        return pointer_matches(tail, &suffix);
    }
    let mut p = pattern.split('/');
    let mut s = ptr.split('/');
    loop {
        match (p.next(), s.next()) {
            (Some("**"), _) => return true,
            (None, None) => return true,
            (Some("*"), Some(_)) => {}
            (Some(a), Some(b)) if a == b => {}
            _ => return false,
        }
    }
}

fn any_matches(patterns: &[String], ptr: &str) -> bool {
    patterns.iter().any(|p| pointer_matches(p, ptr))
}

/// The differences between Docker's answer `want` and berth's `got`, one line each.
pub fn compare(want: &Value, got: &Value, rules: &Rules, norm: &dyn Fn(&str) -> String) -> Vec<String> {
    let mut out = Vec::new();
    walk(want, got, "", rules, norm, &mut out);
    out
}

fn walk(want: &Value, got: &Value, ptr: &str, rules: &Rules, norm: &dyn Fn(&str) -> String, out: &mut Vec<String>) {
    if any_matches(&rules.ignore, ptr) {
        return;
    }
    if any_matches(&rules.exact, ptr) {
        let (w, g) = (normalise_value(want, norm), normalise_value(got, norm));
        if w != g {
            out.push(format!("{ptr}: Docker sends {w}, berth {g}"));
        }
        return;
    }
    let (kw, kg) = (kind(want), kind(got));
    // a whole-number float and an int are the same to no strict client, but Go
    // never writes 1.0 for an int field; compare the kinds as they are
    if kw != kg {
        out.push(format!("{ptr}: Docker sends {kw} ({}), berth {kg} ({})", brief(want), brief(got)));
        return;
    }
    match (want, got) {
        (Value::Object(w), Value::Object(g)) => {
            if any_matches(&rules.maps, ptr) {
                // keys are data: every berth value shaped as Docker's first value
                if let Some(first) = w.values().next() {
                    for (k, v) in g {
                        walk(first, v, &format!("{ptr}/{}", escape(k)), rules, norm, out);
                    }
                }
                return;
            }
            for (k, v) in w {
                let p = format!("{ptr}/{}", escape(k));
                match g.get(k) {
                    Some(gv) => walk(v, gv, &p, rules, norm, out),
                    None if any_matches(&rules.ignore, &p) => {}
                    None => out.push(format!("{p}: Docker sends it ({}), berth does not", brief(v))),
                }
            }
            for (k, v) in g {
                let p = format!("{ptr}/{}", escape(k));
                if !w.contains_key(k) && !any_matches(&rules.ignore, &p) {
                    out.push(format!("{p}: berth sends it ({}), Docker does not", brief(v)));
                }
            }
        }
        (Value::Array(w), Value::Array(g)) => {
            if let Some(first) = w.first() {
                for (i, v) in g.iter().enumerate() {
                    // elements are alike: compare each with Docker's matching one, or its first
                    let model = w.get(i).unwrap_or(first);
                    walk(model, v, &format!("{ptr}/{i}"), rules, norm, out);
                }
            }
        }
        _ => {}
    }
}

fn escape(k: &str) -> String {
    k.replace('~', "~0").replace('/', "~1")
}

fn brief(v: &Value) -> String {
    let s = v.to_string();
    if s.len() > 60 {
        format!("{}...", &s[..s.char_indices().take(57).last().map(|(i, c)| i + c.len_utf8()).unwrap_or(0)])
    } else {
        s
    }
}

fn normalise_value(v: &Value, norm: &dyn Fn(&str) -> String) -> String {
    match v {
        Value::String(s) => format!("{:?}", norm(s)),
        other => norm(&other.to_string()),
    }
}

/// Replace the run's own values (IDs, names) by their placeholder names, then any
/// other 64- or 12-hex ID by `<id>`.
pub fn normaliser(vars: Vec<(String, String)>) -> impl Fn(&str) -> String {
    move |s: &str| {
        let mut t = s.to_string();
        // longest values first, so an ID goes before its short form
        let mut vs = vars.clone();
        vs.sort_by_key(|(_, v)| std::cmp::Reverse(v.len()));
        for (name, val) in &vs {
            if val.len() >= 4 {
                t = t.replace(val.as_str(), &format!("<{name}>"));
            }
        }
        hex_ids(&t)
    }
}

fn hex_ids(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = String::with_capacity(s.len());
    let mut i = 0;
    while i < b.len() {
        let run = b[i..].iter().take_while(|c| c.is_ascii_hexdigit() && !c.is_ascii_uppercase()).count();
        if run == 64 || run == 12 {
            out.push_str("<id>");
            i += run;
        } else if run > 0 {
            out.push_str(&s[i..i + run]);
            i += run;
        } else {
            let c = s[i..].chars().next().unwrap();
            out.push(c);
            i += c.len_utf8();
        }
    }
    out
}

/// The shape signature of a JSON-lines message (its sorted top-level keys with
/// their kinds), for streams whose lines vary in number (pull, build, events).
pub fn line_signature(v: &Value) -> String {
    match v {
        Value::Object(m) => {
            let mut ks: Vec<String> = m.iter().map(|(k, v)| format!("{k}:{}", kind(v))).collect();
            ks.sort();
            format!("{{{}}}", ks.join(","))
        }
        other => kind(other).to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn id(s: &str) -> String {
        s.to_string()
    }

    #[test]
    fn keys_types_and_nulls() {
        let want = json!({"Id": "a", "Names": ["/x"], "Mounts": [], "Labels": {"a": "b"}, "Size": 1, "Ports": null});
        let got = json!({"id": "a", "Names": ["/x"], "Mounts": null, "Labels": {"c": "d"}, "Size": "1", "Ports": null});
        let d = compare(&want, &got, &Rules { maps: vec!["/Labels".into()], ..Default::default() }, &id);
        assert_eq!(
            d,
            vec![
                "/Id: Docker sends it (\"a\"), berth does not",
                "/Mounts: Docker sends array ([]), berth null (null)",
                "/Size: Docker sends int (1), berth string (\"1\")",
                "/id: berth sends it (\"a\"), Docker does not",
            ]
        );
    }

    #[test]
    fn arrays_maps_and_exact() {
        let want = json!({"Networks": {"bridge": {"IPAddress": "1"}}, "List": [{"a": 1}], "message": "No such container: 0123456789ab"});
        let got = json!({"Networks": {"mynet": {"IPAddress": 2}}, "List": [{"a": 1}, {"a": 2, "b": 3}], "message": "No such container: abcdefabcdef"});
        let rules = Rules { maps: vec!["/Networks".into()], exact: vec!["/message".into()], ..Default::default() };
        let norm = normaliser(vec![]);
        let d = compare(&want, &got, &rules, &norm);
        assert_eq!(d, vec!["/List/1/b: berth sends it (3), Docker does not", "/Networks/mynet/IPAddress: Docker sends string (\"1\"), berth int (2)"]);
        assert!(pointer_matches("/*/Labels", "/Config/Labels"));
        assert!(pointer_matches("/NetworkSettings/**", "/NetworkSettings/Networks/x"));
        assert!(!pointer_matches("/*/Labels", "/Config/Env"));
        assert!(pointer_matches("**/Labels", "/Config/Labels"));
        assert!(pointer_matches("**/Labels", "/Labels"));
        assert!(pointer_matches("**/Config/Labels", "/0/Config/Labels"));
        assert!(!pointer_matches("**/Labels", "/Config/Labels/x"));
    }

    #[test]
    fn normalises_run_values() {
        let n = normaliser(vec![("c1".into(), "shapes-abc".into()), ("cid".into(), "f".repeat(64))]);
        assert_eq!(n(&format!("No such container: shapes-abc ({})", "f".repeat(64))), "No such container: <c1> (<cid>)");
        assert_eq!(n(&format!("x {}", "a".repeat(12))), "x <id>");
        assert_eq!(line_signature(&json!({"status": "x", "id": "y", "progressDetail": {}})), "{id:string,progressDetail:object,status:string}");
    }
}
