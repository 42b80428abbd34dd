//! Managed plugins (`/plugins`): Docker's Plugin object as Moby 20.10 writes it
//! (`api/types` Plugin and PluginConfig), and the requests the images service serves
//! for them. The images service keeps each plugin's config and its rootfs (a layer
//! in the storage service), as Moby keeps a config blob and a rootfs layer.
//!
//! The structs are Go's: keys in Go's order and case, `null` where Go has a nil
//! slice or pointer (`Option`), `omitempty` keys left out when empty. A plugin's
//! `config.json` is decoded with [`crate::gojson`] (keys matched case-insensitively,
//! as Go does: plugin authors write `entrypoint`, `interface`, `settable`).

use serde::{Deserialize, Serialize};
use std::collections::HashMap;

fn is_zero(v: &u32) -> bool {
    *v == 0
}

/// `types.Plugin`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct Plugin {
    #[serde(rename = "Config")]
    pub config: PluginConfig,
    #[serde(rename = "Enabled")]
    pub enabled: bool,
    #[serde(rename = "Id", skip_serializing_if = "String::is_empty")]
    pub id: String,
    #[serde(rename = "Name")]
    pub name: String,
    #[serde(rename = "PluginReference", skip_serializing_if = "String::is_empty")]
    pub plugin_reference: String,
    #[serde(rename = "Settings")]
    pub settings: PluginSettings,
}

/// `types.PluginSettings`: what `docker plugin set` changes (Moby makes every list
/// non-nil when the plugin is made).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct PluginSettings {
    #[serde(rename = "Args")]
    pub args: Vec<String>,
    #[serde(rename = "Devices")]
    pub devices: Vec<PluginDevice>,
    #[serde(rename = "Env")]
    pub env: Vec<String>,
    #[serde(rename = "Mounts")]
    pub mounts: Vec<PluginMount>,
}

/// `types.PluginConfig` (the plugin's `config.json`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct PluginConfig {
    #[serde(rename = "Args")]
    pub args: PluginConfigArgs,
    #[serde(rename = "Description")]
    pub description: String,
    #[serde(rename = "DockerVersion", skip_serializing_if = "String::is_empty")]
    pub docker_version: String,
    #[serde(rename = "Documentation")]
    pub documentation: String,
    #[serde(rename = "Entrypoint")]
    pub entrypoint: Option<Vec<String>>,
    #[serde(rename = "Env")]
    pub env: Option<Vec<PluginEnv>>,
    #[serde(rename = "Interface")]
    pub interface: PluginConfigInterface,
    #[serde(rename = "IpcHost")]
    pub ipc_host: bool,
    #[serde(rename = "Linux")]
    pub linux: PluginConfigLinux,
    #[serde(rename = "Mounts")]
    pub mounts: Option<Vec<PluginMount>>,
    #[serde(rename = "Network")]
    pub network: PluginConfigNetwork,
    #[serde(rename = "PidHost")]
    pub pid_host: bool,
    #[serde(rename = "PropagatedMount")]
    pub propagated_mount: String,
    #[serde(rename = "User")]
    pub user: PluginConfigUser,
    #[serde(rename = "WorkDir")]
    pub work_dir: String,
    #[serde(rename = "rootfs", skip_serializing_if = "Option::is_none")]
    pub rootfs: Option<PluginConfigRootfs>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct PluginConfigArgs {
    #[serde(rename = "Description")]
    pub description: String,
    #[serde(rename = "Name")]
    pub name: String,
    #[serde(rename = "Settable")]
    pub settable: Option<Vec<String>>,
    #[serde(rename = "Value")]
    pub value: Option<Vec<String>>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct PluginEnv {
    #[serde(rename = "Description")]
    pub description: String,
    #[serde(rename = "Name")]
    pub name: String,
    #[serde(rename = "Settable")]
    pub settable: Option<Vec<String>>,
    #[serde(rename = "Value")]
    pub value: Option<String>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct PluginMount {
    #[serde(rename = "Description")]
    pub description: String,
    #[serde(rename = "Destination")]
    pub destination: String,
    #[serde(rename = "Name")]
    pub name: String,
    #[serde(rename = "Options")]
    pub options: Option<Vec<String>>,
    #[serde(rename = "Settable")]
    pub settable: Option<Vec<String>>,
    #[serde(rename = "Source")]
    pub source: Option<String>,
    #[serde(rename = "Type")]
    pub typ: String,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct PluginDevice {
    #[serde(rename = "Description")]
    pub description: String,
    #[serde(rename = "Name")]
    pub name: String,
    #[serde(rename = "Path")]
    pub path: Option<String>,
    #[serde(rename = "Settable")]
    pub settable: Option<Vec<String>>,
}

/// `Types` are Go's PluginInterfaceType, written as `prefix.capability/version`
/// strings (`docker.volumedriver/1.0`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct PluginConfigInterface {
    #[serde(rename = "ProtocolScheme", skip_serializing_if = "String::is_empty")]
    pub protocol_scheme: String,
    #[serde(rename = "Socket")]
    pub socket: String,
    #[serde(rename = "Types")]
    pub types: Option<Vec<String>>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct PluginConfigLinux {
    #[serde(rename = "AllowAllDevices")]
    pub allow_all_devices: bool,
    #[serde(rename = "Capabilities")]
    pub capabilities: Option<Vec<String>>,
    #[serde(rename = "Devices")]
    pub devices: Option<Vec<PluginDevice>>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct PluginConfigNetwork {
    #[serde(rename = "Type")]
    pub typ: String,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct PluginConfigUser {
    #[serde(rename = "GID", skip_serializing_if = "is_zero")]
    pub gid: u32,
    #[serde(rename = "UID", skip_serializing_if = "is_zero")]
    pub uid: u32,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct PluginConfigRootfs {
    #[serde(rename = "diff_ids", skip_serializing_if = "Option::is_none")]
    pub diff_ids: Option<Vec<String>>,
    #[serde(rename = "type", skip_serializing_if = "String::is_empty")]
    pub typ: String,
}

impl Plugin {
    /// Moby's InitEmptySettings: the settable values start as the config's.
    pub fn init_settings(&mut self) {
        let c = &self.config;
        self.settings = PluginSettings {
            args: c.args.value.clone().unwrap_or_default(),
            devices: c.linux.devices.clone().unwrap_or_default(),
            env: c
                .env
                .iter()
                .flatten()
                .filter_map(|e| e.value.as_ref().map(|v| format!("{}={v}", e.name)))
                .collect(),
            mounts: c.mounts.clone().unwrap_or_default(),
        };
    }
}

/// Make a plugin from a tar of `config.json` and `rootfs/` (`docker plugin create`).
/// The caller streams the tar as input; the service answers an empty stream's end
/// once the plugin is stored. `name` as given (Moby normalises it: `:latest`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PluginCreate {
    pub name: String,
}

/// Filters as Docker sends them: `enabled`, `capability`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PluginList {
    pub filters: HashMap<String, Vec<String>>,
}

/// A plugin by name (`:latest` implied) or ID prefix.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PluginInspect {
    pub name: String,
}

/// `docker plugin set NAME KEY=VALUE...`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PluginSet {
    pub name: String,
    pub args: Vec<String>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PluginEnable {
    pub name: String,
    /// Seconds to wait for the plugin to start (Moby's `timeout`).
    pub timeout: i64,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PluginDisable {
    pub name: String,
    pub force: bool,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PluginRemove {
    pub name: String,
    pub force: bool,
}

/// One privilege a plugin asks for (`types.PluginPrivilege`), as Moby derives them
/// from its config (`computePrivileges`) and as the client grants them back.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct PluginPrivilege {
    #[serde(rename = "Name")]
    pub name: String,
    #[serde(rename = "Description")]
    pub description: String,
    #[serde(rename = "Value")]
    pub value: Option<Vec<String>>,
}

/// `GET /plugins/privileges?remote=`: the privileges of a plugin in a registry
/// (`None` is Go's nil: `null`, a plugin that asks for none).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PluginPrivilegeList {
    pub remote: String,
    pub auth: Option<crate::images::RegistryAuth>,
}

/// `POST /plugins/pull?remote=&name=` (`docker plugin install`): the plugin is
/// fetched and stored disabled, if `privileges` are the ones its config asks for.
/// The reply is the plugin's local name (Moby's `Docker-Plugin-Name` header),
/// sent once the remote is resolved; errors before that are the request's.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PluginPull {
    pub remote: String,
    /// The alias (`--alias`); empty: the remote's name.
    pub name: String,
    pub privileges: Vec<PluginPrivilege>,
    pub auth: Option<crate::images::RegistryAuth>,
}

/// `POST /plugins/{name}/push`: the plugin's config and rootfs to the registry its
/// name points at.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PluginPush {
    pub name: String,
    pub auth: Option<crate::images::RegistryAuth>,
}

/// `POST /plugins/{name}/upgrade?remote=`: a disabled plugin's config and rootfs
/// replaced by the remote's (its settings kept). The reply is the plugin's name.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PluginUpgrade {
    pub name: String,
    pub remote: String,
    pub privileges: Vec<PluginPrivilege>,
    pub auth: Option<crate::images::RegistryAuth>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testutil::roundtrip;

    #[test]
    fn plugin_messages_roundtrip() {
        let mut p = Plugin {
            id: "a".repeat(64),
            name: "x/y:latest".into(),
            plugin_reference: "x/y:latest".into(),
            config: PluginConfig {
                entrypoint: Some(vec!["/p".into()]),
                env: Some(vec![PluginEnv { name: "DEBUG".into(), settable: Some(vec!["value".into()]), value: Some("0".into()), ..Default::default() }]),
                rootfs: Some(PluginConfigRootfs { diff_ids: Some(vec!["sha256:a".into()]), typ: "layers".into() }),
                ..Default::default()
            },
            ..Default::default()
        };
        p.init_settings();
        assert_eq!(p.settings.env, vec!["DEBUG=0".to_string()]);
        roundtrip(p);
        roundtrip(PluginCreate { name: "x".into() });
        roundtrip(PluginList { filters: HashMap::from([("enabled".into(), vec!["true".into()])]) });
        roundtrip(PluginInspect { name: "x".into() });
        roundtrip(PluginSet { name: "x".into(), args: vec!["A=1".into()] });
        roundtrip(PluginEnable { name: "x".into(), timeout: 30 });
        roundtrip(PluginDisable { name: "x".into(), force: true });
        roundtrip(PluginRemove { name: "x".into(), force: false });
        let pr = PluginPrivilege { name: "network".into(), description: "d".into(), value: Some(vec!["host".into()]) };
        roundtrip(PluginPrivilegeList { remote: "r".into(), auth: None });
        roundtrip(PluginPull { remote: "r".into(), name: "a".into(), privileges: vec![pr.clone()], auth: None });
        roundtrip(PluginPush { name: "x".into(), auth: None });
        roundtrip(PluginUpgrade { name: "x".into(), remote: "r".into(), privileges: vec![pr], auth: None });
    }

    #[test]
    fn config_json_decodes_as_go_and_writes_as_moby() {
        // docker-py's dummy plugin, lower-case keys as plugin authors write them
        let c: PluginConfig = crate::gojson::from_slice(
            br#"{"description":"d","entrypoint":["/dummy"],"network":{"type":"host"},
                "interface":{"types":["docker.volumedriver/1.0"],"socket":"dummy.sock"},
                "env":[{"name":"DEBUG","settable":["value"],"value":"0"}]}"#,
        )
        .unwrap();
        assert_eq!(c.entrypoint, Some(vec!["/dummy".to_string()]));
        assert_eq!(c.env.as_ref().unwrap()[0].settable, Some(vec!["value".to_string()]));
        let j = serde_json::to_string(&c).unwrap();
        assert_eq!(
            j,
            r#"{"Args":{"Description":"","Name":"","Settable":null,"Value":null},"Description":"d","Documentation":"","Entrypoint":["/dummy"],"Env":[{"Description":"","Name":"DEBUG","Settable":["value"],"Value":"0"}],"Interface":{"Socket":"dummy.sock","Types":["docker.volumedriver/1.0"]},"IpcHost":false,"Linux":{"AllowAllDevices":false,"Capabilities":null,"Devices":null},"Mounts":null,"Network":{"Type":"host"},"PidHost":false,"PropagatedMount":"","User":{},"WorkDir":""}"#
        );
    }
}
