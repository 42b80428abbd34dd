//! Container names: Docker's rules for user names, and random `adjective_surname`
//! names for containers created without one.

/// Docker's `RestrictedNameChars`: `[a-zA-Z0-9][a-zA-Z0-9_.-]+`.
pub fn valid(name: &str) -> bool {
    let mut c = name.chars();
    match c.next() {
        Some(f) if f.is_ascii_alphanumeric() => {}
        _ => return false,
    }
    let rest: Vec<char> = c.collect();
    !rest.is_empty() && rest.iter().all(|ch| ch.is_ascii_alphanumeric() || matches!(ch, '_' | '.' | '-'))
}

const LEFT: &[&str] = &[
    "admiring", "adoring", "affectionate", "agitated", "amazing", "angry", "awesome", "beautiful", "blissful",
    "bold", "boring", "brave", "busy", "charming", "clever", "compassionate", "competent", "confident", "cool",
    "cranky", "crazy", "dazzling", "determined", "distracted", "dreamy", "eager", "ecstatic", "elastic",
    "elated", "elegant", "eloquent", "epic", "exciting", "fervent", "festive", "flamboyant", "focused",
    "friendly", "frosty", "funny", "gallant", "gifted", "goofy", "gracious", "great", "happy", "hardcore",
    "heuristic", "hopeful", "hungry", "infallible", "inspiring", "intelligent", "interesting", "jolly",
    "jovial", "keen", "kind", "laughing", "loving", "lucid", "magical", "modest", "musing", "mystifying",
    "naughty", "nervous", "nice", "nifty", "nostalgic", "objective", "optimistic", "peaceful", "pedantic",
    "pensive", "practical", "priceless", "quirky", "quizzical", "recursing", "relaxed", "reverent",
    "romantic", "sad", "serene", "sharp", "silly", "sleepy", "stoic", "strange", "stupefied", "suspicious",
    "sweet", "tender", "thirsty", "trusting", "unruffled", "upbeat", "vibrant", "vigilant", "vigorous",
    "wizardly", "wonderful", "xenodochial", "youthful", "zealous", "zen",
];

/// Scientists and engineers, as Docker's list honours them.
const RIGHT: &[&str] = &[
    "agnesi", "albattani", "allen", "archimedes", "babbage", "banach", "bardeen", "bartik", "bell", "bhabha",
    "blackwell", "bohr", "booth", "borg", "bose", "brahmagupta", "brattain", "brown", "cannon", "carson",
    "cerf", "chandrasekhar", "clarke", "curie", "darwin", "davinci", "diffie", "dijkstra", "dirac",
    "einstein", "elion", "engelbart", "euclid", "euler", "faraday", "fermat", "fermi", "feynman", "franklin",
    "galileo", "gauss", "germain", "goldberg", "goodall", "hamilton", "hawking", "heisenberg", "hertz",
    "hodgkin", "hoover", "hopper", "hypatia", "jackson", "jennings", "johnson", "kalam", "kepler", "khorana",
    "knuth", "kowalevski", "lamarr", "lamport", "leakey", "liskov", "lovelace", "lumiere", "mayer",
    "mccarthy", "mcclintock", "meitner", "mendel", "mirzakhani", "montalcini", "morse", "napier", "nash",
    "newton", "nobel", "noether", "pascal", "pasteur", "payne", "perlman", "pike", "poincare", "ramanujan",
    "ride", "ritchie", "rosalind", "sammet", "shannon", "shockley", "sinoussi", "stonebraker", "swartz",
    "tesla", "thompson", "torvalds", "turing", "varahamihira", "volhard", "wescoff", "wiles", "williams",
    "wing", "wozniak", "wright", "yalow", "yonath",
];

fn rand_u32() -> u32 {
    let mut b = [0u8; 4];
    let _ = getrandom::fill(&mut b);
    u32::from_le_bytes(b)
}

/// A random name; after a collision, Docker appends a digit.
pub fn random(retry: u32) -> String {
    let l = LEFT[rand_u32() as usize % LEFT.len()];
    let r = RIGHT[rand_u32() as usize % RIGHT.len()];
    if retry > 0 {
        format!("{l}_{r}{}", rand_u32() % 10)
    } else {
        format!("{l}_{r}")
    }
}

/// A new 64-hex container or exec ID.
pub use berth_rules::id::new_id;

#[cfg(test)]
mod tests {
    use super::*;
    #[test]
    fn names() {
        assert!(valid("web"));
        assert!(valid("a.b-c_d"));
        assert!(!valid("-x"));
        assert!(!valid("a"));
        assert!(!valid("a/b"));
        assert!(!valid(""));
        assert!(random(0).contains('_'));
        assert_eq!(new_id().len(), 64);
    }
}
