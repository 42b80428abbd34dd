//! `label` and `label!` filters (Moby's `filters.Args.MatchKVList` and the prune
//! rule built on it).

use std::collections::{BTreeMap, HashMap};

/// A map of labels, whichever map type a record keeps them in.
pub trait Labels {
    fn label(&self, key: &str) -> Option<&str>;
}

impl Labels for HashMap<String, String> {
    fn label(&self, key: &str) -> Option<&str> {
        self.get(key).map(String::as_str)
    }
}

impl Labels for BTreeMap<String, String> {
    fn label(&self, key: &str) -> Option<&str> {
        self.get(key).map(String::as_str)
    }
}

impl<L: Labels> Labels for Option<L> {
    fn label(&self, key: &str) -> Option<&str> {
        self.as_ref()?.label(key)
    }
}

/// One filter value: `key` (the label is set, any value) or `key=value` (set to
/// exactly that value; only the first `=` splits).
pub fn label_match(labels: &(impl Labels + ?Sized), filter: &str) -> bool {
    match filter.split_once('=') {
        Some((k, v)) => labels.label(k) == Some(v),
        None => labels.label(filter).is_some(),
    }
}

/// Every value of a `label` filter matches (Moby's `MatchKVList`); no values: true.
pub fn labels_match(labels: &(impl Labels + ?Sized), filters: &[String]) -> bool {
    filters.iter().all(|f| label_match(labels, f))
}

/// Moby's rule for prune (`matchLabels`) and lists with `label!`: all `label`
/// values match, and not all `label!` values do. With `label!=a` and `label!=b`
/// Docker keeps only what has both a and b out of the selection.
pub fn labels_select(labels: &(impl Labels + ?Sized), label: &[String], not_label: &[String]) -> bool {
    labels_match(labels, label) && (not_label.is_empty() || !labels_match(labels, not_label))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn m(kv: &[(&str, &str)]) -> HashMap<String, String> {
        kv.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }
    fn s(v: &[&str]) -> Vec<String> {
        v.iter().map(|x| x.to_string()).collect()
    }

    #[test]
    fn kv_list() {
        let l = m(&[("a", "1"), ("b", ""), ("c", "x=y")]);
        assert!(label_match(&l, "a"));
        assert!(label_match(&l, "a=1"));
        assert!(!label_match(&l, "a=2"));
        assert!(label_match(&l, "b="));
        assert!(label_match(&l, "b"));
        assert!(label_match(&l, "c=x=y"));
        assert!(!label_match(&l, "d"));
        assert!(labels_match(&l, &s(&["a", "b="])));
        assert!(!labels_match(&l, &s(&["a", "d"])));
        assert!(labels_match(&l, &[]));
        let b: BTreeMap<String, String> = l.into_iter().collect();
        assert!(label_match(&b, "a=1"));
        let none: Option<HashMap<String, String>> = None;
        assert!(!label_match(&none, "a"));
    }

    #[test]
    fn prune_rule_excludes_only_when_every_not_label_matches() {
        let l = m(&[("a", "1")]);
        assert!(labels_select(&l, &[], &[]));
        assert!(!labels_select(&l, &[], &s(&["a"])));
        // Moby: MatchKVList("label!") must be true for every value to exclude
        assert!(labels_select(&l, &[], &s(&["a", "b"])));
        assert!(!labels_select(&l, &s(&["b"]), &[]));
        assert!(labels_select(&m(&[]), &[], &s(&["a"])));
    }
}

/// The `until` filter of a prune as nanoseconds since the epoch (Moby's
/// `getUntilFromPruneFilters`): one value at most, read by
/// [`crate::clock::parse_until`] against now. What was created after it stays.
pub fn prune_until(filters: &HashMap<String, Vec<String>>) -> Result<Option<i128>, String> {
    match filters.get("until").map(Vec::as_slice) {
        None | Some([]) => Ok(None),
        Some([v]) => crate::clock::parse_until(v, crate::clock::now())
            .map(Some)
            .map_err(|e| format!("invalid value for 'until' filter: {e}")),
        Some(_) => Err("more than one until filter specified".into()),
    }
}

#[cfg(test)]
mod until_tests {
    use super::*;

    #[test]
    fn one_until_at_most() {
        let f = |v: &[&str]| HashMap::from([("until".to_string(), v.iter().map(|x| x.to_string()).collect())]);
        assert_eq!(prune_until(&HashMap::new()), Ok(None));
        assert_eq!(prune_until(&f(&["1700000000"])), Ok(Some(1_700_000_000_000_000_000)));
        assert_eq!(prune_until(&f(&["1", "2"])), Err("more than one until filter specified".into()));
        assert_eq!(
            prune_until(&f(&["x"])),
            Err("invalid value for 'until' filter: failed to parse value as time or duration: \"x\"".into())
        );
    }
}
