//! Metadata instructions applied to an image config: used by build steps, by
//! `docker commit -c` and by import changes.

use std::collections::HashMap;

use bus_schema::docker;

use crate::dockerfile::{key_values, split_words, unquote, Instruction};
use crate::shell::expand;

pub use berth_rules::clock::parse_duration;

/// Exec form as is; shell form wrapped in the stage's shell.
pub fn command(ins: &Instruction, shell: &[String]) -> Vec<String> {
    match &ins.json {
        Some(v) => v.clone(),
        None => {
            let mut v = shell.to_vec();
            v.push(ins.rest.clone());
            v
        }
    }
}

pub fn default_shell() -> Vec<String> {
    vec!["/bin/sh".into(), "-c".into()]
}

/// `80`, `80/udp`, `8000-8002` -> Docker's port keys.
pub fn expose_ports(words: &[String]) -> Result<Vec<String>, String> {
    let mut out = Vec::new();
    for w in words {
        let (p, proto) = w.split_once('/').unwrap_or((w.as_str(), "tcp"));
        let proto = proto.to_ascii_lowercase();
        if !["tcp", "udp", "sctp"].contains(&proto.as_str()) {
            return Err(format!("invalid proto: {proto}"));
        }
        let (a, b) = p.split_once('-').unwrap_or((p, p));
        let (a, b): (u16, u16) = (
            a.parse().map_err(|_| format!("invalid containerPort: {p}"))?,
            b.parse().map_err(|_| format!("invalid containerPort: {p}"))?,
        );
        for port in a..=b {
            out.push(format!("{port}/{proto}"));
        }
    }
    Ok(out)
}

fn set_env(cfg: &mut docker::ImageConfig, k: &str, v: &str) {
    let env = cfg.env.get_or_insert_with(Vec::new);
    env.retain(|e| e.split('=').next() != Some(k));
    env.push(format!("{k}={v}"));
}

pub fn env_map(cfg: &docker::ImageConfig) -> HashMap<String, String> {
    cfg.env
        .clone()
        .unwrap_or_default()
        .into_iter()
        .filter_map(|e| e.split_once('=').map(|(k, v)| (k.to_string(), v.to_string())))
        .collect()
}

/// What a metadata instruction did, for the history line.
pub struct Applied {
    pub created_by: String,
}

/// Apply one metadata instruction (not FROM/RUN/COPY/ADD/ARG) to `cfg`.
/// `vars` are the values for substitution (ARGs and ENV); `cmd_set` tracks whether
/// CMD was set in this stage (ENTRYPOINT resets an inherited CMD).
pub fn apply(
    cfg: &mut docker::ImageConfig,
    ins: &Instruction,
    vars: &HashMap<String, String>,
    escape: char,
    cmd_set: &mut bool,
) -> Result<Applied, String> {
    let nop = |s: String| Applied { created_by: format!("/bin/sh -c #(nop) {s}") };
    let x = |s: &str| expand(s, vars, escape);
    let shell = cfg.shell.clone().unwrap_or_else(default_shell);
    match ins.cmd.as_str() {
        "ENV" => {
            let pairs = key_values(&x(&ins.rest)?, true, escape)?;
            let mut shown = Vec::new();
            for (k, v) in pairs {
                set_env(cfg, &k, &v);
                shown.push(format!("{k}={v}"));
            }
            Ok(nop(format!(" ENV {}", shown.join(" "))))
        }
        "LABEL" => {
            let pairs = key_values(&x(&ins.rest)?, false, escape).map_err(|e| e.replace("ENV names", "LABEL names"))?;
            let labels = cfg.labels.get_or_insert_with(HashMap::new);
            let mut shown = Vec::new();
            for (k, v) in pairs {
                shown.push(format!("{k}={v}"));
                labels.insert(k, v);
            }
            Ok(nop(format!(" LABEL {}", shown.join(" "))))
        }
        "MAINTAINER" => Ok(nop(format!(" MAINTAINER {}", ins.rest))),
        "WORKDIR" => {
            let w = unquote(&x(&ins.rest)?, escape);
            let cur = cfg.working_dir.clone().unwrap_or_default();
            let new = if w.starts_with('/') {
                w.clone()
            } else {
                format!("{}/{}", if cur.is_empty() { "" } else { cur.trim_end_matches('/') }, w)
            };
            let new = berth_rules::path::clean_in_root(&new);
            cfg.working_dir = Some(new.clone());
            Ok(nop(format!("WORKDIR {new}")))
        }
        "USER" => {
            let u = unquote(&x(&ins.rest)?, escape);
            cfg.user = Some(u.clone());
            Ok(nop(format!(" USER {u}")))
        }
        "EXPOSE" => {
            let words: Vec<String> = split_words(&x(&ins.rest)?, escape).iter().map(|w| unquote(w, escape)).collect();
            let ports = expose_ports(&words)?;
            let cur = cfg.exposed_ports.get_or_insert_with(Vec::new);
            for p in &ports {
                if !cur.contains(p) {
                    cur.push(p.clone());
                }
            }
            Ok(nop(format!(" EXPOSE {}", ports.join(" "))))
        }
        "VOLUME" => {
            let vols: Vec<String> = match &ins.json {
                Some(v) => v.iter().map(|s| x(s)).collect::<Result<_, _>>()?,
                None => split_words(&x(&ins.rest)?, escape).iter().map(|w| unquote(w, escape)).collect(),
            };
            if vols.iter().any(|v| v.trim().is_empty()) {
                return Err("VOLUME specified can not be an empty string".into());
            }
            let cur = cfg.volumes.get_or_insert_with(Vec::new);
            for v in &vols {
                if !cur.contains(v) {
                    cur.push(v.clone());
                }
            }
            Ok(nop(format!(" VOLUME [{}]", vols.join(" "))))
        }
        "CMD" => {
            let c = command(ins, &shell);
            cfg.cmd = Some(c.clone());
            *cmd_set = true;
            Ok(nop(format!(" CMD [{}]", c.iter().map(|s| format!("\"{s}\"")).collect::<Vec<_>>().join(" "))))
        }
        "ENTRYPOINT" => {
            let c = if ins.json.is_none() && ins.rest.is_empty() { vec![] } else { command(ins, &shell) };
            cfg.entrypoint = if c.is_empty() { None } else { Some(c.clone()) };
            if !*cmd_set {
                cfg.cmd = None;
            }
            Ok(nop(format!(" ENTRYPOINT [{}]", c.iter().map(|s| format!("\"{s}\"")).collect::<Vec<_>>().join(" "))))
        }
        "SHELL" => {
            let v = ins.json.clone().ok_or_else(|| "SHELL requires the arguments to be in JSON form".to_string())?;
            if v.is_empty() {
                return Err("SHELL requires at least one argument".into());
            }
            cfg.shell = Some(v.clone());
            Ok(nop(format!("SHELL [{}]", v.iter().map(|s| format!("\"{s}\"")).collect::<Vec<_>>().join(" "))))
        }
        "STOPSIGNAL" => {
            let s = x(&ins.rest)?;
            cfg.stop_signal = Some(s.clone());
            Ok(nop(format!(" STOPSIGNAL [{s}]")))
        }
        "ONBUILD" => {
            let inner = ins.rest.trim();
            let kw = inner.split_whitespace().next().unwrap_or("").to_ascii_uppercase();
            if kw == "ONBUILD" {
                return Err("Chaining ONBUILD via `ONBUILD ONBUILD` isn't allowed".into());
            }
            if kw == "FROM" || kw == "MAINTAINER" {
                return Err(format!("{kw} isn't allowed as an ONBUILD trigger"));
            }
            cfg.on_build.get_or_insert_with(Vec::new).push(inner.to_string());
            Ok(nop(format!(" ONBUILD {inner}")))
        }
        "HEALTHCHECK" => {
            let rest = ins.rest.trim();
            let mut hc = docker::HealthConfig::default();
            if rest.eq_ignore_ascii_case("NONE") {
                hc.test = Some(vec!["NONE".into()]);
            } else {
                let (kw, cmdpart) = rest.split_once(char::is_whitespace).unwrap_or((rest, ""));
                if !kw.eq_ignore_ascii_case("CMD") {
                    return Err(format!("Unknown type \"{kw}\" in HEALTHCHECK (try CMD)"));
                }
                let cmdpart = cmdpart.trim();
                let test = if cmdpart.starts_with('[') {
                    let v: Vec<String> = serde_json::from_str(cmdpart).map_err(|e| e.to_string())?;
                    let mut t = vec!["CMD".to_string()];
                    t.extend(v);
                    t
                } else {
                    vec!["CMD-SHELL".into(), cmdpart.to_string()]
                };
                hc.test = Some(test);
                let dur = |k: &str| -> Result<Option<i64>, String> { ins.flag(k).map(parse_duration).transpose() };
                hc.interval = dur("interval")?;
                hc.timeout = dur("timeout")?;
                hc.start_period = dur("start-period")?;
                hc.start_interval = dur("start-interval")?;
                hc.retries = ins.flag("retries").map(|r| r.parse::<i64>().map_err(|e| e.to_string())).transpose()?;
            }
            let shown = hc.test.clone().unwrap_or_default().iter().map(|s| format!("\"{s}\"")).collect::<Vec<_>>().join(" ");
            cfg.healthcheck = Some(hc);
            Ok(nop(format!(" HEALTHCHECK &{{[{shown}]}}")))
        }
        other => Err(format!("{other} is not a metadata instruction")),
    }
}

/// Container config (as inspect shows it) to the image config a commit records.
pub fn from_container(c: &docker::ContainerConfig) -> docker::ImageConfig {
    docker::ImageConfig {
        user: c.user.clone(),
        exposed_ports: c.exposed_ports.clone(),
        env: c.env.clone(),
        cmd: c.cmd.clone(),
        healthcheck: c.healthcheck.clone(),
        args_escaped: c.args_escaped,
        volumes: c.volumes.clone(),
        working_dir: c.working_dir.clone(),
        entrypoint: c.entrypoint.clone(),
        on_build: c.on_build.clone(),
        labels: c.labels.clone(),
        stop_signal: c.stop_signal.clone(),
        shell: c.shell.clone(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dockerfile::parse;

    fn run(df: &str) -> docker::ImageConfig {
        let d = parse(&format!("FROM x\n{df}")).unwrap();
        let mut cfg = docker::ImageConfig::default();
        let mut set = false;
        for ins in &d.instructions[1..] {
            let vars = env_map(&cfg);
            apply(&mut cfg, ins, &vars, '\\', &mut set).unwrap();
        }
        cfg
    }

    #[test]
    fn metadata() {
        let c = run("ENV A=1\nENV B=$A-2\nWORKDIR /app\nWORKDIR sub\nEXPOSE 80 53/udp\nLABEL a=b\nUSER nobody\nCMD [\"sh\"]\n");
        assert_eq!(c.env.unwrap(), vec!["A=1".to_string(), "B=1-2".into()]);
        assert_eq!(c.working_dir.as_deref(), Some("/app/sub"));
        assert_eq!(c.exposed_ports.unwrap(), vec!["80/tcp".to_string(), "53/udp".into()]);
        assert_eq!(c.user.as_deref(), Some("nobody"));
        assert_eq!(c.cmd.unwrap(), vec!["sh".to_string()]);
        let c = run("CMD echo hi\nENTRYPOINT [\"/ep\"]\n");
        assert_eq!(c.cmd.unwrap(), vec!["/bin/sh".to_string(), "-c".into(), "echo hi".into()]);
        let c = run("HEALTHCHECK --interval=5s --retries=3 CMD true\n");
        let h = c.healthcheck.unwrap();
        assert_eq!(h.interval, Some(5_000_000_000));
        assert_eq!(h.test.unwrap(), vec!["CMD-SHELL".to_string(), "true".into()]);
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("1m30s").unwrap(), 90_000_000_000);
        assert_eq!(parse_duration("500ms").unwrap(), 500_000_000);
        assert!(parse_duration("5").is_err());
    }
}
