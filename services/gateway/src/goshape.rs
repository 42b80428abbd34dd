//! Answers shaped as Go's `encoding/json` writes Moby's structs: a field without
//! `omitempty` is always there, as its zero value when unset (`""`, `0`, `false`,
//! `null`), and a field of a newer API version is not there for an older client.
//! bollard's models leave every unset field out, so the routes fill them in here,
//! per struct, with the keys of moby's api/types (20.10, API 1.41, checked against
//! the recorded answers in e2e/shapes/moby-20.10.json).
//!
//! Hand-written: the key lists are Moby's struct tags, which no crate carries.

use serde_json::{json, Map, Value};

use crate::version::ApiVersion;

/// Insert each missing key of `keys` with its zero value.
pub fn fill(o: &mut Map<String, Value>, keys: &[(&str, Value)]) {
    for (k, zero) in keys {
        if !o.contains_key(*k) {
            o.insert((*k).to_string(), zero.clone());
        }
    }
}

/// `container.Config` (a container's `Config`, an image's `Config` and
/// `ContainerConfig`): the keys without `omitempty`.
pub fn container_config_keys() -> Vec<(&'static str, Value)> {
    vec![
        ("Hostname", json!("")),
        ("Domainname", json!("")),
        ("User", json!("")),
        ("AttachStdin", json!(false)),
        ("AttachStdout", json!(false)),
        ("AttachStderr", json!(false)),
        ("Tty", json!(false)),
        ("OpenStdin", json!(false)),
        ("StdinOnce", json!(false)),
        ("Env", Value::Null),
        ("Cmd", Value::Null),
        ("Image", json!("")),
        ("Volumes", Value::Null),
        ("WorkingDir", json!("")),
        ("Entrypoint", Value::Null),
        ("OnBuild", Value::Null),
        ("Labels", Value::Null),
    ]
}

/// A `container.Config` with every key at its zero value (an image's
/// `ContainerConfig` when its config has none).
pub fn zero_container_config() -> Value {
    let mut o = Map::new();
    fill(&mut o, &container_config_keys());
    Value::Object(o)
}

/// `container.HostConfig` with its `Resources`: the keys without `omitempty`.
/// KernelMemory and KernelMemoryTCP went `omitempty` with API 1.42.
pub fn host_config_keys(v: ApiVersion) -> Vec<(&'static str, Value)> {
    let mut keys = vec![
        ("Binds", Value::Null),
        ("ContainerIDFile", json!("")),
        ("LogConfig", json!({"Type": "", "Config": null})),
        ("NetworkMode", json!("")),
        ("PortBindings", Value::Null),
        ("RestartPolicy", json!({"Name": "", "MaximumRetryCount": 0})),
        ("AutoRemove", json!(false)),
        ("VolumeDriver", json!("")),
        ("VolumesFrom", Value::Null),
        ("CapAdd", Value::Null),
        ("CapDrop", Value::Null),
        ("CgroupnsMode", json!("")),
        ("Dns", Value::Null),
        ("DnsOptions", Value::Null),
        ("DnsSearch", Value::Null),
        ("ExtraHosts", Value::Null),
        ("GroupAdd", Value::Null),
        ("IpcMode", json!("")),
        ("Cgroup", json!("")),
        ("Links", Value::Null),
        ("OomScoreAdj", json!(0)),
        ("PidMode", json!("")),
        ("Privileged", json!(false)),
        ("PublishAllPorts", json!(false)),
        ("ReadonlyRootfs", json!(false)),
        ("SecurityOpt", Value::Null),
        ("UTSMode", json!("")),
        ("UsernsMode", json!("")),
        ("ShmSize", json!(0)),
        ("ConsoleSize", json!([0, 0])),
        ("Isolation", json!("")),
        ("CpuShares", json!(0)),
        ("Memory", json!(0)),
        ("NanoCpus", json!(0)),
        ("CgroupParent", json!("")),
        ("BlkioWeight", json!(0)),
        ("BlkioWeightDevice", Value::Null),
        ("BlkioDeviceReadBps", Value::Null),
        ("BlkioDeviceWriteBps", Value::Null),
        ("BlkioDeviceReadIOps", Value::Null),
        ("BlkioDeviceWriteIOps", Value::Null),
        ("CpuPeriod", json!(0)),
        ("CpuQuota", json!(0)),
        ("CpuRealtimePeriod", json!(0)),
        ("CpuRealtimeRuntime", json!(0)),
        ("CpusetCpus", json!("")),
        ("CpusetMems", json!("")),
        ("Devices", Value::Null),
        ("DeviceCgroupRules", Value::Null),
        ("DeviceRequests", Value::Null),
        ("MemoryReservation", json!(0)),
        ("MemorySwap", json!(0)),
        ("MemorySwappiness", Value::Null),
        ("OomKillDisable", Value::Null),
        ("PidsLimit", Value::Null),
        ("Ulimits", Value::Null),
        ("CpuCount", json!(0)),
        ("CpuPercent", json!(0)),
        ("IOMaximumIOps", json!(0)),
        ("IOMaximumBandwidth", json!(0)),
        ("MaskedPaths", Value::Null),
        ("ReadonlyPaths", Value::Null),
    ];
    if v.less_than("1.42") {
        keys.push(("KernelMemory", json!(0)));
        keys.push(("KernelMemoryTCP", json!(0)));
    }
    keys
}

/// An endpoint of `NetworkSettings.Networks` (inspect, list, df): all of Go's keys,
/// unset ones as their zero value (`"Aliases": null`, `"MacAddress": ""`: strict
/// clients index them, docker-py reads `Aliases` of a network it gave none), and
/// none of a newer API (DNSNames 1.44, GwPriority 1.48).
pub fn endpoint(ep: &mut Map<String, Value>, v: ApiVersion) {
    let mut keys: Vec<(&str, Value)> = vec![
        ("IPAMConfig", Value::Null),
        ("Links", Value::Null),
        ("Aliases", Value::Null),
        ("MacAddress", json!("")),
        ("DriverOpts", Value::Null),
        ("NetworkID", json!("")),
        ("EndpointID", json!("")),
        ("Gateway", json!("")),
        ("IPAddress", json!("")),
        ("IPPrefixLen", json!(0)),
        ("IPv6Gateway", json!("")),
        ("GlobalIPv6Address", json!("")),
        ("GlobalIPv6PrefixLen", json!(0)),
    ];
    if v.less_than("1.44") {
        ep.remove("DNSNames");
    } else {
        keys.push(("DNSNames", Value::Null));
    }
    if v.less_than("1.48") {
        ep.remove("GwPriority");
    } else {
        keys.push(("GwPriority", json!(0)));
    }
    fill(ep, &keys);
}

/// Every endpoint under `pointer` (`/NetworkSettings/Networks`) of `j`.
pub fn endpoints_at(j: &mut Value, pointer: &str, v: ApiVersion) {
    if let Some(nets) = j.pointer_mut(pointer).and_then(Value::as_object_mut) {
        for ep in nets.values_mut().filter_map(Value::as_object_mut) {
            endpoint(ep, v);
        }
    }
}

/// `GET /containers/{id}/json`: the top level, Config, HostConfig and endpoints.
pub fn container_inspect(j: &mut Value, v: ApiVersion) {
    let Some(o) = j.as_object_mut() else { return };
    fill(o, &[("ExecIDs", Value::Null)]);
    if let Some(c) = o.get_mut("Config").and_then(Value::as_object_mut) {
        fill(c, &container_config_keys());
    }
    if let Some(hc) = o.get_mut("HostConfig").and_then(Value::as_object_mut) {
        fill(hc, &host_config_keys(v));
        if !v.less_than("1.42") {
            for k in ["KernelMemory", "KernelMemoryTCP"] {
                if hc.get(k).is_some_and(|x| x == &json!(0)) {
                    hc.remove(k);
                }
            }
        }
    }
    endpoints_at(j, "/NetworkSettings/Networks", v);
}

/// `GET /containers/json` and `/system/df`'s containers: the endpoints, and the
/// sizes only when set (`omitempty`: Moby leaves a 0 out).
pub fn container_summary(j: &mut Value, v: ApiVersion) {
    endpoints_at(j, "/NetworkSettings/Networks", v);
    if let Some(o) = j.as_object_mut() {
        for k in ["SizeRw", "SizeRootFs"] {
            if o.get(k).is_some_and(|x| x == &json!(0)) {
                o.remove(k);
            }
        }
    }
}

/// A swarm service or task: a ContainerSpec's health check under the key Moby's
/// swarm.ContainerSpec writes, `Healthcheck` (the swagger, and so bollard's model,
/// spells it `HealthCheck`; docker-py reads `Healthcheck`, Go clients either).
pub fn swarm_object(j: &mut Value) {
    for p in ["/Spec/TaskTemplate/ContainerSpec", "/PreviousSpec/TaskTemplate/ContainerSpec", "/Spec/ContainerSpec"] {
        if let Some(cs) = j.pointer_mut(p).and_then(Value::as_object_mut) {
            if let Some(h) = cs.remove("HealthCheck") {
                cs.insert("Healthcheck".into(), h);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v(s: &str) -> ApiVersion {
        ApiVersion::parse(s).unwrap()
    }

    #[test]
    fn inspect_gets_go_zero_values_and_loses_newer_keys() {
        let mut j = json!({
            "Config": {"Cmd": ["sh"], "Image": "busybox"},
            "HostConfig": {"NetworkMode": "bridge", "ShmSize": 67108864},
            "NetworkSettings": {"Networks": {"bridge": {"IPAddress": "172.17.0.2", "GwPriority": 0, "DNSNames": ["a"]}}}
        });
        container_inspect(&mut j, v("1.41"));
        assert_eq!(j["ExecIDs"], Value::Null);
        assert_eq!(j["Config"]["Cmd"], json!(["sh"]));
        assert_eq!(j["Config"]["Entrypoint"], Value::Null);
        assert_eq!(j["Config"]["Tty"], json!(false));
        assert_eq!(j["HostConfig"]["NetworkMode"], json!("bridge"));
        assert_eq!(j["HostConfig"]["ShmSize"], json!(67108864));
        assert_eq!(j["HostConfig"]["Binds"], Value::Null);
        assert_eq!(j["HostConfig"]["CpuRealtimeRuntime"], json!(0));
        assert_eq!(j["HostConfig"]["KernelMemoryTCP"], json!(0));
        let ep = &j["NetworkSettings"]["Networks"]["bridge"];
        assert_eq!(ep["IPAddress"], json!("172.17.0.2"));
        assert_eq!(ep["Aliases"], Value::Null);
        assert!(ep.get("GwPriority").is_none() && ep.get("DNSNames").is_none());

        let mut j = json!({"HostConfig": {}, "NetworkSettings": {"Networks": {"n": {"DNSNames": ["a"]}}}});
        container_inspect(&mut j, v("1.48"));
        assert!(j["HostConfig"].get("KernelMemory").is_none());
        let ep = &j["NetworkSettings"]["Networks"]["n"];
        assert_eq!(ep["DNSNames"], json!(["a"]));
        assert_eq!(ep["GwPriority"], json!(0));
    }

    #[test]
    fn summary_sizes_are_omitempty() {
        let mut j = json!({"SizeRw": 0, "SizeRootFs": 5, "NetworkSettings": {"Networks": {"bridge": {}}}});
        container_summary(&mut j, v("1.41"));
        assert!(j.get("SizeRw").is_none());
        assert_eq!(j["SizeRootFs"], json!(5));
        assert_eq!(j["NetworkSettings"]["Networks"]["bridge"]["Links"], Value::Null);
        assert_eq!(zero_container_config()["Cmd"], Value::Null);
    }
}
