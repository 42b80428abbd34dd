//! The network service over the bus, against a real nats-server and the real kernel
//! (root): networks, sandboxes, DNS, published ports, isolation, modes, reconcile.

mod common;

use berth_network::NetworkApi;
use bus_schema::network::*;
use bus_schema::{docker, ErrorKind};
use common::*;
use std::collections::HashMap;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::Path;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn networks_lifecycle() {
    require_root!();
    let h = Harness::start().await;
    let c = &h.client;
    // predefined networks
    let ls = c.network_list(NetworkList::default()).await.unwrap();
    let mut names: Vec<(String, String)> = ls
        .iter()
        .map(|n| (n.name.clone().unwrap(), n.driver.clone().unwrap()))
        .collect();
    names.sort();
    assert_eq!(
        names,
        vec![
            ("bridge".into(), "bridge".into()),
            ("host".into(), "host".into()),
            ("none".into(), "null".into())
        ]
    );
    let br = c
        .network_inspect(NetworkInspect {
            id: "bridge".into(),
            verbose: false,
        })
        .await
        .unwrap();
    assert_eq!(
        br.options.as_ref().unwrap()["com.docker.network.bridge.name"],
        h.bridge
    );
    assert_eq!(
        br.options.as_ref().unwrap()["com.docker.network.bridge.default_bridge"],
        "true"
    );
    assert_eq!(br.id.as_ref().unwrap().len(), 64);
    let sub = br.ipam.as_ref().unwrap().config.as_ref().unwrap()[0]
        .subnet
        .clone()
        .unwrap();
    assert_ne!(sub, "", "default bridge has a subnet");
    assert!(Path::new(&format!("/sys/class/net/{}", h.bridge)).exists());

    // create
    let id = h
        .create_net("web", |b| {
            b.labels = Some(HashMap::from([("tier".into(), "front".into())]));
            b.options = Some(HashMap::from([("foo".into(), "bar".into())]));
            b.ipam = Some(docker::Ipam {
                config: Some(vec![docker::IpamConfig {
                    subnet: Some("10.231.0.0/24".into()),
                    gateway: Some("10.231.0.254".into()),
                    ip_range: Some("10.231.0.128/25".into()),
                    ..Default::default()
                }]),
                ..Default::default()
            });
        })
        .await;
    let n = c
        .network_inspect(NetworkInspect {
            id: "web".into(),
            verbose: false,
        })
        .await
        .unwrap();
    assert_eq!(n.id.as_deref(), Some(id.as_str()));
    assert_eq!(n.driver.as_deref(), Some("bridge"));
    assert_eq!(n.scope.as_deref(), Some("local"));
    let ic = &n.ipam.as_ref().unwrap().config.as_ref().unwrap()[0];
    assert_eq!(ic.subnet.as_deref(), Some("10.231.0.0/24"));
    assert_eq!(ic.gateway.as_deref(), Some("10.231.0.254"));
    assert_eq!(ic.ip_range.as_deref(), Some("10.231.0.128/25"));
    assert_eq!(n.labels.as_ref().unwrap()["tier"], "front");
    assert_eq!(n.options.as_ref().unwrap()["foo"], "bar");
    assert!(n.containers.as_ref().unwrap().is_empty());
    let brname = format!("br-{}", &id[..12]);
    assert!(Path::new(&format!("/sys/class/net/{brname}")).exists());
    // by prefix, resolve
    let r = c
        .network_resolve(NetworkResolve { id: id[..6].into() })
        .await
        .unwrap();
    assert_eq!((r.name.as_str(), r.driver.as_str()), ("web", "bridge"));

    // errors as Docker's
    let e = c
        .network_create(NetworkCreate {
            body: docker::NetworkCreateRequest {
                name: "web".into(),
                ..Default::default()
            },
        })
        .await
        .unwrap_err();
    assert_eq!(
        (e.kind, e.message.as_str()),
        (ErrorKind::Conflict, "network with name web already exists")
    );
    let e = c
        .network_create(NetworkCreate {
            body: docker::NetworkCreateRequest {
                name: "overlap".into(),
                ipam: Some(docker::Ipam {
                    config: Some(vec![docker::IpamConfig {
                        subnet: Some("10.231.0.0/16".into()),
                        ..Default::default()
                    }]),
                    ..Default::default()
                }),
                ..Default::default()
            },
        })
        .await
        .unwrap_err();
    assert_eq!(e.kind, ErrorKind::Forbidden, "{e}");
    let e = c
        .network_create(NetworkCreate {
            body: docker::NetworkCreateRequest {
                name: "h2".into(),
                driver: Some("host".into()),
                ..Default::default()
            },
        })
        .await
        .unwrap_err();
    assert_eq!(
        e.message,
        "only one instance of \"host\" network is allowed"
    );
    let e = c
        .network_create(NetworkCreate {
            body: docker::NetworkCreateRequest {
                name: "x".into(),
                driver: Some("weave".into()),
                ..Default::default()
            },
        })
        .await
        .unwrap_err();
    assert_eq!(
        (e.kind, e.message.as_str()),
        (ErrorKind::NotFound, "plugin \"weave\" not found")
    );
    let e = c
        .network_inspect(NetworkInspect {
            id: "nosuch".into(),
            verbose: false,
        })
        .await
        .unwrap_err();
    assert_eq!(
        (e.kind, e.message.as_str()),
        (ErrorKind::NotFound, "network nosuch not found")
    );
    for p in ["bridge", "host", "none"] {
        let e = c
            .network_remove(NetworkRemove { id: p.into() })
            .await
            .unwrap_err();
        assert_eq!(
            (e.kind, e.message),
            (
                ErrorKind::Forbidden,
                format!("{p} is a pre-defined network and cannot be removed")
            )
        );
    }

    // list filters
    let names_of = |v: Vec<docker::NetworkInspect>| -> Vec<String> {
        let mut v: Vec<String> = v.into_iter().map(|n| n.name.unwrap()).collect();
        v.sort();
        v
    };
    let f = |k: &str, v: &str| NetworkList {
        filters: HashMap::from([(k.to_string(), vec![v.to_string()])]),
    };
    assert_eq!(
        names_of(c.network_list(f("label", "tier=front")).await.unwrap()),
        vec!["web"]
    );
    assert_eq!(
        names_of(c.network_list(f("type", "custom")).await.unwrap()),
        vec!["web"]
    );
    assert_eq!(
        names_of(c.network_list(f("type", "builtin")).await.unwrap()),
        vec!["bridge", "host", "none"]
    );
    assert_eq!(
        names_of(c.network_list(f("driver", "null")).await.unwrap()),
        vec!["none"]
    );
    assert_eq!(
        names_of(c.network_list(f("name", "we")).await.unwrap()),
        vec!["web"]
    );
    assert_eq!(
        names_of(c.network_list(f("dangling", "true")).await.unwrap()),
        vec!["web"]
    );
    assert_eq!(
        names_of(c.network_list(f("id", &id[..5])).await.unwrap()),
        vec!["web"]
    );
    assert_eq!(
        c.network_list(f("bogus", "1")).await.unwrap_err().kind,
        ErrorKind::InvalidArgument
    );

    // in use: cannot remove
    let a = cid();
    h.sandbox(&a, "a", "web", |_| {}).await.unwrap();
    let e = c
        .network_remove(NetworkRemove { id: "web".into() })
        .await
        .unwrap_err();
    assert_eq!(e.kind, ErrorKind::Forbidden, "{e}");
    assert!(e.message.contains("has active endpoints"), "{e}");
    let pr = c.network_prune(NetworkPrune::default()).await.unwrap();
    assert_eq!(pr.networks_deleted, Some(vec![]));
    c.sandbox_remove(SandboxRemove {
        container_id: a.clone(),
    })
    .await
    .unwrap();

    // prune removes unused user networks only
    h.create_net("spare", |_| {}).await;
    let pr = c
        .network_prune(NetworkPrune {
            filters: HashMap::from([("label".into(), vec!["tier".into()])]),
        })
        .await
        .unwrap();
    assert_eq!(pr.networks_deleted, Some(vec!["web".to_string()]));
    assert!(!Path::new(&format!("/sys/class/net/{brname}")).exists());
    c.network_remove(NetworkRemove { id: "spare".into() })
        .await
        .unwrap();
    let e = c
        .network_remove(NetworkRemove { id: "spare".into() })
        .await
        .unwrap_err();
    assert_eq!(e.kind, ErrorKind::NotFound);

    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    let ev = h.events();
    let acts: Vec<&str> = ev
        .iter()
        .filter(|e| e.1 == id)
        .map(|e| e.0.as_str())
        .collect();
    assert_eq!(acts, vec!["create", "connect", "disconnect", "destroy"]);
    let create = ev.iter().find(|e| e.0 == "create" && e.1 == id).unwrap();
    assert_eq!(create.2["name"], "web");
    assert_eq!(create.2["type"], "bridge");
    let connect = ev.iter().find(|e| e.0 == "connect" && e.1 == id).unwrap();
    assert_eq!(connect.2["container"], a);
    h.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn containers_on_a_user_network_reach_each_other_by_name() {
    require_root!();
    let h = Harness::start().await;
    h.create_net("app", |_| {}).await;
    let (a, b) = (cid(), cid());
    let sa = h
        .sandbox(&a, "web", "app", |r| {
            r.endpoints = vec![EndpointRequest {
                network: "app".into(),
                settings: docker::EndpointSettings {
                    aliases: Some(vec!["www".into()]),
                    ..Default::default()
                },
            }];
        })
        .await
        .unwrap();
    let sb = h.sandbox(&b, "client", "app", |_| {}).await.unwrap();
    let ipa = ip_of(&sa, "app");
    let ns = nameserver(&sb.resolv_conf);
    assert_eq!(
        Some(ns.to_string()),
        sb.networks["app"].gateway.clone(),
        "{}",
        sb.resolv_conf
    );
    assert!(
        sb.resolv_conf.contains("options ndots:0"),
        "{}",
        sb.resolv_conf
    );
    let names = sa.networks["app"].dns_names.clone().unwrap();
    assert_eq!(names[..2], ["web".to_string(), "www".to_string()]);
    assert!(names.contains(&a[..12].to_string()));
    assert!(
        sa.hosts.contains(&format!("{ipa}\t{}", &a[..12])),
        "{}",
        sa.hosts
    );
    assert_eq!(sa.networks["app"].mac_address.as_ref().unwrap().len(), 17);

    http_server_in(&sa.key, 8080, "hello from web").await;
    for name in ["web", "www", &a[..12], "web.app"] {
        let ips = resolve_in(&sb.key, ns, name).await.unwrap();
        assert_eq!(ips, vec![ipa], "{name}");
    }
    let body = http_get(Some(&sb.key), SocketAddr::from((ipa, 8080)))
        .await
        .unwrap();
    assert_eq!(body, "hello from web");
    // eth0 with the address, the default route via the gateway
    let route = berth_network::netns::run_in(sb.key.clone().into(), || {
        std::fs::read_to_string("/proc/thread-self/net/route")
    })
    .await
    .unwrap();
    assert!(
        route.lines().any(|l| l.starts_with("eth0\t00000000")),
        "{route}"
    );

    // inspect lists both
    let n = h
        .client
        .network_inspect(NetworkInspect {
            id: "app".into(),
            verbose: false,
        })
        .await
        .unwrap();
    let cs = n.containers.unwrap();
    assert_eq!(cs[&a].name.as_deref(), Some("web"));
    assert_eq!(cs[&a].ipv4_address.as_ref().unwrap(), &format!("{ipa}/16"));

    // rename: the DNS follows
    h.client
        .sandbox_rename(SandboxRename {
            container_id: a.clone(),
            name: "web2".into(),
        })
        .await
        .unwrap();
    assert_eq!(resolve_in(&sb.key, ns, "web2").await.unwrap(), vec![ipa]);
    assert!(resolve_in(&sb.key, ns, "web").await.is_err());

    // the default bridge resolves no names
    let c = cid();
    let sc = h.sandbox(&c, "plain", "bridge", |_| {}).await.unwrap();
    assert!(!sc.resolv_conf.contains(&format!(
        "nameserver {}",
        sc.networks["bridge"].gateway.as_ref().unwrap()
    )));
    assert!(sc.networks["bridge"].dns_names.is_none());
    h.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn networks_are_isolated_from_each_other() {
    require_root!();
    let h = Harness::start().await;
    h.create_net("n1", |_| {}).await;
    h.create_net("n2", |_| {}).await;
    h.create_net("sealed", |b| b.internal = Some(true)).await;
    let (a, b, c, d) = (cid(), cid(), cid(), cid());
    let sa = h.sandbox(&a, "a", "n1", |_| {}).await.unwrap();
    let sb = h.sandbox(&b, "b", "n2", |_| {}).await.unwrap();
    let sc = h.sandbox(&c, "c", "n1", |_| {}).await.unwrap();
    let sd = h.sandbox(&d, "d", "sealed", |_| {}).await.unwrap();
    http_server_in(&sa.key, 80, "a").await;
    http_server_in(&sd.key, 80, "d").await;
    let ipa = SocketAddr::from((ip_of(&sa, "n1"), 80));
    assert_eq!(http_get(Some(&sc.key), ipa).await.unwrap(), "a");
    assert!(http_get(Some(&sb.key), ipa).await.is_err(), "n2 reached n1");
    // n2's DNS does not know n1's names
    assert!(resolve_in(&sb.key, nameserver(&sb.resolv_conf), "a")
        .await
        .is_err());
    // internal: reachable from the host's own bridge address? no route out; from n1 no
    let ipd = SocketAddr::from((ip_of(&sd, "sealed"), 80));
    assert!(
        http_get(Some(&sa.key), ipd).await.is_err(),
        "n1 reached the internal network"
    );
    assert!(sd.networks["sealed"].gateway.is_some());
    let route = berth_network::netns::run_in(sd.key.clone().into(), || {
        std::fs::read_to_string("/proc/thread-self/net/route")
    })
    .await
    .unwrap();
    assert!(
        !route
            .lines()
            .skip(1)
            .any(|l| l.split('\t').nth(1) == Some("00000000")),
        "internal has a default route: {route}"
    );
    // connect a to n2 as well: now it reaches b
    http_server_in(&sb.key, 80, "b").await;
    let ep = h
        .client
        .endpoint_create(EndpointCreate {
            container_id: a.clone(),
            endpoint: EndpointRequest {
                network: "n2".into(),
                settings: Default::default(),
            },
        })
        .await
        .unwrap();
    let ipb = SocketAddr::from((ip_of(&sb, "n2"), 80));
    assert_eq!(http_get(Some(&sa.key), ipb).await.unwrap(), "b");
    assert!(ep
        .ip_address
        .unwrap()
        .starts_with(&ip_of(&sb, "n2").to_string()[..4]));
    // a resolves b through its first network's DNS (it is on both)
    assert_eq!(
        resolve_in(&sa.key, nameserver(&sa.resolv_conf), "b")
            .await
            .unwrap(),
        vec![ip_of(&sb, "n2")]
    );
    let e = h
        .client
        .endpoint_create(EndpointCreate {
            container_id: a.clone(),
            endpoint: EndpointRequest {
                network: "n2".into(),
                settings: Default::default(),
            },
        })
        .await
        .unwrap_err();
    assert_eq!(e.kind, ErrorKind::Forbidden);
    h.client
        .endpoint_remove(EndpointRemove {
            container_id: a.clone(),
            network: "n2".into(),
        })
        .await
        .unwrap();
    assert!(http_get(Some(&sa.key), ipb).await.is_err());
    h.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn published_ports_answer_from_the_host() {
    require_root!();
    let h = Harness::start().await;
    let a = cid();
    // the host's own address for the non-loopback path
    let host_ip: Ipv4Addr = std::fs::read_to_string("/proc/net/fib_trie")
        .ok()
        .and_then(|_| {
            let o = std::process::Command::new("ip")
                .args(["-4", "-o", "route", "get", "192.0.2.1"])
                .output()
                .ok()?;
            let s = String::from_utf8_lossy(&o.stdout).to_string();
            s.split_whitespace()
                .skip_while(|w| *w != "src")
                .nth(1)?
                .parse()
                .ok()
        })
        .unwrap_or(Ipv4Addr::LOCALHOST);
    let s = h
        .sandbox(&a, "web", "bridge", |r| {
            r.port_bindings = HashMap::from([
                (
                    "80/tcp".into(),
                    Some(vec![docker::PortBinding {
                        host_ip: Some(String::new()),
                        host_port: Some(String::new()),
                    }]),
                ),
                (
                    "81/tcp".into(),
                    Some(vec![docker::PortBinding {
                        host_ip: Some("127.0.0.1".into()),
                        host_port: Some(String::new()),
                    }]),
                ),
            ]);
            r.exposed_ports = vec!["80/tcp".into(), "443/tcp".into()];
        })
        .await
        .unwrap();
    let b80 = s.ports["80/tcp"].as_ref().unwrap()[0].clone();
    assert_eq!(b80.host_ip.as_deref(), Some("0.0.0.0"));
    let p80: u16 = b80.host_port.unwrap().parse().unwrap();
    let p81: u16 = s.ports["81/tcp"].as_ref().unwrap()[0]
        .host_port
        .clone()
        .unwrap()
        .parse()
        .unwrap();
    assert_eq!(s.ports["443/tcp"], None);
    http_server_in(&s.key, 80, "eighty").await;
    http_server_in(&s.key, 81, "eighty-one").await;
    assert_eq!(
        http_get(None, SocketAddr::from((Ipv4Addr::LOCALHOST, p80)))
            .await
            .unwrap(),
        "eighty"
    );
    assert_eq!(
        http_get(None, SocketAddr::from((host_ip, p80)))
            .await
            .unwrap(),
        "eighty"
    );
    assert_eq!(
        http_get(None, SocketAddr::from((Ipv4Addr::LOCALHOST, p81)))
            .await
            .unwrap(),
        "eighty-one"
    );
    // bound to 127.0.0.1 only
    if host_ip != Ipv4Addr::LOCALHOST {
        assert!(http_get(None, SocketAddr::from((host_ip, p81)))
            .await
            .is_err());
    }
    // hairpin: the container reaches its own published port through the host
    let gw: Ipv4Addr = s.networks["bridge"]
        .gateway
        .as_ref()
        .unwrap()
        .parse()
        .unwrap();
    assert_eq!(
        http_get(Some(&s.key), SocketAddr::from((gw, p80)))
            .await
            .unwrap(),
        "eighty"
    );
    // another container on the bridge reaches it through the host too
    let b = cid();
    let sb = h.sandbox(&b, "other", "bridge", |_| {}).await.unwrap();
    assert_eq!(
        http_get(Some(&sb.key), SocketAddr::from((gw, p80)))
            .await
            .unwrap(),
        "eighty"
    );

    // the port is held: other programs cannot take it, another container neither
    assert!(std::net::TcpListener::bind(("0.0.0.0", p80)).is_err());
    let c = cid();
    let e = h
        .sandbox(&c, "clash", "bridge", |r| {
            r.port_bindings = HashMap::from([(
                "80/tcp".into(),
                Some(vec![docker::PortBinding {
                    host_ip: None,
                    host_port: Some(p80.to_string()),
                }]),
            )]);
        })
        .await
        .unwrap_err();
    assert!(
        e.message.ends_with(&format!(
            "Bind for 0.0.0.0:{p80} failed: port is already allocated"
        )),
        "{e}"
    );
    assert!(
        e.message
            .starts_with("driver failed programming external connectivity on endpoint clash"),
        "{e}"
    );
    // the failed start left nothing
    assert!(!h.root().join("network/netns").join(&c).exists());
    assert_eq!(bridge_ports_settled(&h.bridge, 2).len(), 2);
    // a port some program listens on
    let l = std::net::TcpListener::bind(("0.0.0.0", 0)).unwrap();
    let busy = l.local_addr().unwrap().port();
    let e = h
        .sandbox(&c, "clash", "bridge", |r| {
            r.port_bindings = HashMap::from([(
                "80/tcp".into(),
                Some(vec![docker::PortBinding {
                    host_ip: None,
                    host_port: Some(busy.to_string()),
                }]),
            )]);
        })
        .await
        .unwrap_err();
    assert!(e.message.contains("port is already allocated"), "{e}");

    // -P publishes exposed ports on ephemeral ports
    let d = cid();
    let sd = h
        .sandbox(&d, "pub", "bridge", |r| {
            r.publish_all = true;
            r.exposed_ports = vec!["8080/tcp".into(), "53/udp".into()];
        })
        .await
        .unwrap();
    assert!(
        sd.ports["8080/tcp"].as_ref().unwrap()[0]
            .host_port
            .as_ref()
            .unwrap()
            .parse::<u16>()
            .unwrap()
            > 1024
    );
    assert!(sd.ports["53/udp"].is_some());
    let t = nft_table(&h.table()).unwrap();
    assert!(t.contains(&format!("dport {p80} dnat to")), "{t}");

    // removal takes the rules and the ports back
    for x in [&a, &b, &d] {
        h.client
            .sandbox_remove(SandboxRemove {
                container_id: x.clone(),
            })
            .await
            .unwrap();
    }
    h.client
        .sandbox_remove(SandboxRemove {
            container_id: a.clone(),
        })
        .await
        .unwrap();
    let t = nft_table(&h.table()).unwrap();
    assert!(!t.contains("dnat"), "{t}");
    assert!(std::net::TcpListener::bind(("0.0.0.0", p80)).is_ok());
    assert!(bridge_ports_settled(&h.bridge, 0).is_empty());
    h.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn host_none_and_container_modes() {
    require_root!();
    let h = Harness::start().await;
    let (a, b, c, d) = (cid(), cid(), cid(), cid());
    let sh = h
        .sandbox(&a, "h", "host", |r| {
            r.extra_hosts = vec!["db:10.1.2.3".into()]
        })
        .await
        .unwrap();
    assert_eq!(sh.key, "");
    assert!(sh.networks.contains_key("host"));
    assert_eq!(sh.networks["host"].ip_address.as_deref(), Some(""));
    assert_eq!(
        sh.resolv_conf,
        std::fs::read_to_string("/etc/resolv.conf").unwrap()
    );
    assert!(sh.hosts.ends_with("10.1.2.3\tdb\n"), "{}", sh.hosts);
    let sn = h.sandbox(&b, "n", "none", |_| {}).await.unwrap();
    assert!(sn.key.ends_with(&b));
    assert!(sn.networks.contains_key("none"));
    let dev = berth_network::netns::run_in(sn.key.clone().into(), || {
        std::fs::read_to_string("/proc/thread-self/net/dev")
    })
    .await
    .unwrap();
    let ifs: Vec<&str> = dev
        .lines()
        .skip(2)
        .map(|l| l.split(':').next().unwrap().trim())
        .collect();
    assert_eq!(ifs, vec!["lo"]);
    assert!(!sn.hosts.contains(&b[..12]));
    // container:<name> joins another's namespace
    let sb = h.sandbox(&c, "base", "bridge", |_| {}).await.unwrap();
    let sj = h
        .sandbox(&d, "joiner", "container:base", |_| {})
        .await
        .unwrap();
    assert_eq!(sj.key, sb.key);
    assert!(sj.networks.is_empty());
    assert_eq!(sj.hosts, sb.hosts);
    let e = h
        .sandbox(&cid(), "x", "container:nosuch", |_| {})
        .await
        .unwrap_err();
    assert_eq!(e.kind, ErrorKind::Conflict);
    // removing the joiner leaves the base's namespace alone
    h.client
        .sandbox_remove(SandboxRemove {
            container_id: d.clone(),
        })
        .await
        .unwrap();
    assert!(berth_network::netns::is_pinned(Path::new(&sb.key)));
    // host network lists the host-mode container
    let n = h
        .client
        .network_inspect(NetworkInspect {
            id: "host".into(),
            verbose: false,
        })
        .await
        .unwrap();
    assert!(n.containers.unwrap().contains_key(&a));
    // unknown network
    let e = h.sandbox(&cid(), "x", "nosuch", |_| {}).await.unwrap_err();
    assert_eq!(
        (e.kind, e.message.as_str()),
        (ErrorKind::NotFound, "network nosuch not found")
    );
    h.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requested_addresses_and_options() {
    require_root!();
    let h = Harness::start().await;
    h.create_net("fixed", |b| {
        b.ipam = Some(docker::Ipam {
            config: Some(vec![docker::IpamConfig {
                subnet: Some("10.232.0.0/24".into()),
                ..Default::default()
            }]),
            ..Default::default()
        })
    })
    .await;
    let a = cid();
    let ip_req = |ip: &str| EndpointRequest {
        network: "fixed".into(),
        settings: docker::EndpointSettings {
            ipam_config: Some(docker::EndpointIpamConfig {
                ipv4_address: Some(ip.into()),
                ..Default::default()
            }),
            ..Default::default()
        },
    };
    let s = h
        .sandbox(&a, "a", "fixed", |r| {
            r.endpoints = vec![ip_req("10.232.0.50")];
            r.hostname = "myhost".into();
            r.domainname = "example.com".into();
            r.dns = vec!["10.9.9.9".into()];
            r.dns_search = vec!["corp".into()];
            r.extra_hosts = vec!["gw:host-gateway".into()];
        })
        .await
        .unwrap();
    assert_eq!(
        s.networks["fixed"].ip_address.as_deref(),
        Some("10.232.0.50")
    );
    assert_eq!(
        s.networks["fixed"]
            .ipam_config
            .as_ref()
            .unwrap()
            .ipv4_address
            .as_deref(),
        Some("10.232.0.50")
    );
    assert!(
        s.hosts.contains("10.232.0.50\tmyhost.example.com myhost\n"),
        "{}",
        s.hosts
    );
    assert!(s.resolv_conf.contains("search corp"), "{}", s.resolv_conf);
    assert!(
        s.resolv_conf.contains("ExtServers: [10.9.9.9]"),
        "{}",
        s.resolv_conf
    );
    let br = h
        .client
        .network_inspect(NetworkInspect {
            id: "bridge".into(),
            verbose: false,
        })
        .await
        .unwrap();
    let bgw = br.ipam.unwrap().config.unwrap()[0].gateway.clone().unwrap();
    assert!(s.hosts.contains(&format!("{bgw}\tgw\n")), "{}", s.hosts);
    // the same address again: refused, nothing left behind
    let b = cid();
    let e = h
        .sandbox(&b, "b", "fixed", |r| {
            r.endpoints = vec![ip_req("10.232.0.50")]
        })
        .await
        .unwrap_err();
    assert_eq!(e.message, "Address already in use");
    let e = h
        .sandbox(&b, "b", "fixed", |r| {
            r.endpoints = vec![ip_req("10.99.0.5")]
        })
        .await
        .unwrap_err();
    assert_eq!(e.kind, ErrorKind::InvalidArgument);
    assert!(!h.root().join("network/netns").join(&b).exists());
    // --ip on a network without a user subnet, or the default bridge
    let e = h
        .sandbox(&b, "b", "bridge", |r| {
            r.endpoints = vec![EndpointRequest {
                network: "bridge".into(),
                settings: ip_req("10.1.1.1").settings,
            }]
        })
        .await
        .unwrap_err();
    assert_eq!(
        e.message,
        "user specified IP address is supported on user defined networks only"
    );
    assert_eq!(h.svc().dns().sandbox_count(), 1);
    h.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restart_after_a_crash_reconciles() {
    require_root!();
    let mut h = Harness::start().await;
    h.create_net("app", |_| {}).await;
    let (a, b, c) = (cid(), cid(), cid());
    let sa = h
        .sandbox(&a, "web", "app", |r| {
            r.port_bindings = HashMap::from([(
                "80/tcp".into(),
                Some(vec![docker::PortBinding {
                    host_ip: None,
                    host_port: None,
                }]),
            )]);
        })
        .await
        .unwrap();
    let sb = h.sandbox(&b, "cli", "app", |_| {}).await.unwrap();
    let sc = h.sandbox(&c, "gone", "app", |_| {}).await.unwrap();
    let port: u16 = sa.ports["80/tcp"].as_ref().unwrap()[0]
        .host_port
        .clone()
        .unwrap()
        .parse()
        .unwrap();
    http_server_in(&sa.key, 80, "still here").await;
    let app = h
        .client
        .network_inspect(NetworkInspect {
            id: "app".into(),
            verbose: false,
        })
        .await
        .unwrap();
    let br = format!("br-{}", &app.id.unwrap()[..12]);

    h.crash().await;
    // while it is down: a container's namespace disappears, a stray veth appears on
    // our bridge, a stray rule in our table
    berth_network::netns::remove(Path::new(&sc.key)).unwrap();
    let stray = format!("vs{}", hex(6));
    let st = std::process::Command::new("ip")
        .args([
            "link",
            "add",
            &stray,
            "type",
            "veth",
            "peer",
            "name",
            &format!("{stray}p"),
        ])
        .status()
        .unwrap();
    assert!(st.success());
    std::process::Command::new("ip")
        .args(["link", "set", &stray, "master", &br])
        .status()
        .unwrap();
    std::process::Command::new("nft")
        .args([
            "add",
            "rule",
            "ip",
            &h.table(),
            "publish",
            "tcp",
            "dport",
            "1",
            "dnat",
            "to",
            "10.0.0.1:1",
        ])
        .status()
        .unwrap();
    // the port is free while nobody holds it
    let cfg = h.config();
    h.boot(cfg).await;

    // the stray veth and rule are gone, the dead sandbox is dropped, the live ones work
    assert!(
        !bridge_ports(&br).contains(&stray),
        "{:?}",
        bridge_ports(&br)
    );
    let t = nft_table(&h.table()).unwrap();
    assert!(!t.contains("10.0.0.1"), "{t}");
    assert!(t.contains(&format!("dport {port} dnat to")), "{t}");
    assert!(
        std::net::TcpListener::bind(("0.0.0.0", port)).is_err(),
        "port not held again"
    );
    assert_eq!(
        http_get(None, SocketAddr::from((Ipv4Addr::LOCALHOST, port)))
            .await
            .unwrap(),
        "still here"
    );
    let ns = nameserver(&sb.resolv_conf);
    assert_eq!(
        resolve_in(&sb.key, ns, "web").await.unwrap(),
        vec![ip_of(&sa, "app")]
    );
    assert!(resolve_in(&sb.key, ns, "gone").await.is_err());
    let n = h
        .client
        .network_inspect(NetworkInspect {
            id: "app".into(),
            verbose: false,
        })
        .await
        .unwrap();
    assert!(!n.containers.unwrap().contains_key(&c));
    assert_eq!(bridge_ports_settled(&br, 2).len(), 2);
    h.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hundred_sandboxes_with_ports_leave_nothing() {
    require_root!();
    let h = Harness::start().await;
    h.create_net("many", |_| {}).await;
    let t0 = std::time::Instant::now();
    let mut ids = Vec::new();
    for i in 0..100 {
        let id = cid();
        let mode = if i % 2 == 0 { "bridge" } else { "many" };
        h.sandbox(&id, &format!("c{i}"), mode, |r| {
            r.port_bindings = HashMap::from([(
                "80/tcp".into(),
                Some(vec![docker::PortBinding {
                    host_ip: None,
                    host_port: None,
                }]),
            )]);
        })
        .await
        .unwrap();
        ids.push(id);
    }
    let created = t0.elapsed();
    let t = nft_table(&h.table()).unwrap();
    assert_eq!(t.matches("dnat to").count(), 100);
    let t1 = std::time::Instant::now();
    for id in &ids {
        h.client
            .sandbox_remove(SandboxRemove {
                container_id: id.clone(),
            })
            .await
            .unwrap();
    }
    let removed = t1.elapsed();
    eprintln!(
        "100 sandboxes with a published port: created in {created:?}, removed in {removed:?}"
    );
    let t = nft_table(&h.table()).unwrap();
    assert!(!t.contains("dnat"), "{t}");
    assert!(bridge_ports_settled(&h.bridge, 0).is_empty());
    let many = h
        .client
        .network_inspect(NetworkInspect {
            id: "many".into(),
            verbose: false,
        })
        .await
        .unwrap();
    assert!(bridge_ports_settled(&format!("br-{}", &many.id.unwrap()[..12]), 0).is_empty());
    assert!(std::fs::read_dir(h.root().join("network/netns"))
        .unwrap()
        .next()
        .is_none());
    assert!(std::fs::read_dir(h.root().join("network/sandboxes"))
        .unwrap()
        .next()
        .is_none());
    assert_eq!(h.svc().dns().sandbox_count(), 0);
    let veths = std::fs::read_dir("/sys/class/net")
        .unwrap()
        .flatten()
        .filter(|e| {
            std::fs::read_link(e.path().join("master"))
                .map(|m| m.ends_with(&h.bridge))
                .unwrap_or(false)
        })
        .count();
    assert_eq!(veths, 0);
    h.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_default_bridge_skips_subnets_the_host_routes() {
    require_root!();
    // Another engine owns a bridge with the first free default pool subnet; the
    // default bridge must pick another one.
    let routed = berth_network::ipam::host_routes();
    let taken =
        berth_network::ipam::pick_subnet(&berth_network::ipam::default_pools(), &[], &routed)
            .unwrap();
    let other = format!("dk{}", hex(8));
    assert!(std::process::Command::new("ip")
        .args(["link", "add", &other, "type", "bridge"])
        .status()
        .unwrap()
        .success());
    let gw = format!(
        "{}/{}",
        berth_network::ipam::first_host(&taken),
        taken.prefix_len()
    );
    std::process::Command::new("ip")
        .args(["addr", "add", &gw, "dev", &other])
        .status()
        .unwrap();
    std::process::Command::new("ip")
        .args(["link", "set", &other, "up"])
        .status()
        .unwrap();
    struct Del(String);
    impl Drop for Del {
        fn drop(&mut self) {
            let _ = std::process::Command::new("ip")
                .args(["link", "del", &self.0])
                .status();
        }
    }
    let _d = Del(other.clone());
    let h = Harness::start().await;
    let br = h
        .client
        .network_inspect(NetworkInspect {
            id: "bridge".into(),
            verbose: false,
        })
        .await
        .unwrap();
    let sub: ipnet::Ipv4Net = br.ipam.unwrap().config.unwrap()[0]
        .subnet
        .clone()
        .unwrap()
        .parse()
        .unwrap();
    assert!(
        !berth_network::ipam::overlaps(&sub, &taken),
        "picked {sub}, which {other} routes"
    );
    // the other bridge is untouched
    assert!(Path::new(&format!("/sys/class/net/{other}")).exists());
    h.finish().await;
    assert!(Path::new(&format!("/sys/class/net/{other}")).exists());
}
