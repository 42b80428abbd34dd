//! `docker create`: validate, resolve the image, merge its config as Docker does,
//! reserve the name, create the read-write layer, record the container.

use berth_bus::images::ImagesApi as _;
use berth_bus::storage::StorageApi as _;
use bus_schema::event::Action;
use std::collections::HashMap;
use std::sync::Arc;

use berth_rules::clock;
use bus_schema::images::{ImageResolve, ResolvedImage};
use bus_schema::runtime::ContainerCreate;
use bus_schema::storage::RwLayerCreate;
use bus_schema::{docker, BusError, ErrorKind};

use crate::engine::{Entry, Runtime};
use crate::state::{Container, State};

/// Merge the image's config under the user's, as Docker's `daemon.merge` does.
pub fn merge_config(user: &docker::ContainerCreateBody, img: &docker::ImageConfig) -> docker::ContainerConfig {
    let mut c = docker::ContainerConfig {
        hostname: user.hostname.clone(),
        domainname: user.domainname.clone(),
        user: user.user.clone(),
        attach_stdin: user.attach_stdin,
        attach_stdout: user.attach_stdout,
        attach_stderr: user.attach_stderr,
        exposed_ports: user.exposed_ports.clone(),
        tty: user.tty,
        open_stdin: user.open_stdin,
        stdin_once: user.stdin_once,
        env: user.env.clone(),
        cmd: user.cmd.clone(),
        healthcheck: user.healthcheck.clone(),
        args_escaped: user.args_escaped,
        image: user.image.clone(),
        volumes: user.volumes.clone(),
        working_dir: user.working_dir.clone(),
        entrypoint: user.entrypoint.clone(),
        network_disabled: user.network_disabled,
        on_build: user.on_build.clone(),
        labels: user.labels.clone(),
        stop_signal: user.stop_signal.clone(),
        stop_timeout: user.stop_timeout,
        shell: user.shell.clone(),
    };
    if c.user.as_deref().is_none_or(|u| u.is_empty()) {
        c.user = img.user.clone();
    }
    // exposed ports and volumes: union
    let mut ports: Vec<String> = img.exposed_ports.clone().unwrap_or_default();
    for p in c.exposed_ports.clone().unwrap_or_default() {
        if !ports.contains(&p) {
            ports.push(p);
        }
    }
    c.exposed_ports = if ports.is_empty() { None } else { Some(ports) };
    let mut vols: Vec<String> = img.volumes.clone().unwrap_or_default();
    for v in c.volumes.clone().unwrap_or_default() {
        if !vols.contains(&v) {
            vols.push(v);
        }
    }
    c.volumes = if vols.is_empty() { None } else { Some(vols) };
    // env: the user's, then the image's whose keys the user did not set (Docker's
    // order, which `docker inspect` shows)
    let mut env: Vec<String> = c.env.clone().unwrap_or_default();
    for e in img.env.clone().unwrap_or_default() {
        let key = e.split('=').next().unwrap_or(&e);
        if !env.iter().any(|u| u.split('=').next() == Some(key)) {
            env.push(e);
        }
    }
    c.env = Some(env);
    // labels: the image's, overridden by the user's
    let mut labels: HashMap<String, String> = img.labels.clone().unwrap_or_default();
    labels.extend(c.labels.clone().unwrap_or_default());
    c.labels = Some(labels);
    // entrypoint and cmd: a user entrypoint drops the image's cmd
    let user_ep = c.entrypoint.as_ref().is_some_and(|e| !e.is_empty());
    let user_cmd = c.cmd.as_ref().is_some_and(|e| !e.is_empty());
    if !user_ep {
        if c.entrypoint.is_none() {
            c.entrypoint = img.entrypoint.clone();
        }
        if !user_cmd {
            c.cmd = img.cmd.clone();
        }
    }
    if c.working_dir.as_deref().is_none_or(|w| w.is_empty()) {
        c.working_dir = img.working_dir.clone();
    }
    if c.stop_signal.as_deref().is_none_or(|s| s.is_empty()) {
        c.stop_signal = img.stop_signal.clone();
    }
    if c.shell.is_none() {
        c.shell = img.shell.clone();
    }
    if c.on_build.is_none() {
        c.on_build = img.on_build.clone();
    }
    match (&mut c.healthcheck, &img.healthcheck) {
        (None, Some(h)) => c.healthcheck = Some(h.clone()),
        (Some(u), Some(h)) => {
            if u.test.as_ref().is_none_or(|t| t.is_empty()) {
                u.test = h.test.clone();
            }
            u.interval = u.interval.filter(|x| *x != 0).or(h.interval);
            u.timeout = u.timeout.filter(|x| *x != 0).or(h.timeout);
            u.start_period = u.start_period.filter(|x| *x != 0).or(h.start_period);
            u.retries = u.retries.filter(|x| *x != 0).or(h.retries);
        }
        _ => {}
    }
    for f in [&mut c.attach_stdin, &mut c.attach_stdout, &mut c.attach_stderr, &mut c.tty, &mut c.open_stdin, &mut c.stdin_once] {
        f.get_or_insert(false);
    }
    c.domainname.get_or_insert_with(String::new);
    c.user.get_or_insert_with(String::new);
    c.working_dir.get_or_insert_with(String::new);
    c
}

impl<D: crate::deps::Deps> Runtime<D> {
    pub async fn create(self: &Arc<Self>, r: ContainerCreate) -> Result<docker::ContainerCreateResponse, BusError> {
        let body = r.body;
        let mut host_config = body.host_config.clone().unwrap_or_default();
        if r.plugin.is_some() {
            // a plugin's own output never goes to a log plugin (daemon.json may name
            // one as the default): json-file
            host_config.log_config = Some(docker::HostConfigLogConfig { typ: Some("json-file".into()), config: None });
        }
        crate::validate::host_config(&mut host_config, &self.cfg)?;
        if let Some(t) = host_config.log_config.as_ref().and_then(|l| l.typ.as_deref()).filter(|t| !crate::logplugin::is_builtin(t)) {
            // Moby's ValidateLogOpts: any other name is a logging plugin's
            self.log_plugin(t).await?;
        }

        let img: ResolvedImage = if let Some(p) = &r.plugin {
            // a managed plugin: its layer is the rootfs, its config the whole config
            if p.id.len() != 64 || !p.id.bytes().all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase()) {
                return Err(BusError::invalid(format!("invalid plugin ID {:?}", p.id)));
            }
            ResolvedImage {
                id: String::new(),
                name: String::new(),
                chain_id: Some(p.chain_id.clone()),
                config: docker::ImageConfig::default(),
                os: "linux".into(),
                architecture: String::new(),
            }
        } else {
            let image_ref = body.image.clone().filter(|i| !i.is_empty()).ok_or_else(|| BusError::invalid("config cannot be empty in order to create a container"))?;
            match self.images.image_resolve(ImageResolve { reference: image_ref.clone() }).await {
                Ok(i) => i,
                Err(e) if e.is(ErrorKind::NotFound) => {
                    return Err(BusError::not_found(format!("No such image: {}", display_ref(&image_ref))))
                }
                Err(e) => return Err(e),
            }
        };
        let image_ref = body.image.clone().unwrap_or_default();
        if let Some(p) = r.platform.as_deref().filter(|p| !p.is_empty()) {
            let want = p.trim_start_matches("linux/");
            if !p.starts_with(&img.os) || (want != img.architecture && !p.ends_with(&img.architecture)) {
                return Err(BusError::not_found(format!(
                    "image with reference {image_ref} was found but does not match the specified platform: wanted {p}, actual: {}/{}",
                    img.os, img.architecture
                )));
            }
        }

        let mut config = merge_config(&body, &img.config);
        let id = match &r.plugin {
            Some(p) => {
                if self.find_any(&p.id).is_ok() {
                    return Err(BusError::conflict(format!("plugin container {} exists", p.id)));
                }
                p.id.clone()
            }
            None => crate::names::new_id(),
        };
        let hidden = r.plugin.is_some();
        if config.hostname.as_deref().is_none_or(|h| h.is_empty()) {
            let mode = host_config.network_mode.clone().unwrap_or_default();
            config.hostname = Some(if mode == "host" { host_hostname() } else { id[..12].to_string() });
        }
        let mut argv: Vec<String> = config.entrypoint.clone().unwrap_or_default();
        argv.extend(config.cmd.clone().unwrap_or_default());
        if argv.is_empty() {
            return Err(BusError::invalid("no command specified"));
        }

        // name
        let name = match r.name {
            Some(n) => {
                let n = n.strip_prefix('/').unwrap_or(&n).to_string();
                if !crate::names::valid(&n) {
                    return Err(BusError::invalid(format!(
                        "Invalid container name ({n}), only [a-zA-Z0-9][a-zA-Z0-9_.-] are allowed"
                    )));
                }
                self.reserve_name(&n, &id)?;
                n
            }
            None => {
                let mut retry = 0;
                loop {
                    let n = crate::names::random(retry);
                    if self.reserve_name(&n, &id).is_ok() {
                        break n;
                    }
                    retry += 1;
                }
            }
        };

        // legacy links (the default bridge): the targets are checked and their link
        // names taken now; the record keeps them as the parent's links
        let links = match self.register_links(&name, &host_config) {
            Ok(l) => l,
            Err(e) => {
                self.release_name(&name, &id);
                return Err(e);
            }
        };
        let res = self.create_inner(&id, &name, img, config, host_config, body.networking_config, argv, links.clone(), hidden).await;
        match res {
            Ok(c) => {
                self.event(&c, Action::Create, &[]).await;
                Ok(docker::ContainerCreateResponse { id, warnings: vec![] })
            }
            Err(e) => {
                self.release_links(&name, &links);
                self.release_name(&name, &id);
                Err(e)
            }
        }
    }

    #[allow(clippy::too_many_arguments)]
    async fn create_inner(
        self: &Arc<Self>,
        id: &str,
        name: &str,
        img: ResolvedImage,
        config: docker::ContainerConfig,
        mut host_config: docker::HostConfig,
        networking: Option<docker::NetworkingConfig>,
        argv: Vec<String>,
        links: Vec<crate::state::Link>,
        hidden: bool,
    ) -> Result<Container, BusError> {
        let dir = self.containers_dir().join(id);
        std::fs::create_dir_all(&dir)?;
        let mounts = match crate::mounts::plan(self, id, &config, &host_config).await {
            Ok(m) => m,
            Err(e) => {
                let _ = std::fs::remove_dir_all(&dir);
                return Err(e);
            }
        };
        if let Err(e) = self.storage.rw_layer_create(RwLayerCreate { id: id.to_string(), parent: img.chain_id.clone() }).await {
            crate::mounts::release(self, id, &mounts, true).await;
            let _ = std::fs::remove_dir_all(&dir);
            return Err(e);
        }
        let mut endpoints = HashMap::new();
        if let Some(n) = networking.and_then(|n| n.endpoints_config) {
            // the CLI names the default network `default`; Docker stores it as `bridge`
            endpoints.extend(n.into_iter().map(|(k, v)| if k == "default" { ("bridge".to_string(), v) } else { (k, v) }));
        }
        move_user_network_links(&mut host_config, &mut endpoints);
        // legacy links live in `links` (inspect shows them from there, as Moby shows
        // its link graph, not the request)
        host_config.links = None;
        let c = Container {
            id: id.to_string(),
            name: name.to_string(),
            created: clock::now_rfc3339(),
            image_id: img.id.clone(),
            image_chain: img.chain_id.clone(),
            path: argv[0].clone(),
            args: argv[1..].to_vec(),
            config,
            host_config,
            endpoints,
            state: State::default(),
            restart_count: 0,
            manually_stopped: false,
            mode_network_detached: false,
            has_been_started: false,
            mounts,
            driver: self.driver.clone(),
            platform: img.os.clone(),
            sandbox_key: String::new(),
            networks: HashMap::new(),
            ports: HashMap::new(),
            log_path: dir.join(format!("{id}-json.log")).display().to_string(),
            hosts_path: dir.join("hosts").display().to_string(),
            hostname_path: dir.join("hostname").display().to_string(),
            resolv_path: dir.join("resolv.conf").display().to_string(),
            exec_ids: Vec::new(),
            rootfs: String::new(),
            links,
            plugin: hidden,
            log_plugin: None,
        };
        let entry = Entry::new(c.clone(), dir);
        entry.save()?;
        self.insert(entry);
        Ok(c)
    }
}

fn host_hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname").map(|s| s.trim().to_string()).unwrap_or_default()
}

/// `busybox` -> `busybox:latest` in "No such image" messages, as Docker prints them.
pub fn display_ref(r: &str) -> String {
    if r.contains('@') || r.rsplit('/').next().is_some_and(|last| last.contains(':')) {
        r.to_string()
    } else {
        format!("{r}:latest")
    }
}

/// `--link` on a user-defined network is the endpoint's link (a name its DNS answers
/// for this container), not a legacy link: Moby keeps it in
/// `NetworkSettings.Networks.<net>.Links` only and answers `HostConfig.Links: null`.
fn move_user_network_links(hc: &mut docker::HostConfig, endpoints: &mut HashMap<String, docker::EndpointSettings>) {
    let mode = hc.network_mode.clone().unwrap_or_default();
    if matches!(mode.as_str(), "" | "default" | "bridge" | "host" | "none") || mode.starts_with("container:") {
        return;
    }
    let Some(links) = hc.links.take().filter(|l| !l.is_empty()) else { return };
    let ep = endpoints.entry(mode).or_default();
    if ep.links.as_ref().is_none_or(|l| l.is_empty()) {
        ep.links = Some(links);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn links_on_a_user_network_are_the_endpoints() {
        let hc = |mode: &str| docker::HostConfig {
            network_mode: Some(mode.into()),
            links: Some(vec!["up:bar".into()]),
            ..Default::default()
        };
        let mut h = hc("app");
        let mut eps = HashMap::new();
        move_user_network_links(&mut h, &mut eps);
        assert_eq!(h.links, None);
        assert_eq!(eps["app"].links, Some(vec!["up:bar".to_string()]));
        // the endpoint's own links win; legacy links on the default bridge stay
        let mut h = hc("app");
        let mut eps = HashMap::from([(
            "app".to_string(),
            docker::EndpointSettings { links: Some(vec!["x:y".into()]), ..Default::default() },
        )]);
        move_user_network_links(&mut h, &mut eps);
        assert_eq!(eps["app"].links, Some(vec!["x:y".to_string()]));
        for mode in ["bridge", "default", "", "container:abc"] {
            let mut h = hc(mode);
            let mut eps = HashMap::new();
            move_user_network_links(&mut h, &mut eps);
            assert!(h.links.is_some() && eps.is_empty(), "{mode}");
        }
    }

    #[test]
    fn merges_like_docker() {
        let img = docker::ImageConfig {
            env: Some(vec!["PATH=/bin".into(), "A=1".into()]),
            cmd: Some(vec!["sh".into()]),
            entrypoint: None,
            working_dir: Some("/w".into()),
            labels: Some(HashMap::from([("a".into(), "1".into())])),
            exposed_ports: Some(vec!["80/tcp".into()]),
            ..Default::default()
        };
        let user = docker::ContainerCreateBody {
            env: Some(vec!["A=2".into()]),
            cmd: Some(vec!["echo".into(), "hi".into()]),
            labels: Some(HashMap::from([("b".into(), "2".into())])),
            ..Default::default()
        };
        let c = merge_config(&user, &img);
        assert_eq!(c.env.unwrap(), vec!["A=2".to_string(), "PATH=/bin".into()]);
        assert_eq!(c.cmd.unwrap(), vec!["echo".to_string(), "hi".into()]);
        assert_eq!(c.working_dir.as_deref(), Some("/w"));
        assert_eq!(c.labels.unwrap().len(), 2);
        assert_eq!(c.exposed_ports.unwrap(), vec!["80/tcp".to_string()]);

        // a user entrypoint drops the image's cmd
        let img2 = docker::ImageConfig { entrypoint: Some(vec!["/ep".into()]), cmd: Some(vec!["x".into()]), ..Default::default() };
        let u2 = docker::ContainerCreateBody { entrypoint: Some(vec!["/mine".into()]), ..Default::default() };
        let c2 = merge_config(&u2, &img2);
        assert_eq!(c2.entrypoint.unwrap(), vec!["/mine".to_string()]);
        assert!(c2.cmd.is_none());
        // no user entrypoint: the image's entrypoint with the user's cmd
        let u3 = docker::ContainerCreateBody { cmd: Some(vec!["y".into()]), ..Default::default() };
        let c3 = merge_config(&u3, &img2);
        assert_eq!(c3.entrypoint.unwrap(), vec!["/ep".to_string()]);
        assert_eq!(c3.cmd.unwrap(), vec!["y".to_string()]);
    }

    #[test]
    fn display_refs() {
        assert_eq!(display_ref("busybox"), "busybox:latest");
        assert_eq!(display_ref("localhost:5000/x"), "localhost:5000/x:latest");
        assert_eq!(display_ref("x:1"), "x:1");
    }
}
