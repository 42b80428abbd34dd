//! Legacy links on the default bridge (`docker run --link child:alias`), as Moby 20.10
//! keeps them: registered at create (the child must exist; the link name
//! `/<parent>/<alias>` then names the child too: `docker ps` lists it, lookups find
//! the child by it), applied at every start of the parent (the child must run: its
//! address, ports and environment go into the parent's environment, its names into the
//! parent's /etc/hosts), removed by `DELETE /containers/<parent>/<alias>?link=1`.
//! The links live in the parent's record; the names in the runtime's name index.
//! On a user-defined network a link is an alias of the endpoint's DNS (create.rs).

use bus_schema::{docker, BusError, ErrorKind};

use crate::engine::Runtime;
use crate::state::{Container, Link};

/// Moby's `opts.ParseLink`: `name`, `name:alias`, or `/name:/parent/alias` as
/// inspect shows links (its alias is the last part).
pub fn parse(l: &str) -> Result<(String, String), BusError> {
    if l.is_empty() {
        return Err(BusError::internal("empty string specified for links"));
    }
    let parts: Vec<&str> = l.split(':').collect();
    match parts.as_slice() {
        [one] => Ok((one.trim_start_matches('/').to_string(), one.trim_start_matches('/').to_string())),
        [name, alias] => match name.strip_prefix('/') {
            Some(n) => Ok((n.to_string(), alias.rsplit('/').next().unwrap_or_default().to_string())),
            None => Ok((name.to_string(), alias.to_string())),
        },
        _ => Err(BusError::internal(format!("bad format for links: {l}"))),
    }
}

/// Whether a container is on the default bridge (Moby's `isLinkable`): running, by the
/// networks it has; otherwise by those it asks for.
fn on_default_bridge(c: &Container) -> bool {
    if c.state.running() {
        return c.networks.contains_key("bridge");
    }
    (c.network_mode() == "bridge" && !c.mode_network_detached) || c.endpoints.contains_key("bridge")
}

/// Whether `--link` is a legacy link for this mode (user-defined networks make it a
/// DNS alias; host and container modes are refused at create).
fn legacy_mode(hc: &docker::HostConfig) -> bool {
    let mode = hc.network_mode.as_deref().unwrap_or_default();
    matches!(mode, "" | "default" | "bridge" | "none" | "host") || mode.starts_with("container:")
}

/// What a parent's links give its start: environment and /etc/hosts entries.
#[derive(Debug, Default, PartialEq)]
pub struct LinkPlan {
    /// After PATH, HOSTNAME and TERM, before the container's own (Moby's order).
    pub env: Vec<String>,
    /// `names:ip` entries for /etc/hosts, after the `--add-host` ones.
    pub hosts: Vec<String>,
}

/// An exposed port (`80/tcp`), as Moby's `nat.Port` gives it.
struct Port<'a> {
    port: &'a str,
    proto: &'a str,
    num: u32,
}

fn ports(exposed: &[String]) -> Vec<Port<'_>> {
    let mut v: Vec<Port> = exposed
        .iter()
        .map(|p| {
            let (port, proto) = p.split_once('/').unwrap_or((p.as_str(), "tcp"));
            Port { port, proto, num: port.parse().unwrap_or(0) }
        })
        .collect();
    // by number, tcp first of one number (Moby's nat.Sort with its `less`)
    v.sort_by_key(|p| (p.num, !p.proto.eq_ignore_ascii_case("tcp"), p.proto.to_string()));
    v
}

/// Moby's `nextContiguous`: the last index of the run of ports from `index` on
/// whose numbers go up by at most one (one number in two protocols counts).
fn next_contiguous(ports: &[Port], mut value: u32, index: usize) -> usize {
    if index + 1 == ports.len() {
        return index;
    }
    for (i, p) in ports.iter().enumerate().skip(index + 1) {
        if p.num > value + 1 {
            return i - 1;
        }
        value += 1;
    }
    ports.len() - 1
}

/// The environment a link gives, as Moby's `links.Link.ToEnv`: `<ALIAS>_PORT` (the
/// lowest port), the `_START`/`_END` of contiguous runs, every port's URL, address,
/// number and protocol, `<ALIAS>_NAME`, and the child's environment as
/// `<ALIAS>_ENV_<KEY>` (HOME and PATH left out).
pub fn to_env(link_name: &str, child_ip: &str, child_env: &[String], exposed: &[String]) -> Vec<String> {
    let last = link_name.rsplit('/').next().unwrap_or(link_name);
    let a = last.to_uppercase().replace('-', "_");
    let ports = ports(exposed);
    let mut env = Vec::new();
    if let Some(p) = ports.first() {
        env.push(format!("{a}_PORT={}://{child_ip}:{}", p.proto, p.port));
    }
    let mut i = 0;
    while i < ports.len() {
        let p = &ports[i];
        let j = next_contiguous(&ports, p.num, i);
        if j > i + 1 {
            let (pp, up) = (p.port, p.proto.to_uppercase());
            env.push(format!("{a}_PORT_{pp}_{up}_START={}://{child_ip}:{pp}", p.proto));
            env.push(format!("{a}_PORT_{pp}_{up}_ADDR={child_ip}"));
            env.push(format!("{a}_PORT_{pp}_{up}_PROTO={}", p.proto));
            env.push(format!("{a}_PORT_{pp}_{up}_PORT_START={pp}"));
            let q = &ports[j];
            let uq = q.proto.to_uppercase();
            env.push(format!("{a}_PORT_{pp}_{uq}_END={}://{child_ip}:{}", q.proto, q.port));
            env.push(format!("{a}_PORT_{pp}_{uq}_PORT_END={}", q.port));
            i = j + 1;
        } else {
            i += 1;
        }
    }
    for p in &ports {
        let (pp, up) = (p.port, p.proto.to_uppercase());
        env.push(format!("{a}_PORT_{pp}_{up}={}://{child_ip}:{pp}", p.proto));
        env.push(format!("{a}_PORT_{pp}_{up}_ADDR={child_ip}"));
        env.push(format!("{a}_PORT_{pp}_{up}_PORT={pp}"));
        env.push(format!("{a}_PORT_{pp}_{up}_PROTO={}", p.proto));
    }
    env.push(format!("{a}_NAME={link_name}"));
    for kv in child_env {
        let Some((k, v)) = kv.split_once('=') else { continue };
        if k == "HOME" || k == "PATH" {
            continue;
        }
        env.push(format!("{a}_ENV_{k}={v}"));
    }
    env
}

/// `could not get container for X: <why>`, an invalid parameter when X is not there
/// (Moby says so, or clients would report a missing image).
fn target_error(prefix: &str, name: &str, e: BusError) -> BusError {
    let msg = format!("{prefix} {name}: {}", e.message);
    if e.is(ErrorKind::NotFound) {
        BusError::invalid(msg)
    } else {
        BusError { message: msg, ..e }
    }
}

impl<D: crate::deps::Deps> Runtime<D> {
    /// Moby's `registerLinks` at create: each target must exist (a container whose
    /// network is another container's stands for that one) and not use the host's
    /// network; its link name is reserved for it (a name another container holds
    /// already is skipped, as Moby skips it). The caller gives the names back with
    /// [`Runtime::release_links`] if the create fails after.
    pub(crate) fn register_links(&self, parent: &str, hc: &docker::HostConfig) -> Result<Vec<Link>, BusError> {
        let mut out: Vec<Link> = Vec::new();
        if !legacy_mode(hc) {
            return Ok(out);
        }
        let parsed = hc.links.iter().flatten().map(|l| parse(l)).collect::<Result<Vec<_>, _>>()?;
        let mut targets = Vec::new();
        for (name, alias) in parsed {
            if name.is_empty() {
                return Err(BusError::invalid("could not get container for : invalid name or ID supplied: \"\""));
            }
            let mut child = self.find(&name).map_err(|e| target_error("could not get container for", &name, e))?.get();
            // a chain of `container:` modes ends at the container that has the network
            for _ in 0..16 {
                let Some(other) = child.host_config.network_mode.as_deref().and_then(|m| m.strip_prefix("container:")) else { break };
                let other = other.to_string();
                child = self.find(&other).map_err(|e| target_error("Could not get container for", &other, e))?.get();
            }
            if child.network_mode() == "host" {
                return Err(BusError::invalid(HOST_AND_LINKS));
            }
            targets.push((alias, child));
        }
        for (alias, child) in targets {
            let alias = alias.trim_start_matches('/').to_string();
            // `x:` links the parent's own name: Moby finds it taken and skips it
            if alias.is_empty() || out.iter().any(|l| l.alias == alias) {
                continue;
            }
            match self.reserve_name(&format!("{parent}/{alias}"), &child.id) {
                Ok(()) => out.push(Link { alias, child: child.id.clone(), child_name: child.name.clone() }),
                Err(e) => tracing::warn!(parent, alias = %alias, error = %e, "link name taken; link ignored"),
            }
        }
        Ok(out)
    }

    /// Give back the link names of `parent`'s links.
    pub(crate) fn release_links(&self, parent: &str, links: &[Link]) {
        for l in links {
            self.release_name(&format!("{parent}/{}", l.alias), &l.child);
        }
    }

    /// Reserve the link names of a recorded parent whose children are there (at load,
    /// after a rename).
    pub(crate) fn restore_links(&self, c: &Container) {
        for l in &c.links {
            if self.find(&l.child).is_ok_and(|e| e.id == l.child) {
                let _ = self.reserve_name(&format!("{}/{}", c.name, l.alias), &l.child);
            }
        }
    }

    /// HostConfig.Links as inspect shows them: `/<child>:/<parent>/<alias>`, null
    /// without links.
    pub(crate) fn links_view(&self, c: &Container) -> Option<Vec<String>> {
        let v: Vec<String> = c
            .links
            .iter()
            .map(|l| {
                let child = self.find(&l.child).ok().filter(|e| e.id == l.child).map(|e| e.get().name);
                format!("/{}:/{}/{}", child.as_deref().unwrap_or(&l.child_name), c.name, l.alias)
            })
            .collect();
        (!v.is_empty()).then_some(v)
    }

    /// What the parent's links give a start or an exec (Moby's buildSandboxOptions and
    /// setupLinkedContainers): every child on the default bridge, then running. Only
    /// for a parent on the default bridge.
    pub(crate) fn link_plan(&self, c: &Container) -> Result<LinkPlan, BusError> {
        let mut plan = LinkPlan::default();
        if c.links.is_empty() || !on_default_bridge(c) {
            return Ok(plan);
        }
        let children: Vec<(&Link, Option<Container>)> = c
            .links
            .iter()
            .map(|l| (l, self.find(&l.child).ok().filter(|e| e.id == l.child).map(|e| e.get())))
            .collect();
        for (_, child) in &children {
            if let Some(ch) = child.as_ref().filter(|ch| !on_default_bridge(ch)) {
                return Err(BusError::internal(format!(
                    "Cannot link to /{}, as it does not belong to the default network",
                    ch.name
                )));
            }
        }
        for (l, child) in &children {
            let link_name = format!("/{}/{}", c.name, l.alias);
            let ch = match child {
                Some(ch) if ch.state.running() => ch,
                _ => {
                    let name = child.as_ref().map(|ch| ch.name.as_str()).unwrap_or(&l.child_name);
                    return Err(BusError::internal(format!(
                        "Cannot link to a non running container: /{name} AS {link_name}"
                    )));
                }
            };
            let Some(ep) = ch.networks.get("bridge") else {
                return Err(BusError::internal(format!("container {} not attached to default bridge network", ch.id)));
            };
            let ip = ep.ip_address.clone().unwrap_or_default();
            plan.env.extend(to_env(
                &link_name,
                &ip,
                ch.config.env.as_deref().unwrap_or_default(),
                ch.config.exposed_ports.as_deref().unwrap_or_default(),
            ));
            // the alias, the child's hostname, and its name unless that is the alias
            let mut names = format!("{} {}", l.alias, ch.config.hostname.as_deref().unwrap_or_default());
            if l.alias != ch.name {
                names = format!("{names} {}", ch.name);
            }
            for addr in [Some(ip), ep.global_ipv6_address.clone()].into_iter().flatten().filter(|a| !a.is_empty()) {
                plan.hosts.push(format!("{names}:{addr}"));
            }
        }
        Ok(plan)
    }

    /// `DELETE /containers/<parent>/<alias>?link=1` (Moby's rmLink): the link name
    /// is given back and the parent loses the link; both containers stay.
    pub async fn remove_link(&self, key: &str) -> Result<(), BusError> {
        let e = self.find(key)?;
        let name = key.trim_start_matches('/');
        let Some((parent, alias)) = name.rsplit_once('/') else {
            return Err(BusError::internal("Conflict, cannot remove the default link name of the container"));
        };
        let p = self
            .find_name(parent)
            .ok_or_else(|| BusError::internal(format!("Cannot get parent /{parent} for link name /{name}")))?;
        self.release_name(name, &e.id);
        let had = p.update(|pc| {
            let n = pc.links.len();
            pc.links.retain(|l| !(l.alias == alias && l.child == e.id));
            n != pc.links.len()
        });
        if had {
            p.save()?;
            // a running parent's /etc/hosts loses the link's line (Moby refreshes the
            // sandbox); written in place, the file is bound into the container
            let pc = p.get();
            if pc.state.running() {
                let host = e.get().config.hostname.unwrap_or_default();
                if let Ok(text) = std::fs::read_to_string(&pc.hosts_path) {
                    let kept = without_link_line(&text, alias, &host);
                    if kept != text {
                        let _ = std::fs::write(&pc.hosts_path, kept);
                    }
                }
            }
        }
        Ok(())
    }
}

/// A hosts file without the lines of a link (`<ip>\t<alias> <hostname>[ <name>]`).
fn without_link_line(text: &str, alias: &str, hostname: &str) -> String {
    let head = format!("{alias} {hostname}");
    text.split_inclusive('\n')
        .filter(|l| {
            let names = l.split_once('\t').map(|(_, n)| n.trim_end()).unwrap_or_default();
            !(names == head || names.starts_with(&format!("{head} ")))
        })
        .collect()
}

pub const HOST_AND_LINKS: &str =
    "conflicting options: host type networking can't be used with links. This would result in undefined behavior";
pub const CONTAINER_AND_LINKS: &str =
    "conflicting options: container type network can't be used with links. This would result in undefined behavior";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_removed_link_leaves_the_hosts_file() {
        let t = "127.0.0.1\tlocalhost\n10.0.0.2\tdb abc child\n10.0.0.2\tdbx abc child\n10.0.0.3\tweb\n";
        assert_eq!(without_link_line(t, "db", "abc"), "127.0.0.1\tlocalhost\n10.0.0.2\tdbx abc child\n10.0.0.3\tweb\n");
    }

    #[test]
    fn parses_like_moby() {
        assert_eq!(parse("db").unwrap(), ("db".into(), "db".into()));
        assert_eq!(parse("db:store").unwrap(), ("db".into(), "store".into()));
        assert_eq!(parse("/db:/web/store").unwrap(), ("db".into(), "store".into()));
        assert_eq!(parse("").unwrap_err().message, "empty string specified for links");
        assert_eq!(parse("a:b:c").unwrap_err().message, "bad format for links: a:b:c");
    }

    /// Moby 20.10's answer for `--link child:my-al` to a child with
    /// `-e FOO=1 -e HOME=/x --expose 80 --expose 81/udp --expose 80/udp --expose 443`
    /// (its spec's env, in order).
    #[test]
    fn env_as_moby_writes_it() {
        let exposed: Vec<String> = ["443/tcp", "81/udp", "80/udp", "80/tcp"].iter().map(|s| s.to_string()).collect();
        let env = to_env("/parent2/my-al", "10.252.31.2", &["FOO=1".into(), "HOME=/x".into(), "PATH=/bin".into()], &exposed);
        let want = "MY_AL_PORT=tcp://10.252.31.2:80
MY_AL_PORT_80_TCP_START=tcp://10.252.31.2:80
MY_AL_PORT_80_TCP_ADDR=10.252.31.2
MY_AL_PORT_80_TCP_PROTO=tcp
MY_AL_PORT_80_TCP_PORT_START=80
MY_AL_PORT_80_UDP_END=udp://10.252.31.2:81
MY_AL_PORT_80_UDP_PORT_END=81
MY_AL_PORT_80_TCP=tcp://10.252.31.2:80
MY_AL_PORT_80_TCP_ADDR=10.252.31.2
MY_AL_PORT_80_TCP_PORT=80
MY_AL_PORT_80_TCP_PROTO=tcp
MY_AL_PORT_80_UDP=udp://10.252.31.2:80
MY_AL_PORT_80_UDP_ADDR=10.252.31.2
MY_AL_PORT_80_UDP_PORT=80
MY_AL_PORT_80_UDP_PROTO=udp
MY_AL_PORT_81_UDP=udp://10.252.31.2:81
MY_AL_PORT_81_UDP_ADDR=10.252.31.2
MY_AL_PORT_81_UDP_PORT=81
MY_AL_PORT_81_UDP_PROTO=udp
MY_AL_PORT_443_TCP=tcp://10.252.31.2:443
MY_AL_PORT_443_TCP_ADDR=10.252.31.2
MY_AL_PORT_443_TCP_PORT=443
MY_AL_PORT_443_TCP_PROTO=tcp
MY_AL_NAME=/parent2/my-al
MY_AL_ENV_FOO=1";
        assert_eq!(env.join("\n"), want);
        // no ports: the name and the environment only
        assert_eq!(to_env("/p/db", "10.0.0.2", &["A=b=c".into(), "NOVAL".into()], &[]), vec!["DB_NAME=/p/db", "DB_ENV_A=b=c"]);
    }
}
