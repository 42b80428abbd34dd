//! The images service: registries (pull, push, login), the content store, the image
//! store, save/load/import.

use berth_bus::{Bus, Server};
use berth_config::DaemonConfig;
use bus_schema::{docker, Service};

pub async fn serve(bus: Bus, cfg: DaemonConfig) -> anyhow::Result<Server> {
    let registry = registry_info(&cfg);
    Ok(Server::new(bus, Service::Images).info(move || {
        let registry = registry.clone();
        async move {
            docker::SystemInfo {
                images: Some(0),
                registry_config: Some(registry),
                index_server_address: Some("https://index.docker.io/v1/".into()),
                ..Default::default()
            }
        }
    }))
}

/// `RegistryConfig` as `docker info` shows it: insecure CIDRs (127.0.0.0/8 always,
/// as Docker does), index configs with mirrors for docker.io.
pub fn registry_info(cfg: &DaemonConfig) -> docker::RegistryServiceConfig {
    let mut cidrs = vec!["127.0.0.0/8".to_string()];
    let mut index = std::collections::HashMap::new();
    for r in &cfg.insecure_registries {
        if r.contains('/') && r.chars().next().is_some_and(|c| c.is_ascii_digit()) {
            if !cidrs.contains(r) {
                cidrs.push(r.clone());
            }
        } else {
            index.insert(
                r.clone(),
                docker::IndexInfo { name: Some(r.clone()), mirrors: Some(vec![]), secure: Some(false), official: Some(false) },
            );
        }
    }
    index.insert(
        "docker.io".to_string(),
        docker::IndexInfo {
            name: Some("docker.io".into()),
            mirrors: Some(cfg.registry_mirrors.iter().map(|m| format!("{}/", m.trim_end_matches('/'))).collect()),
            secure: Some(true),
            official: Some(true),
        },
    );
    docker::RegistryServiceConfig {
        insecure_registry_cidrs: Some(cidrs),
        index_configs: Some(index),
        mirrors: Some(cfg.registry_mirrors.iter().map(|m| format!("{}/", m.trim_end_matches('/'))).collect()),
        ..Default::default()
    }
}
