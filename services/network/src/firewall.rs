//! Firewall rules in one nftables table per node (`ip berth_<node>`), rendered whole
//! from the records and swapped in atomically with `nft -f -`: the table can never
//! hold a rule the records do not explain, so nothing leaks and a restart after a
//! crash reconciles by rendering again. Other engines' tables (Docker's) are never
//! touched.
//!
//! * published ports: DNAT in prerouting (traffic from outside and from other
//!   containers) and output (from the host itself, 127.0.0.1 included);
//! * 127.0.0.1: `route_localnet` on the bridge lets the DNATed packet leave with a
//!   loopback source, and masquerade rewrites that source to the bridge address so
//!   the reply comes back (no userland proxy);
//! * hairpin: a container reaching its own published port is masqueraded;
//! * outbound: masquerade for each network's subnet unless internal or disabled;
//! * isolation: no forwarding between two different berth bridges; an internal
//!   network forwards only within its bridge; `enable_icc=false` drops within it.
//!
//! One thing lives outside the table: a DROP in another table's forward hook (the
//! FORWARD policy DROP Docker sets, with br_netfilter sending bridged frames through
//! it) drops whatever berth's table accepts. So iptables' FORWARD chain gets, per
//! berth bridge, accept rules tagged with the table's name (`iptables -m comment`):
//! traffic from the bridge, replies to it, and DNATed (published) traffic to it.
//! berth's own drops (isolation) still apply; the rules go with the bridges.

use ipnet::Ipv4Net;
use std::fmt::Write;
use std::net::Ipv4Addr;

use crate::ports::Proto;

#[derive(Debug, thiserror::Error)]
pub enum FirewallError {
    #[error("running nft: {0}")]
    Spawn(std::io::Error),
    #[error("nft failed: {0}")]
    Nft(String),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FwNetwork {
    pub bridge: String,
    pub subnet: Ipv4Net,
    pub internal: bool,
    pub masquerade: bool,
    pub icc: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FwPort {
    pub proto: Proto,
    pub host_ip: Ipv4Addr,
    pub host_port: u16,
    pub container_ip: Ipv4Addr,
    pub container_port: u16,
}

/// The table name for a node: `berth_` and the node id with anything but
/// `[A-Za-z0-9_]` turned into `_`.
pub fn table_name(node: &str) -> String {
    let s: String = node
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '_' {
                c
            } else {
                '_'
            }
        })
        .collect();
    format!("berth_{s}")
}

fn q(s: &str) -> String {
    format!("\"{s}\"")
}

/// The whole table as an nft script that replaces the previous one atomically.
pub fn render(table: &str, nets: &[FwNetwork], ports: &[FwPort]) -> String {
    let mut s = String::new();
    // add+delete makes the delete succeed whether or not the table exists; the
    // three statements are one transaction.
    let _ = writeln!(s, "add table ip {table}");
    let _ = writeln!(s, "delete table ip {table}");
    let _ = writeln!(s, "table ip {table} {{");

    // DNAT for published ports, from everywhere to a local address.
    let _ = writeln!(s, "  chain publish {{");
    for p in ports {
        let mut r = String::from("    ");
        if !p.host_ip.is_unspecified() {
            let _ = write!(r, "ip daddr {} ", p.host_ip);
        }
        let _ = write!(
            r,
            "{} dport {} dnat to {}:{}",
            p.proto.as_str(),
            p.host_port,
            p.container_ip,
            p.container_port
        );
        let _ = writeln!(s, "{r}");
    }
    let _ = writeln!(s, "  }}");
    let _ = writeln!(s, "  chain prerouting {{");
    let _ = writeln!(
        s,
        "    type nat hook prerouting priority dstnat; policy accept;"
    );
    let _ = writeln!(s, "    fib daddr type local jump publish");
    let _ = writeln!(s, "  }}");
    let _ = writeln!(s, "  chain output {{");
    let _ = writeln!(s, "    type nat hook output priority -100; policy accept;");
    let _ = writeln!(s, "    fib daddr type local jump publish");
    let _ = writeln!(s, "  }}");

    // Source NAT.
    let _ = writeln!(s, "  chain postrouting {{");
    let _ = writeln!(
        s,
        "    type nat hook postrouting priority srcnat; policy accept;"
    );
    for n in nets {
        // host-originated traffic to 127.0.0.1:port, now DNATed onto the bridge
        let _ = writeln!(
            s,
            "    oifname {} ip saddr 127.0.0.0/8 masquerade",
            q(&n.bridge)
        );
        if n.masquerade && !n.internal {
            let _ = writeln!(
                s,
                "    ip saddr {} oifname != {} masquerade",
                n.subnet,
                q(&n.bridge)
            );
        }
    }
    for p in ports {
        // hairpin: a container to its own published port
        let _ = writeln!(
            s,
            "    ip saddr {ip} ip daddr {ip} {} dport {} masquerade",
            p.proto.as_str(),
            p.container_port,
            ip = p.container_ip
        );
    }
    let _ = writeln!(s, "  }}");

    // Isolation.
    let _ = writeln!(s, "  chain forward {{");
    let _ = writeln!(
        s,
        "    type filter hook forward priority filter; policy accept;"
    );
    for n in nets {
        let others: Vec<String> = nets
            .iter()
            .filter(|o| o.bridge != n.bridge)
            .map(|o| q(&o.bridge))
            .collect();
        if n.internal {
            let _ = writeln!(s, "    iifname {b} oifname != {b} drop", b = q(&n.bridge));
            let _ = writeln!(s, "    oifname {b} iifname != {b} drop", b = q(&n.bridge));
        } else if !others.is_empty() {
            let _ = writeln!(
                s,
                "    iifname {b} oifname != {b} oifname {{ {} }} drop",
                others.join(", "),
                b = q(&n.bridge)
            );
        }
        if !n.icc {
            let _ = writeln!(s, "    iifname {b} oifname {b} drop", b = q(&n.bridge));
        }
    }
    let _ = writeln!(s, "  }}");
    let _ = writeln!(s, "}}");
    s
}

/// The tagged iptables FORWARD rules for `bridges` (as `iptables -S` prints them,
/// without the leading `-A FORWARD`).
pub fn forward_rules(table: &str, bridges: &[String]) -> Vec<String> {
    let mut v = Vec::new();
    for b in bridges {
        v.push(format!("-i {b} -m comment --comment {table} -j ACCEPT"));
        v.push(format!("-o {b} -m conntrack --ctstate RELATED,ESTABLISHED -m comment --comment {table} -j ACCEPT"));
        v.push(format!("-o {b} -m conntrack --ctstate DNAT -m comment --comment {table} -j ACCEPT"));
    }
    v
}

fn iptables_bin() -> Option<&'static str> {
    ["/usr/sbin/iptables", "/sbin/iptables", "/usr/bin/iptables"].into_iter().find(|p| std::path::Path::new(p).exists())
}

/// Make iptables' FORWARD chain hold exactly the tagged rules for `bridges`:
/// remove this table's rules for bridges that went, insert the missing ones first
/// in the chain. Without iptables on the host there is nothing to do.
pub async fn sync_forward(table: &str, bridges: &[String]) -> Result<(), FirewallError> {
    let Some(ipt) = iptables_bin() else { return Ok(()) };
    let run = |args: Vec<String>| async move {
        let out = tokio::process::Command::new(ipt).arg("-w").args(&args).output().await.map_err(FirewallError::Spawn)?;
        if !out.status.success() {
            return Err(FirewallError::Nft(format!("iptables {}: {}", args.join(" "), String::from_utf8_lossy(&out.stderr).trim())));
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    };
    let listed = run(vec!["-S".into(), "FORWARD".into()]).await?;
    let have: Vec<String> = listed
        .lines()
        .filter_map(|l| l.strip_prefix("-A FORWARD "))
        .filter(|l| l.split_whitespace().any(|w| w.trim_matches('"') == table))
        .map(|l| l.replace('"', ""))
        .collect();
    let want = forward_rules(table, bridges);
    for r in have.iter().filter(|r| !want.contains(r)) {
        let mut a = vec!["-D".to_string(), "FORWARD".to_string()];
        a.extend(r.split_whitespace().map(str::to_string));
        run(a).await?;
    }
    for r in want.iter().rev().filter(|r| !have.contains(r)) {
        let mut a = vec!["-I".to_string(), "FORWARD".to_string(), "1".to_string()];
        a.extend(r.split_whitespace().map(str::to_string));
        run(a).await?;
    }
    Ok(())
}

/// Delete the node's table. Idempotent.
pub fn delete_script(table: &str) -> String {
    format!("add table ip {table}\ndelete table ip {table}\n")
}

/// Run an nft script in one transaction.
pub async fn apply(script: &str) -> Result<(), FirewallError> {
    use tokio::io::AsyncWriteExt;
    let mut child = tokio::process::Command::new(nft_bin())
        .args(["-f", "-"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .map_err(FirewallError::Spawn)?;
    let mut stdin = child.stdin.take().expect("stdin");
    stdin
        .write_all(script.as_bytes())
        .await
        .map_err(FirewallError::Spawn)?;
    drop(stdin);
    let out = child
        .wait_with_output()
        .await
        .map_err(FirewallError::Spawn)?;
    if !out.status.success() {
        return Err(FirewallError::Nft(
            String::from_utf8_lossy(&out.stderr).trim().to_string(),
        ));
    }
    Ok(())
}

fn nft_bin() -> &'static str {
    for p in ["/usr/sbin/nft", "/sbin/nft", "/usr/bin/nft"] {
        if std::path::Path::new(p).exists() {
            return p;
        }
    }
    "nft"
}

/// The node's table as nft prints it (for tests and `berth doctor`).
pub async fn list(table: &str) -> Option<String> {
    let out = tokio::process::Command::new(nft_bin())
        .args(["list", "table", "ip", table])
        .output()
        .await
        .ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).into_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn nets() -> Vec<FwNetwork> {
        vec![
            FwNetwork {
                bridge: "berth0".into(),
                subnet: "172.17.0.0/16".parse().unwrap(),
                internal: false,
                masquerade: true,
                icc: true,
            },
            FwNetwork {
                bridge: "br-aaaaaaaaaaaa".into(),
                subnet: "172.18.0.0/16".parse().unwrap(),
                internal: false,
                masquerade: true,
                icc: true,
            },
            FwNetwork {
                bridge: "br-bbbbbbbbbbbb".into(),
                subnet: "172.19.0.0/16".parse().unwrap(),
                internal: true,
                masquerade: true,
                icc: false,
            },
        ]
    }

    fn ports() -> Vec<FwPort> {
        vec![
            FwPort {
                proto: Proto::Tcp,
                host_ip: Ipv4Addr::UNSPECIFIED,
                host_port: 8080,
                container_ip: Ipv4Addr::new(172, 17, 0, 2),
                container_port: 80,
            },
            FwPort {
                proto: Proto::Udp,
                host_ip: Ipv4Addr::LOCALHOST,
                host_port: 5353,
                container_ip: Ipv4Addr::new(172, 18, 0, 2),
                container_port: 53,
            },
        ]
    }

    #[test]
    fn table_names() {
        assert_eq!(table_name("a1b2-c3"), "berth_a1b2_c3");
    }

    #[test]
    fn renders_rules() {
        let s = render("berth_t", &nets(), &ports());
        assert!(
            s.starts_with("add table ip berth_t\ndelete table ip berth_t\ntable ip berth_t {"),
            "{s}"
        );
        assert!(
            s.contains("    tcp dport 8080 dnat to 172.17.0.2:80\n"),
            "{s}"
        );
        assert!(
            s.contains("    ip daddr 127.0.0.1 udp dport 5353 dnat to 172.18.0.2:53\n"),
            "{s}"
        );
        assert!(
            s.contains("oifname \"berth0\" ip saddr 127.0.0.0/8 masquerade"),
            "{s}"
        );
        assert!(
            s.contains("ip saddr 172.17.0.0/16 oifname != \"berth0\" masquerade"),
            "{s}"
        );
        // internal: no masquerade, no way out
        assert!(!s.contains("ip saddr 172.19.0.0/16"), "{s}");
        assert!(
            s.contains("iifname \"br-bbbbbbbbbbbb\" oifname != \"br-bbbbbbbbbbbb\" drop"),
            "{s}"
        );
        assert!(
            s.contains("iifname \"br-bbbbbbbbbbbb\" oifname \"br-bbbbbbbbbbbb\" drop"),
            "{s}"
        );
        // isolation between bridges
        assert!(s.contains("iifname \"berth0\" oifname != \"berth0\" oifname { \"br-aaaaaaaaaaaa\", \"br-bbbbbbbbbbbb\" } drop"), "{s}");
        // hairpin
        assert!(
            s.contains("ip saddr 172.17.0.2 ip daddr 172.17.0.2 tcp dport 80 masquerade"),
            "{s}"
        );
    }

    #[tokio::test]
    async fn nft_accepts_the_rules() {
        berth_test_support::require_root!();
        let t = table_name(&format!("test_{}", &crate::store::new_id()[..8]));
        apply(&render(&t, &nets(), &ports())).await.unwrap();
        let l = list(&t).await.unwrap();
        assert!(l.contains("dnat to 172.17.0.2:80"), "{l}");
        // replaced whole
        apply(&render(&t, &nets()[..1], &[])).await.unwrap();
        let l = list(&t).await.unwrap();
        assert!(!l.contains("dnat"), "{l}");
        apply(&delete_script(&t)).await.unwrap();
        assert!(list(&t).await.is_none());
        apply(&delete_script(&t)).await.unwrap();
    }
}
