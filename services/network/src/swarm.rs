//! The swarm's attachable overlay networks, as the network service reaches them: a
//! container asking for a network this node does not know is joined to the swarm's
//! overlay of that name (Moby's network attachment) by the swarm service, which holds
//! its address and puts it on the overlay's data path; the sandbox records the
//! endpoint (inspect shows it) and gives it back with the sandbox.

use bus_schema::swarm::{
    SwarmAttachment, SwarmNetworkAttach, SwarmNetworkDetach, SwarmNetworkInspect,
};
use bus_schema::{docker, BusError};
use futures_util::future::BoxFuture;

/// The swarm service's overlay operations (the bus client in production, a fake in
/// unit tests).
pub trait SwarmNets: Send + Sync {
    fn attach(&self, r: SwarmNetworkAttach) -> BoxFuture<'_, Result<SwarmAttachment, BusError>>;
    fn detach(&self, r: SwarmNetworkDetach) -> BoxFuture<'_, Result<(), BusError>>;
    fn inspect(&self, id: String) -> BoxFuture<'_, Result<docker::NetworkInspect, BusError>>;
}

impl SwarmNets for berth_bus::swarm::SwarmClient {
    fn attach(&self, r: SwarmNetworkAttach) -> BoxFuture<'_, Result<SwarmAttachment, BusError>> {
        use berth_bus::swarm::SwarmApi as _;
        Box::pin(self.swarm_network_attach(r))
    }
    fn detach(&self, r: SwarmNetworkDetach) -> BoxFuture<'_, Result<(), BusError>> {
        use berth_bus::swarm::SwarmApi as _;
        Box::pin(self.swarm_network_detach(r))
    }
    fn inspect(&self, id: String) -> BoxFuture<'_, Result<docker::NetworkInspect, BusError>> {
        use berth_bus::swarm::SwarmApi as _;
        Box::pin(self.swarm_network_inspect(SwarmNetworkInspect { id }))
    }
}

/// An answer of the swarm service that means "no such swarm network": not in a swarm,
/// no overlay of that name, no swarm service answering.
pub fn is_absent(e: &BusError) -> bool {
    e.is(bus_schema::ErrorKind::NotFound) || e.is(bus_schema::ErrorKind::Unavailable)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fake::TestService;
    use crate::sandboxes::tests::req;
    use crate::NetworkApi;
    use bus_schema::network::*;
    use std::sync::{Arc, Mutex};

    /// A swarm with the attachable overlay `ov` (ID `ovid`) and the non-attachable `plain`.
    #[derive(Default)]
    struct FakeSwarm {
        held: Mutex<Vec<(String, String)>>,
    }

    impl SwarmNets for FakeSwarm {
        fn attach(
            &self,
            r: SwarmNetworkAttach,
        ) -> BoxFuture<'_, Result<SwarmAttachment, BusError>> {
            Box::pin(async move {
                match r.network.as_str() {
                    "ov" | "ovid" => {
                        let mut h = self.held.lock().unwrap();
                        h.push(("ovid".into(), r.container_id.clone()));
                        let n = h.len() + 2;
                        Ok(SwarmAttachment { network_id: "ovid".into(), network_name: "ov".into(), address: format!("10.0.1.{n}/24"), mac: format!("02:42:0a:00:01:{n:02x}") })
                    }
                    "plain" => Err(BusError::internal("Could not attach to network plain: rpc error: code = PermissionDenied desc = network plain not manually attachable")),
                    other => Err(BusError::not_found(format!("network {other} not found"))),
                }
            })
        }
        fn detach(&self, r: SwarmNetworkDetach) -> BoxFuture<'_, Result<(), BusError>> {
            Box::pin(async move {
                self.held
                    .lock()
                    .unwrap()
                    .retain(|(n, c)| !(*n == r.network_id && *c == r.container_id));
                Ok(())
            })
        }
        fn inspect(&self, id: String) -> BoxFuture<'_, Result<docker::NetworkInspect, BusError>> {
            Box::pin(async move {
                match id.as_str() {
                    "ov" | "ovid" => Ok(docker::NetworkInspect {
                        id: Some("ovid".into()),
                        name: Some("ov".into()),
                        driver: Some("overlay".into()),
                        ..Default::default()
                    }),
                    _ => Err(BusError::not_found(format!("network {id} not found"))),
                }
            })
        }
    }

    /// A sandbox on a swarm overlay network: the endpoint the swarm allocated is in the
    /// sandbox (inspect shows it, no veth of the network service), given back with the
    /// sandbox; connect/disconnect of a running one; the swarm's refusal passes through,
    /// an unknown network stays "not found".
    #[tokio::test]
    async fn swarm_overlay_endpoints() {
        let t = TestService::start().await;
        let swarm = Arc::new(FakeSwarm::default());
        t.svc.set_swarm(swarm.clone());
        let s = t.svc.sandbox_create(req("c1", "ov")).await.unwrap();
        let ep = &s.networks["ov"];
        assert_eq!(ep.ip_address.as_deref(), Some("10.0.1.3"));
        assert_eq!(ep.ip_prefix_len, Some(24));
        assert_eq!(ep.network_id.as_deref(), Some("ovid"));
        assert_eq!(ep.mac_address.as_deref(), Some("02:42:0a:00:01:03"));
        assert_eq!(ep.gateway.as_deref(), Some(""));
        assert!(s.hosts.contains("10.0.1.3\tc1"), "{}", s.hosts);
        assert_eq!(
            *swarm.held.lock().unwrap(),
            vec![("ovid".to_string(), "c1".to_string())]
        );
        t.svc
            .sandbox_remove(SandboxRemove {
                container_id: "c1".into(),
            })
            .await
            .unwrap();
        assert!(swarm.held.lock().unwrap().is_empty());

        // connect and disconnect
        t.svc.sandbox_create(req("c2", "bridge")).await.unwrap();
        let r = t
            .svc
            .network_resolve(NetworkResolve { id: "ov".into() })
            .await
            .unwrap();
        assert_eq!(
            (r.id.as_str(), r.name.as_str(), r.driver.as_str()),
            ("ovid", "ov", "overlay")
        );
        let ep = t
            .svc
            .endpoint_create(EndpointCreate {
                container_id: "c2".into(),
                endpoint: EndpointRequest {
                    network: "ov".into(),
                    settings: Default::default(),
                },
            })
            .await
            .unwrap();
        assert_eq!(ep.network_id.as_deref(), Some("ovid"));
        assert_eq!(swarm.held.lock().unwrap().len(), 1);
        t.svc
            .endpoint_remove(EndpointRemove {
                container_id: "c2".into(),
                network: "ov".into(),
            })
            .await
            .unwrap();
        assert!(swarm.held.lock().unwrap().is_empty());

        // Moby's events: connect/disconnect of the overlay's ID, its name, driver overlay
        let evs: Vec<String> = t
            .events
            .lock()
            .unwrap()
            .iter()
            .filter(|e| e.actor.id == "ovid")
            .map(|e| {
                let a = &e.actor.attributes;
                format!(
                    "{} {} {} {}",
                    e.action, a["name"], a["type"], a["container"]
                )
            })
            .collect();
        assert_eq!(
            evs,
            vec![
                "connect ov overlay c1",
                "disconnect ov overlay c1",
                "connect ov overlay c2",
                "disconnect ov overlay c2"
            ]
        );
        let e = t.svc.sandbox_create(req("c3", "plain")).await.unwrap_err();
        assert!(
            e.message.contains("network plain not manually attachable"),
            "{}",
            e.message
        );
        let e = t.svc.sandbox_create(req("c4", "nosuch")).await.unwrap_err();
        assert_eq!(e.message, "network nosuch not found");
        let e = t
            .svc
            .network_resolve(NetworkResolve {
                id: "nosuch".into(),
            })
            .await
            .unwrap_err();
        assert_eq!(e.message, "network nosuch not found");
    }
}
