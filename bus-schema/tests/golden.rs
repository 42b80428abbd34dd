//! Every subject berth uses, checked against `tests/subjects.golden`. A change to the
//! contract shows up here as a diff; regenerate with `BLESS=1 cargo test -p bus-schema`.

#[test]
fn subjects_match_golden() {
    let mut got = bus_schema::all_subjects("NODE");
    got.push(bus_schema::subject::EVENTS_WILDCARD.to_string());
    let text = got.join("\n") + "\n";
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/subjects.golden");
    if std::env::var_os("BLESS").is_some() {
        std::fs::write(path, &text).unwrap();
    }
    let want = std::fs::read_to_string(path).unwrap_or_default();
    assert_eq!(
        text, want,
        "subjects changed; review and rerun with BLESS=1"
    );
    let mut uniq = got.clone();
    uniq.sort();
    uniq.dedup();
    assert_eq!(uniq.len(), got.len(), "duplicate subject");
    for s in &got {
        assert!(s.starts_with("berth.v1."), "{s}");
        assert!(!s.contains(' '), "{s}");
    }
}
