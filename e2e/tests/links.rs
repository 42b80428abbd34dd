//! Legacy links on the default bridge (`docker run --link`), through the real docker
//! CLI against `berth up`, with Moby 20.10's answers (recorded by hand on dockerd
//! 20.10.24 with its own bridge): the environment, /etc/hosts, the link name in
//! `ps` and inspect, `rm --link`, and the errors for a target that is not there or
//! not running.

use berth_e2e::fixtures::node_with_busybox;
use berth_e2e::{http, require_root};

fn err(o: &std::process::Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

#[test]
fn legacy_links_on_the_default_bridge() {
    require_root!();
    let (node, _reg, img) = node_with_busybox();
    node.docker_ok(&[
        "run", "-d", "--name", "child", "-e", "FOO=1", "-e", "HOME=/x", "--expose", "80", "--expose", "81/udp", "--expose",
        "80/udp", "--expose", "443", &img, "sleep", "300",
    ]);
    let ip = node.docker_ok(&["inspect", "child", "--format", "{{.NetworkSettings.IPAddress}}"]).trim().to_string();
    let child_host = node.docker_ok(&["inspect", "child", "--format", "{{.Config.Hostname}}"]).trim().to_string();
    assert!(!ip.is_empty());

    // the environment, in Moby's order (after PATH and HOSTNAME, before the
    // container's own), as `env` prints it
    let out = node.docker_ok(&["run", "--name", "parent", "--link", "child:my-al", "-e", "OWN=1", &img, "env"]);
    let lines: Vec<&str> = out.lines().collect();
    assert!(lines[0].starts_with("PATH=") && lines[1].starts_with("HOSTNAME="), "{out}");
    let linked: Vec<String> = lines.iter().filter(|l| l.starts_with("MY_AL_")).map(|l| l.to_string()).collect();
    let want = "MY_AL_PORT=tcp://IP:80
MY_AL_PORT_80_TCP_START=tcp://IP:80
MY_AL_PORT_80_TCP_ADDR=IP
MY_AL_PORT_80_TCP_PROTO=tcp
MY_AL_PORT_80_TCP_PORT_START=80
MY_AL_PORT_80_UDP_END=udp://IP:81
MY_AL_PORT_80_UDP_PORT_END=81
MY_AL_PORT_80_TCP=tcp://IP:80
MY_AL_PORT_80_TCP_ADDR=IP
MY_AL_PORT_80_TCP_PORT=80
MY_AL_PORT_80_TCP_PROTO=tcp
MY_AL_PORT_80_UDP=udp://IP:80
MY_AL_PORT_80_UDP_ADDR=IP
MY_AL_PORT_80_UDP_PORT=80
MY_AL_PORT_80_UDP_PROTO=udp
MY_AL_PORT_81_UDP=udp://IP:81
MY_AL_PORT_81_UDP_ADDR=IP
MY_AL_PORT_81_UDP_PORT=81
MY_AL_PORT_81_UDP_PROTO=udp
MY_AL_PORT_443_TCP=tcp://IP:443
MY_AL_PORT_443_TCP_ADDR=IP
MY_AL_PORT_443_TCP_PORT=443
MY_AL_PORT_443_TCP_PROTO=tcp
MY_AL_NAME=/parent/my-al
MY_AL_ENV_FOO=1"
        .replace("IP", &ip);
    assert_eq!(linked.join("\n"), want, "{out}");
    let first_link = lines.iter().position(|l| l.starts_with("MY_AL_")).unwrap();
    let own = lines.iter().position(|l| *l == "OWN=1").unwrap();
    assert!(first_link == 2 && own > first_link, "{out}");

    // a running parent: /etc/hosts, the alias and the name answer, exec sees the
    // variables too
    node.docker_ok(&["run", "-d", "--name", "web", "--link", "child:db", &img, "sleep", "300"]);
    let hosts = node.docker_ok(&["exec", "web", "cat", "/etc/hosts"]);
    assert!(hosts.contains(&format!("\n{ip}\tdb {child_host} child\n")), "{hosts}");
    node.docker_ok(&["exec", "web", "ping", "-c", "1", "-W", "3", "db"]);
    node.docker_ok(&["exec", "web", "ping", "-c", "1", "-W", "3", "child"]);
    let env = node.docker_ok(&["exec", "web", "env"]);
    assert!(env.contains("DB_NAME=/web/db\n") && env.contains("DB_ENV_FOO=1\n"), "{env}");

    // the link names name the child: ps lists them, inspect of the parent shows them
    let names = node.docker_ok(&["ps", "-a", "--no-trunc", "--filter", "name=child", "--format", "{{.Names}}"]);
    assert_eq!(names.trim(), "child,parent/my-al,web/db");
    let links = node.docker_ok(&["inspect", "web", "--format", "{{json .HostConfig.Links}}"]);
    assert_eq!(links.trim(), "[\"/child:/web/db\"]");
    let links = node.docker_ok(&["inspect", "child", "--format", "{{json .HostConfig.Links}}"]);
    assert_eq!(links.trim(), "null");
    // a link name finds the child
    let named = node.docker_ok(&["inspect", "web/db", "--format", "{{.Name}}"]);
    assert_eq!(named.trim(), "/child");
    // a rename of the parent moves its link names
    node.docker_ok(&["rename", "parent", "parent2"]);
    let names = node.docker_ok(&["ps", "-a", "--no-trunc", "--filter", "name=child", "--format", "{{.Names}}"]);
    assert_eq!(names.trim(), "child,parent2/my-al,web/db");

    // `rm --link`: the link goes, both containers stay
    node.docker_ok(&["rm", "--link", "/web/db"]);
    let names = node.docker_ok(&["ps", "-a", "--no-trunc", "--filter", "name=child", "--format", "{{.Names}}"]);
    assert_eq!(names.trim(), "child,parent2/my-al");
    let links = node.docker_ok(&["inspect", "web", "--format", "{{json .HostConfig.Links}}"]);
    assert_eq!(links.trim(), "null");
    // gone from the running parent's /etc/hosts and environment too (as Moby's refresh)
    let hosts = node.docker_ok(&["exec", "web", "cat", "/etc/hosts"]);
    assert!(!hosts.contains("\tdb "), "{hosts}");
    let env = node.docker_ok(&["exec", "web", "env"]);
    assert!(!env.contains("DB_NAME="), "{env}");
    let a = http(&node.sock, "DELETE", "/v1.41/containers/web/db?link=1", &[], None);
    assert_eq!((a.status, a.json()["message"].as_str().unwrap()), (404, "No such container: web/db"));
    let a = http(&node.sock, "DELETE", "/v1.41/containers/child?link=1", &[], None);
    assert_eq!(
        (a.status, a.json()["message"].as_str().unwrap()),
        (500, "Conflict, cannot remove the default link name of the container")
    );

    // create: the target must be there; host networking refuses links
    let body = r#"{"Image":"IMG","HostConfig":{"Links":["nope:x"]}}"#.replace("IMG", &img);
    let a = http(&node.sock, "POST", "/v1.41/containers/create", &[], Some(&body));
    assert_eq!((a.status, a.json()["message"].as_str().unwrap()), (400, "could not get container for nope: No such container: nope"));
    let body = r#"{"Image":"IMG","HostConfig":{"NetworkMode":"host","Links":["child:x"]}}"#.replace("IMG", &img);
    let a = http(&node.sock, "POST", "/v1.41/containers/create", &[], Some(&body));
    assert_eq!(a.status, 400);
    assert_eq!(
        a.json()["message"],
        "conflicting options: host type networking can't be used with links. This would result in undefined behavior"
    );

    // start: the target must run
    node.docker_ok(&["create", "--name", "late", "--link", "child:al", &img, "true"]);
    node.docker_ok(&["stop", "-t", "0", "child"]);
    let o = node.docker(&["start", "late"]);
    assert!(!o.status.success());
    assert!(err(&o).contains("Error response from daemon: Cannot link to a non running container: /child AS /late/al"), "{}", err(&o));
    let st = node.docker_ok(&["inspect", "late", "--format", "{{.State.Status}} {{.State.ExitCode}} {{.State.Error}}"]);
    assert_eq!(st.trim(), "created 128 Cannot link to a non running container: /child AS /late/al");
    // running again: the start goes through
    node.docker_ok(&["start", "child"]);
    node.docker_ok(&["start", "-a", "late"]);
    // a removed target: the parent keeps the link and cannot start (as Moby)
    node.docker_ok(&["rm", "-f", "child"]);
    let links = node.docker_ok(&["inspect", "late", "--format", "{{json .HostConfig.Links}}"]);
    assert_eq!(links.trim(), "[\"/child:/late/al\"]");
    let o = node.docker(&["start", "late"]);
    assert!(err(&o).contains("Cannot link to a non running container: /child AS /late/al"), "{}", err(&o));
    node.docker_ok(&["rm", "-f", "parent2", "web", "late"]);
}
