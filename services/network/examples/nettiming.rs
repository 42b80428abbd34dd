//! Where the time of a sandbox goes (root): namespace, veth, in-namespace setup, nft.
use berth_network::{link::*, netns};
use std::net::Ipv4Addr;
use std::time::Instant;

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let nl = Netlink::host().unwrap();
    let br = "btiming0";
    let idx = nl
        .ensure_bridge(br, Ipv4Addr::new(10, 249, 0, 1), 24, 0)
        .await
        .unwrap();
    let d = tempfile::tempdir().unwrap();
    let (mut t_ns, mut t_veth, mut t_cfg, mut t_rm) = (0u128, 0u128, 0u128, 0u128);
    let n = 30;
    for i in 0..n {
        let p = d.path().join(format!("ns{i}"));
        let t = Instant::now();
        let sock = netns::create(p.clone()).await.unwrap();
        t_ns += t.elapsed().as_micros();
        let t = Instant::now();
        let f = std::fs::File::open(&p).unwrap();
        let v = veth_name();
        let ip = Ipv4Addr::new(10, 249, 0, 2 + i as u8);
        nl.add_veth(&v, "berth:timing", idx, 0, "eth0", mac_for(ip), &f)
            .await
            .unwrap();
        t_veth += t.elapsed().as_micros();
        let t = Instant::now();
        let inner = Netlink::from_fd(sock).unwrap();
        inner
            .configure("eth0", ip, 24, Some(Ipv4Addr::new(10, 249, 0, 1)), true)
            .await
            .unwrap();
        t_cfg += t.elapsed().as_micros();
        let t = Instant::now();
        nl.delete(&v).await.unwrap();
        netns::remove(&p).unwrap();
        t_rm += t.elapsed().as_micros();
    }
    let t = Instant::now();
    for _ in 0..10 {
        berth_network::firewall::apply("add table ip btiming\nadd chain ip btiming c\nadd rule ip btiming c tcp dport 1 accept\n").await.unwrap();
    }
    let t_nft = t.elapsed().as_micros() / 10;
    berth_network::firewall::apply("delete table ip btiming\n")
        .await
        .unwrap();
    nl.delete(br).await.unwrap();
    println!(
        "per sandbox: netns {} us, veth {} us, configure {} us, remove {} us; one nft run {} us",
        t_ns / n,
        t_veth / n,
        t_cfg / n,
        t_rm / n,
        t_nft
    );
}
