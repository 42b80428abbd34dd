//! The API over TCP with TLS as dockerd serves it (issue 17: daemon.json's `tls*`):
//! `tlscert`/`tlskey` with `tlsverify` and `tlscacert` answer a docker CLI that shows a
//! client certificate of that CA (`docker --tlsverify`), refuse one that shows none or
//! one of another CA; a `tcp://` host without TLS stops the start naming it.

use berth_e2e::{free_port, is_root, Node, NodeOpts};
use std::path::Path;
use std::process::Command;

fn openssl(dir: &Path, args: &[&str]) {
    let o = Command::new("openssl").current_dir(dir).args(args).output().expect("openssl");
    assert!(o.status.success(), "openssl {args:?}: {}", String::from_utf8_lossy(&o.stderr));
}

/// A CA (`<name>-ca.pem`), and a certificate of it for `cn` with `ext` (`<cn>.pem`,
/// `<cn>-key.pem`).
fn ca_and_cert(dir: &Path, ca: &str, cn: &str, ext: &str) {
    if !dir.join(format!("{ca}-ca.pem")).exists() {
        openssl(dir, &["req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj", &format!("/CN={ca}"), "-keyout", &format!("{ca}-ca-key.pem"), "-out", &format!("{ca}-ca.pem")]);
    }
    std::fs::write(dir.join(format!("{cn}.ext")), ext).unwrap();
    openssl(dir, &["req", "-newkey", "rsa:2048", "-nodes", "-subj", &format!("/CN={cn}"), "-keyout", &format!("{cn}-key.pem"), "-out", &format!("{cn}.csr")]);
    openssl(dir, &["x509", "-req", "-in", &format!("{cn}.csr"), "-CA", &format!("{ca}-ca.pem"), "-CAkey", &format!("{ca}-ca-key.pem"), "-CAcreateserial", "-days", "2", "-extfile", &format!("{cn}.ext"), "-out", &format!("{cn}.pem")]);
}

fn docker(dir: &Path, host: &str, tls: &[String]) -> std::process::Output {
    Command::new("docker")
        .env_remove("DOCKER_HOST")
        .env("DOCKER_CONFIG", dir)
        .args(["-H", host])
        .args(tls)
        .args(["version", "--format", "{{.Server.Os}}"])
        .output()
        .unwrap()
}

#[test]
fn the_api_over_tcp_with_tls_verifies_clients() {
    assert!(is_root(), "this test needs root");
    let d = tempfile::tempdir().unwrap();
    let p = d.path();
    ca_and_cert(p, "berth", "server", "subjectAltName=IP:127.0.0.1\nextendedKeyUsage=serverAuth\n");
    ca_and_cert(p, "berth", "client", "extendedKeyUsage=clientAuth\n");
    ca_and_cert(p, "other", "stranger", "extendedKeyUsage=clientAuth\n");
    let port = free_port();
    let host = format!("tcp://127.0.0.1:{port}");
    let f = |n: &str| p.join(n).display().to_string();
    let mut config = serde_json::Map::new();
    config.insert("tlsverify".into(), true.into());
    config.insert("tlscacert".into(), f("berth-ca.pem").into());
    config.insert("tlscert".into(), f("server.pem").into());
    config.insert("tlskey".into(), f("server-key.pem").into());
    let node = Node::start_opts(NodeOpts { config, hosts: vec![host.clone()], ..Default::default() });

    let with = |cert: &str, key: &str| {
        vec!["--tlsverify".into(), format!("--tlscacert={}", f("berth-ca.pem")), format!("--tlscert={}", f(cert)), format!("--tlskey={}", f(key))]
    };
    let o = docker(p, &host, &with("client.pem", "client-key.pem"));
    assert!(o.status.success(), "a client of the CA is refused: {}", String::from_utf8_lossy(&o.stderr));
    assert_eq!(String::from_utf8_lossy(&o.stdout).trim(), "linux");
    // the unix socket answers as before
    node.docker_ok(&["version"]);

    // no client certificate: the handshake fails (dockerd: "remote error: tls: bad certificate")
    let o = docker(p, &host, &["--tlsverify".into(), format!("--tlscacert={}", f("berth-ca.pem"))]);
    assert!(!o.status.success(), "a client without a certificate got an answer");
    // a certificate of another CA
    let o = docker(p, &host, &with("stranger.pem", "stranger-key.pem"));
    assert!(!o.status.success(), "a client of another CA got an answer");
    // plain HTTP to the TLS port gets no API answer
    let o = docker(p, &host, &[]);
    assert!(!o.status.success() || String::from_utf8_lossy(&o.stdout).trim() != "linux", "plain HTTP got an answer");
}

#[test]
fn a_tcp_host_without_tls_stops_the_start_naming_it() {
    assert!(is_root(), "this test needs root");
    let host = format!("tcp://127.0.0.1:{}", free_port());
    let err = Node::start_failing(NodeOpts { hosts: vec![host.clone()], ..Default::default() }).expect("berth up listened on TCP without TLS");
    assert!(err.contains(&format!("refusing to listen on {host} without TLS")), "{err}");
}
