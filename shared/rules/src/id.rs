//! Object IDs as Moby's `stringid.GenerateRandomID` makes them.

/// A new random 64-hex ID (containers, execs, networks, build records). Like
/// Moby, an ID whose 12-character short form is all decimal digits is drawn
/// again: a short ID must never read as a number.
pub fn new_id() -> String {
    loop {
        let mut b = [0u8; 32];
        getrandom::fill(&mut b).expect("the kernel's random source");
        let id = hex::encode(b);
        if !id[..12].bytes().all(|c| c.is_ascii_digit()) {
            return id;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_64_lowercase_hex_and_differ() {
        let a = new_id();
        assert_eq!(a.len(), 64);
        assert!(a.bytes().all(|c| c.is_ascii_digit() || (b'a'..=b'f').contains(&c)));
        assert_ne!(a, new_id());
        for _ in 0..1000 {
            assert!(!new_id()[..12].bytes().all(|c| c.is_ascii_digit()));
        }
    }
}
