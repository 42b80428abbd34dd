//! Docker's swarm identifiers and join tokens, in swarmkit's formats: object IDs are
//! 25 base-36 characters of a 136-bit random number whose top bit is set (so every ID
//! has the same length); tokens are `SWMTKN-1-<CA digest, 50 base-36>-<secret, 25>`.

/// A new object ID (node, service, task, secret, config, network).
pub fn new_id() -> String {
    let mut b = [0u8; 17];
    getrandom::fill(&mut b).expect("random");
    b[0] |= 0x80;
    let s = base36(&b);
    // swarmkit takes characters 1..26 of the base-36 text.
    s[1..26].to_string()
}

/// A random secret of `n` bytes as lowercase hex (passwords, keys).
/// The node ID a join (`join_id`, the joining node's own random) gets from the swarm
/// `cluster_id`: the same join asked again gets the same ID (a retry after a lost answer
/// makes no second node).
pub fn join_node_id(cluster_id: &str, join_id: &str) -> String {
    use sha2::Digest;
    let d = sha2::Sha256::new().chain_update(b"berth-join\0").chain_update(cluster_id).chain_update(b"\0").chain_update(join_id).finalize();
    let mut b = [0u8; 17];
    b.copy_from_slice(&d[..17]);
    b[0] |= 0x80;
    base36(&b)[1..26].to_string()
}

pub fn random_hex(n: usize) -> String {
    let mut b = vec![0u8; n];
    getrandom::fill(&mut b).expect("random");
    hex::encode(b)
}

/// A join token for the CA whose certificate digest (SHA-256) is `ca_digest`.
pub fn join_token(ca_digest: &[u8; 32]) -> String {
    let mut secret = [0u8; 16];
    getrandom::fill(&mut secret).expect("random");
    format!("SWMTKN-1-{:0>50}-{:0>25}", base36(ca_digest), base36(&secret))
}

/// The parts of a join token: (CA digest, whole token) — the token itself is the
/// secret a manager compares.
pub fn parse_token(token: &str) -> Option<[u8; 32]> {
    let rest = token.strip_prefix("SWMTKN-1-")?;
    let (digest, secret) = rest.split_once('-')?;
    if digest.len() != 50 || secret.len() != 25 {
        return None;
    }
    let bytes = from_base36(digest)?;
    if bytes.len() > 32 {
        return None;
    }
    let mut out = [0u8; 32];
    out[32 - bytes.len()..].copy_from_slice(&bytes);
    Some(out)
}

/// Base-36 text of a big-endian unsigned number (no leading zeros; "0" for zero).
fn base36(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 36] = b"0123456789abcdefghijklmnopqrstuvwxyz";
    let mut n: Vec<u8> = bytes.iter().copied().skip_while(|b| *b == 0).collect();
    let mut out = Vec::new();
    while !n.is_empty() {
        let mut rem = 0u32;
        let mut q = Vec::with_capacity(n.len());
        for &d in &n {
            let cur = (rem << 8) | d as u32;
            let qd = cur / 36;
            rem = cur % 36;
            if !(q.is_empty() && qd == 0) {
                q.push(qd as u8);
            }
        }
        out.push(DIGITS[rem as usize]);
        n = q;
    }
    if out.is_empty() {
        out.push(b'0');
    }
    out.reverse();
    String::from_utf8(out).unwrap()
}

fn from_base36(s: &str) -> Option<Vec<u8>> {
    let mut n: Vec<u8> = Vec::new(); // big-endian
    for c in s.chars() {
        let d = c.to_digit(36)?;
        let mut carry = d;
        for b in n.iter_mut().rev() {
            let v = (*b as u32) * 36 + carry;
            *b = (v & 0xff) as u8;
            carry = v >> 8;
        }
        while carry > 0 {
            n.insert(0, (carry & 0xff) as u8);
            carry >>= 8;
        }
    }
    Some(n)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_join_asked_again_gets_the_same_node_id() {
        let a = join_node_id("cluster1", "00112233445566778899aabbccddeeff");
        assert_eq!(a, join_node_id("cluster1", "00112233445566778899aabbccddeeff"));
        assert_eq!(a.len(), 25);
        assert!(a.bytes().all(|b| b.is_ascii_digit() || b.is_ascii_lowercase()), "{a}");
        assert_ne!(a, join_node_id("cluster1", "00112233445566778899aabbccddeefe"));
        assert_ne!(a, join_node_id("cluster2", "00112233445566778899aabbccddeeff"));
    }

    #[test]
    fn ids_have_docker_shape() {
        for _ in 0..200 {
            let id = new_id();
            assert_eq!(id.len(), 25, "{id}");
            assert!(id.chars().all(|c| c.is_ascii_digit() || c.is_ascii_lowercase()));
        }
        assert_ne!(new_id(), new_id());
    }

    #[test]
    fn base36_round_trips() {
        assert_eq!(base36(&[0]), "0");
        assert_eq!(base36(&[35]), "z");
        assert_eq!(base36(&[1, 0]), "74"); // 256 = 7*36 + 4
        let b = [0x12u8, 0x34, 0x56, 0x78, 0x9a];
        assert_eq!(from_base36(&base36(&b)).unwrap(), b.to_vec());
    }

    #[test]
    fn tokens_carry_the_ca_digest() {
        let mut d = [0u8; 32];
        getrandom::fill(&mut d).unwrap();
        let t = join_token(&d);
        assert!(t.starts_with("SWMTKN-1-"));
        assert_eq!(t.len(), "SWMTKN-1-".len() + 50 + 1 + 25);
        assert_eq!(parse_token(&t), Some(d));
        assert_eq!(parse_token("SWMTKN-1-abc-def"), None);
        assert_eq!(parse_token("nonsense"), None);
    }
}
