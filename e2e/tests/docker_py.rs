//! docker-py's own integration suite (`../shared/reference/docker-py/run.sh`) against a
//! node started by `berth up`, as a gate: no test may fail that passes on Moby here
//! (e2e/clients/docker-py-moby-failures.txt lists what Moby 20.10 fails offline, with
//! the same fixtures), except the tests of features another engineer is building
//! (e2e/clients/docker-py-excepted.txt); and the tests berth passes beyond Moby
//! (e2e/clients/docker-py-required.txt) must pass. The node's docker.io mirror is a
//! local docker-registry with busybox, alpine and hello-world made from Debian parts.
//!
//! `BERTH_DOCKER_PY_ARGS` adds pytest arguments (e.g. `-k exec`) for a partial run (a
//! test file's path does not restrict it: run.sh appends tests/integration; use -k),
//! split at spaces; `BERTH_DOCKER_PY_K` gives one -k expression (`exec or ipam`).
//! The whole suite runs in CI: 215 s on this 2-core host under load (2026-12-05).

use std::path::{Path, PathBuf};
use std::process::Command;

use berth_e2e::fixtures::{hub_mirror, mirror_config, run};
use berth_e2e::pytest::{outcomes, regressions, Outcome, TestList};
use berth_e2e::{Node, NodeOpts};

/// run.sh: `BERTH_DOCKER_PY`, else `shared/reference/docker-py/run.sh` beside the
/// repository or beside one of its parents (a worktree's), else /work/shared's.
fn script() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("BERTH_DOCKER_PY") {
        return Some(p.into());
    }
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .ancestors()
        .map(|d| d.join("shared/reference/docker-py/run.sh"))
        // the team's copy on this host: CI's clean clone may live anywhere
        .chain([PathBuf::from("/work/shared/reference/docker-py/run.sh")])
        .find(|p| p.exists())
}

fn lists() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("clients")
}

/// The suite's venv as run.sh makes it, plus websocket-client (docker-py's
/// `websocket` extra, which its attach-over-websocket test needs). run.sh then
/// finds pytest there and uses the venv as is.
fn prepare(work: &Path, script: &Path) {
    std::fs::create_dir_all(work).unwrap();
    if !work.join("docker-py").is_dir() {
        let tarball = std::fs::read_dir(script.parent().unwrap())
            .unwrap()
            .flatten()
            .map(|e| e.path())
            .find(|p| p.file_name().unwrap().to_string_lossy().ends_with(".tar.gz"))
            .expect("docker-py tarball beside run.sh");
        run(Command::new("tar").arg("-xzf").arg(&tarball).arg("-C").arg(work));
    }
    let venv = work.join("venv");
    if !venv.join("bin/pytest").exists() || !venv.join("bin/wsdump").exists() {
        run(Command::new("python3").args(["-m", "venv"]).arg(&venv));
        let pip = venv.join("bin/pip");
        run(Command::new(&pip).args(["install", "-q", "pytest", "pytest-timeout", "paramiko", "requests", "urllib3", "websocket-client"]));
        run(Command::new(&pip).args(["install", "-q", "."]).current_dir(work.join("docker-py")).env("SETUPTOOLS_SCM_PRETEND_VERSION", "7.2.0"));
    }
    // docker-py keeps contexts beside its config file, or in ./contexts without one;
    // a run that failed half-way leaves its "test" context there
    let _ = std::fs::remove_dir_all(work.join("docker-py/contexts"));
}

#[test]
fn docker_py_suite_passes_what_moby_passes() {
    berth_e2e::require_root!();
    // a test that did not run must not pass
    let script = script().expect("docker-py's suite (shared/reference/docker-py/run.sh) is not beside the repository nor in /work/shared: set BERTH_DOCKER_PY");
    let reg = hub_mirror();
    let node = Node::start_opts(NodeOpts { config: mirror_config(&reg), ..Default::default() });
    let work = Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/docker-py-suite");
    prepare(&work, &script);
    let home = node.dir.path().join("home");
    std::fs::create_dir_all(&home).unwrap();
    let mut extra: Vec<String> = std::env::var("BERTH_DOCKER_PY_ARGS")
        .map(|s| s.split_whitespace().map(str::to_string).collect())
        .unwrap_or_default();
    // a -k expression with spaces (`exec or ipam`) as one argument
    if let Ok(k) = std::env::var("BERTH_DOCKER_PY_K") {
        extra.extend(["-k".to_string(), k]);
    }
    let t0 = std::time::Instant::now();
    let out = Command::new("bash")
        .arg(&script)
        .arg(node.host())
        .arg("-rA")
        .args(&extra)
        .env("DPY_WORK", &work)
        .env("HOME", &home)
        .env("DOCKER_CONFIG", home.join(".docker-cli"))
        .env_remove("DOCKER_CONTEXT")
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    let _ = std::fs::write(work.join("last-run.txt"), text.as_bytes());
    let got = outcomes(&text);
    let count = |o: Outcome| got.values().filter(|x| **x == o).count();
    eprintln!(
        "docker-py on berth: {} passed, {} failed, {} errors, {} skipped in {:.0} s\n{}",
        count(Outcome::Passed) + count(Outcome::XPassed),
        count(Outcome::Failed),
        count(Outcome::Error),
        count(Outcome::Skipped),
        t0.elapsed().as_secs_f64(),
        text.lines().last().unwrap_or("")
    );
    assert!(got.len() > 10 || (!extra.is_empty() && !got.is_empty()), "the suite did not run:\n{text}\n{}", String::from_utf8_lossy(&out.stderr));
    let moby = TestList::load(&lists().join("docker-py-moby-failures.txt"));
    let excepted = TestList::load(&lists().join("docker-py-excepted.txt"));
    let mut required = TestList::load(&lists().join("docker-py-required.txt"));
    if !extra.is_empty() {
        // a partial run: only what ran is checked
        required = TestList::parse(&required.exact().filter(|id| got.contains_key(*id)).cloned().collect::<Vec<_>>().join("\n"));
    }
    let bad = regressions(&got, &moby, &excepted, &required);
    for id in bad.iter() {
        let name = id.split(": ").next().unwrap_or(id);
        // pytest's section for this test, for the failure message
        let short = name.rsplit("::").take(2).collect::<Vec<_>>();
        if let [t, c] = short[..] {
            let head = format!("{c}.{t} ");
            if let Some(i) = text.find(&head) {
                eprintln!("{}", &text[i..text.len().min(i + 3000)]);
            }
        }
    }
    assert!(
        bad.is_empty(),
        "docker-py tests that pass on Moby fail on berth (pytest's output: {}):\n{}\n{}",
        work.join("last-run.txt").display(),
        bad.join("\n"),
        node.logs()
    );
}
