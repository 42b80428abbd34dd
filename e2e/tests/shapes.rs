//! Response shapes exactly Docker's: the requests of e2e/shapes/cases.py, sent in
//! order to a node started by `berth up`, answer as Moby 20.10 answered them
//! (e2e/shapes/moby-20.10.json): status, content type, Docker's headers, and
//! bodies compared by berth_e2e::shapes (keys, case, JSON types, `null` vs `[]`,
//! messages once the run's IDs and names are placeholders; streams line by line or
//! frame by frame).
//!
//! The differences of berth's answers at the time of the recording are listed in
//! e2e/shapes/known-differences.txt: the test fails on any other (and names the
//! listed ones that went away). target/shapes-differences.txt holds the last run's.
//!
//! Dev only, with Moby running: `BERTH_SHAPES_MOBY=/path/to/moby.sock` (and
//! `BERTH_SHAPES_MOBY_REG=127.0.0.1:PORT`, a registry that Moby mirrors docker.io to
//! and trusts, holding the fixtures of `fixtures::hub_mirror`) compares against live
//! Moby answers instead; `BERTH_SHAPES_RECORD=1` also writes them to the recording.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use berth_e2e::fixtures::{hub_mirror, mirror_config};
use berth_e2e::shapes::{compare, line_signature, normaliser, Rules};
use berth_e2e::{demux, http_raw, Node, NodeOpts};
use serde_json::{json, Value};

fn dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("shapes")
}

fn cases() -> Vec<Value> {
    let out = std::process::Command::new("python3").arg(dir().join("cases.py")).output().expect("python3");
    assert!(out.status.success(), "cases.py: {}", String::from_utf8_lossy(&out.stderr));
    serde_json::from_slice(&out.stdout).unwrap()
}

/// Object keys that are data (names, IDs, ports), anywhere in an answer.
const MAPS: &[&str] = &[
    "**/Labels",
    "**/Options",
    "**/DriverOpts",
    "**/Networks",
    "**/Ports",
    "**/PortBindings",
    "**/ExposedPorts",
    "**/Volumes",
    "**/Containers",
    "**/Runtimes",
    "**/Data",
    "**/Attributes",
    "**/networks",
    "**/RegistryConfig/IndexConfigs",
    "**/Driver Status",
];

fn now() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs()
}

fn subst(s: &str, vars: &BTreeMap<String, String>) -> String {
    let mut t = s.to_string();
    for (k, v) in vars {
        t = t.replace(&format!("{{{k}}}"), v);
    }
    t.replace("{now}", &now().to_string())
}

fn subst_json(v: &Value, vars: &BTreeMap<String, String>) -> Value {
    match v {
        Value::String(s) => Value::String(subst(s, vars)),
        Value::Array(a) => Value::Array(a.iter().map(|x| subst_json(x, vars)).collect()),
        Value::Object(m) => Value::Object(m.iter().map(|(k, x)| (subst(k, vars), subst_json(x, vars))).collect()),
        other => other.clone(),
    }
}

fn tar_of(files: &serde_json::Map<String, Value>) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    for (name, content) in files {
        let data = content.as_str().unwrap().as_bytes();
        let mut h = tar::Header::new_gnu();
        h.set_size(data.len() as u64);
        h.set_mode(0o644);
        h.set_mtime(1_600_000_000);
        h.set_cksum();
        b.append_data(&mut h, name, data).unwrap();
    }
    b.into_inner().unwrap()
}

/// Headers every Docker answer carries, and the ones whose value matters.
const HEADERS: &[&str] = &["Content-Type", "Api-Version", "Docker-Experimental", "Ostype", "Server"];

/// Run every case on the engine at `sock`; its registry (mirror of docker.io) is `reg`.
/// Returns each case's answer as recorded: status, headers, and the body by kind.
fn run(sock: &Path, reg: &str, cases: &[Value]) -> (Vec<Value>, BTreeMap<String, String>) {
    let mut vars = BTreeMap::new();
    vars.insert("n".to_string(), format!("shp{}", berth_e2e::uniq()));
    vars.insert("reg".to_string(), reg.to_string());
    vars.insert("t0".to_string(), (now() - 1).to_string());
    // Moby's recording was made with busybox already pulled (its "pull" case answers
    // "Image is up to date"): both engines start from that state, so the pull case
    // compares the same answer (a fresh pull's progress lines are Moby's shapes too)
    let pre = http_raw(sock, "POST", "/v1.41/images/create?fromImage=busybox&tag=latest", &[], None);
    assert_eq!(pre.status, 200, "pre-pull of busybox: {}", pre.text());
    let mut answers = Vec::new();
    for c in cases {
        let name = c["name"].as_str().unwrap();
        if let Some(ms) = c["sleep_ms"].as_u64() {
            std::thread::sleep(std::time::Duration::from_millis(ms));
        }
        let path = subst(c["path"].as_str().unwrap(), &vars);
        let method = c["method"].as_str().unwrap();
        let headers: Vec<(String, String)> = c["headers"]
            .as_object()
            .map(|m| m.iter().map(|(k, v)| (k.clone(), v.as_str().unwrap().to_string())).collect())
            .unwrap_or_default();
        let hdr: Vec<(&str, &str)> = headers.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        let body: Option<(Vec<u8>, &str)> = if let Some(t) = c["tar"].as_object() {
            Some((tar_of(&subst_json(&Value::Object(t.clone()), &vars).as_object().unwrap().clone()), "application/x-tar"))
        } else {
            c.get("body").map(|b| (subst_json(b, &vars).to_string().into_bytes(), "application/json"))
        };
        let a = http_raw(sock, method, &path, &hdr, body.as_ref().map(|(b, t)| (b.as_slice(), *t)));
        let mut rec = serde_json::Map::new();
        rec.insert("name".into(), name.into());
        rec.insert("status".into(), a.status.into());
        let mut hs = serde_json::Map::new();
        let mut wanted: Vec<String> = HEADERS.iter().map(|s| s.to_string()).collect();
        if let Some(x) = c["headers_exact"].as_array() {
            wanted.extend(x.iter().map(|s| s.as_str().unwrap().to_string()));
        }
        for h in wanted {
            if let Some(v) = a.header(&h) {
                hs.insert(h, v.into());
            }
        }
        rec.insert("headers".into(), Value::Object(hs));
        let kind = c["kind"].as_str().unwrap();
        let is_json = a.header("Content-Type").is_some_and(|t| t.contains("json"));
        let body = match kind {
            // an error answer is JSON whatever the case expects
            _ if a.status >= 400 && is_json => json!({ "json": a.json() }),
            "json" if a.body.is_empty() => json!({ "text": "" }),
            "json" => json!({ "json": a.json() }),
            "lines" => {
                let lines: Vec<Value> = serde_json::Deserializer::from_slice(&a.body).into_iter::<Value>().filter_map(Result::ok).collect();
                json!({ "lines": lines })
            }
            "mux" => {
                let frames: Vec<Value> = demux(&a.body).into_iter().map(|(s, d)| json!([s, String::from_utf8_lossy(&d)])).collect();
                json!({ "frames": frames })
            }
            "text" => json!({ "text": a.text() }),
            "stat" => {
                use base64::Engine;
                let st = a
                    .header("X-Docker-Container-Path-Stat")
                    .and_then(|v| base64::engine::general_purpose::STANDARD.decode(v).ok())
                    .and_then(|b| serde_json::from_slice::<Value>(&b).ok())
                    .unwrap_or(Value::Null);
                json!({ "stat": st })
            }
            _ => json!({}),
        };
        rec.insert("body".into(), body);
        if let (Some(save), true) = (c["save"].as_object(), a.status < 300) {
            let j = a.json();
            for (var, ptr) in save {
                let v = j.pointer(ptr.as_str().unwrap()).and_then(|v| v.as_str()).unwrap_or_else(|| panic!("{name}: no {ptr} in {j}"));
                vars.insert(var.clone(), v.to_string());
            }
        }
        answers.push(Value::Object(rec));
    }
    (answers, vars)
}

/// The differences of one case, one line each.
fn diff(case: &Value, want: &Value, got: &Value, norm: &dyn Fn(&str) -> String) -> Vec<String> {
    let mut out = Vec::new();
    if want["status"] != got["status"] {
        out.push(format!("status: Docker {}, berth {} ({})", want["status"], got["status"], got["body"].to_string().chars().take(200).collect::<String>()));
        return out;
    }
    let ignore: Vec<String> = case["ignore"].as_array().map(|a| a.iter().map(|s| s.as_str().unwrap().to_string()).collect()).unwrap_or_default();
    let exact_ignore: Vec<String> =
        case["exact_ignore"].as_array().map(|a| a.iter().map(|s| s.as_str().unwrap().to_string()).collect()).unwrap_or_default();
    for (h, v) in want["headers"].as_object().unwrap() {
        match got["headers"].get(h) {
            None => out.push(format!("header {h}: Docker sends {v}, berth does not")),
            Some(g) => {
                let exact = h == "Content-Type"
                    || h == "Docker-Experimental"
                    || h == "Ostype"
                    || case["headers_exact"].as_array().is_some_and(|a| a.iter().any(|x| x == h));
                if exact && g != v {
                    out.push(format!("header {h}: Docker sends {v}, berth {g}"));
                }
            }
        }
    }
    let (wb, gb) = (&want["body"], &got["body"]);
    let rules = Rules {
        maps: MAPS.iter().map(|s| s.to_string()).collect(),
        exact: if exact_ignore.iter().any(|p| p == "/message") { vec![] } else { vec!["/message".into()] },
        ignore,
    };
    if let Some(w) = wb.get("json") {
        match gb.get("json") {
            Some(g) => out.extend(compare(w, g, &rules, norm)),
            None => out.push(format!("body: Docker sends JSON, berth {gb}")),
        }
    } else if let Some(w) = wb.get("stat") {
        out.extend(compare(w, &gb["stat"], &rules, norm).into_iter().map(|d| format!("path stat {d}")));
    } else if let Some(w) = wb.get("text") {
        let (w, g) = (norm(w.as_str().unwrap_or("")), norm(gb["text"].as_str().unwrap_or("")));
        if w != g {
            out.push(format!("body: Docker sends {w:?}, berth {g:?}"));
        }
    } else if let Some(w) = wb.get("frames") {
        let f = |v: &Value| -> Vec<(u64, String)> {
            v.as_array().map(|a| a.iter().map(|x| (x[0].as_u64().unwrap(), norm(x[1].as_str().unwrap()))).collect()).unwrap_or_default()
        };
        let (wf, gf) = (f(w), f(&gb["frames"]));
        if exact_ignore.iter().any(|p| p == "/frames") {
            let ws: Vec<u64> = wf.iter().map(|x| x.0).collect();
            let gs: Vec<u64> = gf.iter().map(|x| x.0).collect();
            if ws != gs {
                out.push(format!("frames: Docker sends streams {ws:?}, berth {gs:?}"));
            }
        } else {
            // stdout and stderr are separate pipes: their interleaving is not ordered
            let (mut ws, mut gs) = (wf.clone(), gf.clone());
            ws.sort();
            gs.sort();
            if ws != gs {
                out.push(format!("frames: Docker sends {wf:?}, berth {gf:?}"));
            }
        }
    } else if let Some(w) = wb.get("lines") {
        let sig = |v: &Value| -> Vec<String> {
            let mut s: Vec<String> = v.as_array().map(|a| a.iter().map(line_signature).collect()).unwrap_or_default();
            s.sort();
            s.dedup();
            s
        };
        let (ws, gs) = (sig(w), sig(&gb["lines"]));
        for s in &gs {
            if !ws.contains(s) {
                out.push(format!("line shape berth sends, Docker does not: {s}"));
            }
        }
        for s in &ws {
            if !gs.contains(s) {
                out.push(format!("line shape Docker sends, berth does not: {s}"));
            }
        }
        // the last line says how it ended: compare its text fields
        let last = |v: &Value| v.as_array().and_then(|a| a.last()).cloned().unwrap_or(Value::Null);
        let (wl, gl) = (last(w), last(&gb["lines"]));
        for k in ["error", "errorDetail"] {
            if wl.get(k).is_some() != gl.get(k).is_some() {
                out.push(format!("last line: Docker {wl}, berth {gl}"));
            }
        }
    }
    out
}

#[test]
fn answers_are_shaped_as_dockers() {
    berth_e2e::require_root!();
    let cases = cases();
    let reg = hub_mirror();
    let node = Node::start_opts(NodeOpts { config: mirror_config(&reg), ..Default::default() });
    let (got, got_vars) = run(&node.sock, &reg.addr(), &cases);
    let (want, want_vars) = match std::env::var_os("BERTH_SHAPES_MOBY") {
        Some(moby) => {
            let moby_reg = std::env::var("BERTH_SHAPES_MOBY_REG").expect("BERTH_SHAPES_MOBY_REG: Moby's docker.io mirror");
            let (w, vars) = run(Path::new(&moby), &moby_reg, &cases);
            if std::env::var_os("BERTH_SHAPES_RECORD").is_some() {
                let rec = json!({ "engine": "Moby 20.10.24 (Debian docker.io), API 1.41", "vars": vars, "answers": w });
                std::fs::write(dir().join("moby-20.10.json"), serde_json::to_string_pretty(&rec).unwrap() + "\n").unwrap();
            }
            (w, vars)
        }
        None => {
            let rec: Value = serde_json::from_str(&std::fs::read_to_string(dir().join("moby-20.10.json")).expect("e2e/shapes/moby-20.10.json")).unwrap();
            let vars: BTreeMap<String, String> = serde_json::from_value(rec["vars"].clone()).unwrap();
            (rec["answers"].as_array().unwrap().clone(), vars)
        }
    };
    let mut report = Vec::new();
    for (i, case) in cases.iter().enumerate() {
        let name = case["name"].as_str().unwrap();
        let Some(w) = want.iter().find(|a| a["name"] == name) else {
            report.push(format!("{name}: no recorded answer (record again)"));
            continue;
        };
        let norm_w = normaliser(want_vars.iter().map(|(k, v)| (k.clone(), v.clone())).collect());
        let norm_g = normaliser(got_vars.iter().map(|(k, v)| (k.clone(), v.clone())).collect());
        // normalise each side with its own run's values, then compare
        let wn = normalise_answer(w, &norm_w);
        let gn = normalise_answer(&got[i], &norm_g);
        for d in diff(case, &wn, &gn, &|s: &str| s.to_string()) {
            report.push(format!("{name} ({} {}): {}", case["method"].as_str().unwrap(), case["path"].as_str().unwrap(), without_values(&norm_g(&d))));
        }
    }
    // a ratchet: the differences known when the recording was made are listed (each
    // one is work left in issue 16); a new one fails, a fixed one is to be struck off
    let known_path = dir().join("known-differences.txt");
    let known: std::collections::BTreeSet<String> = std::fs::read_to_string(&known_path)
        .unwrap_or_default()
        .lines()
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(str::to_string)
        .collect();
    let _ = std::fs::write(Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/shapes-differences.txt"), report.join("\n") + "\n");
    let new: Vec<&String> = report.iter().filter(|d| !known.contains(*d)).collect();
    let fixed: Vec<&String> = known.iter().filter(|k| !report.contains(k)).collect();
    eprintln!("{} cases, {} differences ({} known, {} new); {} known ones gone (strike them off {}):", cases.len(), report.len(), report.len() - new.len(), new.len(), fixed.len(), known_path.display());
    for f in &fixed {
        eprintln!("  {f}");
    }
    assert!(new.is_empty(), "answers that differ from Docker's, beyond {}:\n{}", known_path.display(), new.iter().map(|s| s.as_str()).collect::<Vec<_>>().join("\n"));
}

/// A difference without the values it quotes (`(...)`, which hold the run's sizes and
/// counters): what is compared with the known list.
fn without_values(d: &str) -> String {
    let mut out = String::new();
    let mut depth = 0;
    for ch in d.chars() {
        match ch {
            '(' => depth += 1,
            ')' if depth > 0 => depth -= 1,
            _ if depth == 0 => out.push(ch),
            _ => {}
        }
    }
    out.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// Every string of an answer with the run's values replaced by placeholders.
fn normalise_answer(v: &Value, norm: &dyn Fn(&str) -> String) -> Value {
    match v {
        Value::String(s) => Value::String(norm(s)),
        Value::Array(a) => Value::Array(a.iter().map(|x| normalise_answer(x, norm)).collect()),
        Value::Object(m) => Value::Object(m.iter().map(|(k, x)| (k.clone(), normalise_answer(x, norm))).collect()),
        other => other.clone(),
    }
}
