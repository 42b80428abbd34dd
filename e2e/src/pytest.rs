//! Reading a pytest run (`-rA` short summary) and checking it against lists of
//! known failures, for the client suites the e2e tests drive (docker-py).

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Passed,
    Failed,
    Error,
    Skipped,
    XFailed,
    XPassed,
}

/// Each test's outcome from pytest's `-rA` summary lines (`PASSED tests/x.py::T::t`,
/// `FAILED tests/x.py::T::t - why`). A test that passed and then errored in its
/// teardown is an error.
pub fn outcomes(output: &str) -> BTreeMap<String, Outcome> {
    let mut out = BTreeMap::new();
    for line in output.lines() {
        let Some((word, rest)) = line.split_once(' ') else { continue };
        let o = match word {
            "PASSED" => Outcome::Passed,
            "FAILED" => Outcome::Failed,
            "ERROR" => Outcome::Error,
            "XFAIL" => Outcome::XFailed,
            "XPASS" => Outcome::XPassed,
            "SKIPPED" => Outcome::Skipped,
            _ => continue,
        };
        let id = rest.split(' ').next().unwrap_or("");
        if !id.contains("::") {
            continue; // SKIPPED [1] file:line: reason
        }
        let slot = out.entry(id.to_string()).or_insert(o);
        if o == Outcome::Error || o == Outcome::Failed {
            *slot = o;
        }
    }
    out
}

/// A list of test ids, one a line; `#` starts a comment; an id ending in `*` is a
/// prefix (a whole file or class).
#[derive(Debug, Default)]
pub struct TestList {
    exact: BTreeSet<String>,
    prefixes: Vec<String>,
}

impl TestList {
    pub fn parse(text: &str) -> TestList {
        let mut l = TestList::default();
        for line in text.lines() {
            let line = line.split('#').next().unwrap_or("").trim();
            if line.is_empty() {
                continue;
            }
            match line.strip_suffix('*') {
                Some(p) => l.prefixes.push(p.to_string()),
                None => {
                    l.exact.insert(line.to_string());
                }
            }
        }
        l
    }

    pub fn load(path: &Path) -> TestList {
        TestList::parse(&std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display())))
    }

    pub fn contains(&self, id: &str) -> bool {
        self.exact.contains(id) || self.prefixes.iter().any(|p| id.starts_with(p))
    }

    pub fn exact(&self) -> impl Iterator<Item = &String> {
        self.exact.iter()
    }
}

/// What a run says against the lists: tests that failed although Moby passes them
/// (and they are not excepted), and tests berth must pass that did not.
pub fn regressions(
    got: &BTreeMap<String, Outcome>,
    moby_failures: &TestList,
    excepted: &TestList,
    required: &TestList,
) -> Vec<String> {
    let mut bad = Vec::new();
    for (id, o) in got {
        let failed = matches!(o, Outcome::Failed | Outcome::Error);
        if failed && (required.contains(id) || (!moby_failures.contains(id) && !excepted.contains(id))) {
            bad.push(format!("{id}: {o:?}"));
        }
    }
    for id in required.exact() {
        if !got.contains_key(id) {
            bad.push(format!("{id}: did not run"));
        }
    }
    bad
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_short_summary() {
        let o = outcomes(
            "PASSED tests/a.py::T::one\nFAILED tests/a.py::T::two - assert 1 == 2\nSKIPPED [1] tests/helpers.py:83: nope\nPASSED tests/a.py::T::three\nERROR tests/a.py::T::three - teardown\nXFAIL tests/a.py::T::four - reason\n= 1 failed, 2 passed in 3s =\n",
        );
        assert_eq!(o.len(), 4);
        assert_eq!(o["tests/a.py::T::one"], Outcome::Passed);
        assert_eq!(o["tests/a.py::T::two"], Outcome::Failed);
        assert_eq!(o["tests/a.py::T::three"], Outcome::Error);
        assert_eq!(o["tests/a.py::T::four"], Outcome::XFailed);
    }

    #[test]
    fn lists_and_regressions() {
        let moby = TestList::parse("# offline\ntests/a.py::T::two\n");
        let exc = TestList::parse("tests/swarm.py::* # swarm\n");
        let req = TestList::parse("tests/a.py::T::five\n");
        let got = outcomes("FAILED tests/a.py::T::two - x\nFAILED tests/swarm.py::S::s - x\nFAILED tests/a.py::T::six - x\nPASSED tests/a.py::T::one\n");
        assert_eq!(
            regressions(&got, &moby, &exc, &req),
            vec!["tests/a.py::T::six: Failed".to_string(), "tests/a.py::T::five: did not run".to_string()]
        );
    }
}
