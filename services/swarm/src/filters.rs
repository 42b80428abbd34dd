//! Docker's list filters for swarm objects (moby `api/types/filters` semantics: every
//! key must match, any of a key's values may).

use bus_schema::BusError;
use std::collections::HashMap;

pub type Filters = HashMap<String, Vec<String>>;

/// Refuse keys a list does not know, with Docker's message.
pub fn validate(f: &Filters, accepted: &[&str]) -> Result<(), BusError> {
    for k in f.keys() {
        if !accepted.contains(&k.as_str()) {
            return Err(BusError::invalid(format!("Invalid filter '{k}'")));
        }
    }
    Ok(())
}

/// Does `key` pass: absent or empty filter, or any value matched by `m`.
pub fn pass(f: &Filters, key: &str, m: impl Fn(&str) -> bool) -> bool {
    match f.get(key) {
        None => true,
        Some(v) if v.is_empty() => true,
        Some(v) => v.iter().any(|x| m(x)),
    }
}

/// `label=k` or `label=k=v` against a label map.
pub fn label_match(labels: &HashMap<String, String>, want: &str) -> bool {
    match want.split_once('=') {
        Some((k, v)) => labels.get(k).map(|x| x == v).unwrap_or(false),
        None => labels.contains_key(want),
    }
}

/// Every `label` filter value must match (Docker ANDs labels).
pub fn labels_pass(f: &Filters, key: &str, labels: &HashMap<String, String>) -> bool {
    match f.get(key) {
        None => true,
        Some(v) => v.iter().all(|w| label_match(labels, w)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn filters_and_labels() {
        let mut f = Filters::new();
        f.insert("name".into(), vec!["a".into(), "b".into()]);
        assert!(pass(&f, "name", |v| v == "b"));
        assert!(!pass(&f, "name", |v| v == "c"));
        assert!(pass(&f, "id", |_| false));
        assert!(validate(&f, &["name"]).is_ok());
        assert_eq!(validate(&f, &["id"]).unwrap_err().message, "Invalid filter 'name'");
        let mut l = HashMap::new();
        l.insert("x".to_string(), "1".to_string());
        assert!(label_match(&l, "x"));
        assert!(label_match(&l, "x=1"));
        assert!(!label_match(&l, "x=2"));
    }
}
