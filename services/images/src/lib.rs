//! The images service: registries (pull, push, login), the content store, the image
//! store, save/load/import, images made from layers, and the embedded hello-world.
//!
//! Layout: [`reference`] (Docker's names), [`registry`] (the distribution client),
//! [`content`] (blobs by digest), [`store`] (images and tags per storage driver),
//! [`layers`] (storage's layer store over the bus), [`service`] (the core and the
//! local operations), [`pull`], [`push`], [`archive`] (save, load, import),
//! [`hello`], [`api`] (the trait) and [`adapter`] (the bus side).

pub mod adapter;
pub mod api;
pub mod archive;
pub mod content;
pub mod error;
pub mod hello;
pub mod layers;
pub mod manifest;
pub mod plugins;
pub mod progress;
pub mod pull;
pub mod push;
pub mod reference;
pub mod registry;
pub mod service;
pub mod store;

use berth_bus::{Bus, Server};
use berth_config::DaemonConfig;
use bus_schema::docker;
use std::path::PathBuf;

pub use service::Images;

/// Open the stores under the data root (`BERTH_ROOT`, else `data-root`) and serve.
pub async fn serve(bus: Bus, cfg: DaemonConfig) -> anyhow::Result<Server> {
    let root = std::env::var_os(berth_config::env::ROOT)
        .map(PathBuf::from)
        .unwrap_or_else(|| cfg.data_root());
    let images = Images::open(bus.clone(), &cfg, &root)?;
    let plugins = plugins::Plugins::open(layers::Layers::new(bus.clone()), &root.join("images"), cfg.storage_driver())?
        .with_runner(plugins::Runner::new(bus.clone(), &root))
        .with_registry(images.registry.clone());
    let plugins = std::sync::Arc::new(plugins);
    tokio::spawn(plugins.clone().restore());
    Ok(adapter::server(bus, images, Some(plugins), registry_info(&cfg)))
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
                docker::IndexInfo {
                    name: Some(r.clone()),
                    mirrors: Some(vec![]),
                    secure: Some(false),
                    official: Some(false),
                },
            );
        }
    }
    index.insert(
        "docker.io".to_string(),
        docker::IndexInfo {
            name: Some("docker.io".into()),
            mirrors: Some(
                cfg.registry_mirrors
                    .iter()
                    .map(|m| format!("{}/", m.trim_end_matches('/')))
                    .collect(),
            ),
            secure: Some(true),
            official: Some(true),
        },
    );
    docker::RegistryServiceConfig {
        insecure_registry_cidrs: Some(cidrs),
        index_configs: Some(index),
        mirrors: Some(
            cfg.registry_mirrors
                .iter()
                .map(|m| format!("{}/", m.trim_end_matches('/')))
                .collect(),
        ),
        ..Default::default()
    }
}
