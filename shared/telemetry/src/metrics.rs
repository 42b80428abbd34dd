//! A small metrics registry rendering the Prometheus text format: counters, gauges
//! and histograms with labels. Every service keeps its own; the gateway gathers them
//! over the bus and serves them at daemon.json `metrics-addr` (see [`merge`]).

use std::collections::BTreeMap;
use std::sync::{Mutex, OnceLock};

/// Latency buckets in seconds, from 100 µs to 10 s.
pub const BUCKETS: &[f64] = &[0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0];

#[derive(Clone, Copy, PartialEq, Eq)]
enum Kind {
    Counter,
    Gauge,
    Histogram,
}

struct Family {
    help: String,
    kind: Kind,
    /// label set (rendered) -> value, or histogram buckets + sum + count
    values: BTreeMap<String, Vec<f64>>,
}

fn registry() -> &'static Mutex<BTreeMap<String, Family>> {
    static R: OnceLock<Mutex<BTreeMap<String, Family>>> = OnceLock::new();
    R.get_or_init(|| Mutex::new(BTreeMap::new()))
}

fn escape(v: &str) -> String {
    v.replace('\\', "\\\\").replace('"', "\\\"").replace('\n', "\\n")
}

fn labels(l: &[(&str, &str)]) -> String {
    l.iter().map(|(k, v)| format!("{k}=\"{}\"", escape(v))).collect::<Vec<_>>().join(",")
}

fn with<F: FnOnce(&mut Vec<f64>)>(name: &str, help: &str, kind: Kind, l: &[(&str, &str)], init: usize, f: F) {
    let mut r = registry().lock().unwrap();
    let fam = r.entry(name.to_string()).or_insert_with(|| Family { help: help.to_string(), kind, values: BTreeMap::new() });
    let v = fam.values.entry(labels(l)).or_insert_with(|| vec![0.0; init]);
    f(v);
}

pub fn counter_add(name: &str, help: &str, l: &[(&str, &str)], v: f64) {
    with(name, help, Kind::Counter, l, 1, |x| x[0] += v);
}

pub fn gauge_set(name: &str, help: &str, l: &[(&str, &str)], v: f64) {
    with(name, help, Kind::Gauge, l, 1, |x| x[0] = v);
}

pub fn gauge_add(name: &str, help: &str, l: &[(&str, &str)], v: f64) {
    with(name, help, Kind::Gauge, l, 1, |x| x[0] += v);
}

pub fn observe(name: &str, help: &str, l: &[(&str, &str)], secs: f64) {
    with(name, help, Kind::Histogram, l, BUCKETS.len() + 2, |x| {
        for (i, b) in BUCKETS.iter().enumerate() {
            if secs <= *b {
                x[i] += 1.0;
            }
        }
        let n = BUCKETS.len();
        x[n] += secs;
        x[n + 1] += 1.0;
    });
}

fn fmt_num(v: f64) -> String {
    if v.fract() == 0.0 && v.abs() < 1e15 {
        format!("{}", v as i64)
    } else {
        format!("{v}")
    }
}

/// This process's metrics in the Prometheus text format.
pub fn render() -> String {
    let r = registry().lock().unwrap();
    let mut out = String::new();
    for (name, f) in r.iter() {
        let t = match f.kind {
            Kind::Counter => "counter",
            Kind::Gauge => "gauge",
            Kind::Histogram => "histogram",
        };
        out.push_str(&format!("# HELP {name} {}\n# TYPE {name} {t}\n", f.help));
        for (l, v) in &f.values {
            match f.kind {
                Kind::Histogram => {
                    let sep = if l.is_empty() { "" } else { "," };
                    for (i, b) in BUCKETS.iter().enumerate() {
                        out.push_str(&format!("{name}_bucket{{{l}{sep}le=\"{b}\"}} {}\n", fmt_num(v[i])));
                    }
                    let n = BUCKETS.len();
                    out.push_str(&format!("{name}_bucket{{{l}{sep}le=\"+Inf\"}} {}\n", fmt_num(v[n + 1])));
                    let lb = if l.is_empty() { String::new() } else { format!("{{{l}}}") };
                    out.push_str(&format!("{name}_sum{lb} {}\n{name}_count{lb} {}\n", v[n], fmt_num(v[n + 1])));
                }
                _ => {
                    let lb = if l.is_empty() { String::new() } else { format!("{{{l}}}") };
                    out.push_str(&format!("{name}{lb} {}\n", fmt_num(v[0])));
                }
            }
        }
    }
    out
}

/// Add a `service` label to every sample of a text exposition.
pub fn label_all(text: &str, key: &str, value: &str) -> String {
    let mut out = String::new();
    for line in text.lines() {
        if line.starts_with('#') || line.trim().is_empty() {
            out.push_str(line);
        } else if let Some(i) = line.find('{') {
            out.push_str(&format!("{}{{{key}=\"{}\",{}", &line[..i], escape(value), &line[i + 1..]));
        } else if let Some((n, v)) = line.split_once(' ') {
            out.push_str(&format!("{n}{{{key}=\"{}\"}} {v}", escape(value)));
        }
        out.push('\n');
    }
    out
}

/// Merge expositions of several processes: one HELP/TYPE per family, its samples together.
pub fn merge(parts: &[String]) -> String {
    let mut meta: BTreeMap<String, (String, String)> = BTreeMap::new();
    let mut samples: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for p in parts {
        for line in p.lines() {
            if let Some(rest) = line.strip_prefix("# HELP ") {
                if let Some((n, h)) = rest.split_once(' ') {
                    meta.entry(n.to_string()).or_default().0 = h.to_string();
                }
            } else if let Some(rest) = line.strip_prefix("# TYPE ") {
                if let Some((n, t)) = rest.split_once(' ') {
                    meta.entry(n.to_string()).or_default().1 = t.to_string();
                }
            } else if !line.trim().is_empty() && !line.starts_with('#') {
                let name = line.split(['{', ' ']).next().unwrap_or("");
                let fam = if meta.get(name).is_some_and(|m| m.1 == "histogram") {
                    name.to_string()
                } else {
                    ["_bucket", "_sum", "_count"]
                        .iter()
                        .find_map(|s| name.strip_suffix(s).filter(|b| meta.get(*b).is_some_and(|m| m.1 == "histogram")))
                        .unwrap_or(name)
                        .to_string()
                };
                samples.entry(fam).or_default().push(line.to_string());
            }
        }
    }
    let mut out = String::new();
    for (fam, lines) in samples {
        if let Some((h, t)) = meta.get(&fam) {
            out.push_str(&format!("# HELP {fam} {h}\n# TYPE {fam} {t}\n"));
        }
        for l in lines {
            out.push_str(&l);
            out.push('\n');
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    #[test]
    fn renders_and_merges() {
        counter_add("t_requests_total", "Requests.", &[("code", "200")], 2.0);
        observe("t_latency_seconds", "Latency.", &[("op", "x")], 0.003);
        gauge_set("t_up", "Up.", &[], 1.0);
        let a = render();
        assert!(a.contains("t_requests_total{code=\"200\"} 2"));
        assert!(a.contains("t_latency_seconds_bucket{op=\"x\",le=\"0.005\"} 1"));
        assert!(a.contains("t_latency_seconds_count{op=\"x\"} 1"));
        assert!(a.contains("t_up 1"));
        let b = label_all(&a, "service", "images");
        assert!(b.contains("t_up{service=\"images\"} 1"));
        let m = merge(&[label_all(&a, "service", "a"), label_all(&a, "service", "b")]);
        assert_eq!(m.matches("# TYPE t_latency_seconds histogram").count(), 1);
        assert!(m.contains("t_up{service=\"a\"} 1") && m.contains("t_up{service=\"b\"} 1"));
    }
}
