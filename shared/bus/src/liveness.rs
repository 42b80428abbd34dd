//! Knowing when the other side is gone, so that no request or stream waits for an
//! answer that cannot come.
//!
//! Two things end an exchange early:
//! * an `exited` notice from `berth up`, published the moment it reaps a service
//!   ([`bus_schema::system::ServiceExited`]). Every [`crate::Bus`] keeps the last
//!   notices. A request still waiting for service S fails when S's instance on the
//!   target node exited after the request was sent: the notice carries the
//!   CLOCK_MONOTONIC instant of the reaping, and the next instance is started only
//!   after it, so "sent before that instant" means "sent to the dead one". (For a
//!   node on another host, whose clock is not ours, a notice received after the
//!   send counts.) A stream knows its peer exactly: the reply names the writer's pid
//!   (`Berth-Instance`), the request the caller's (`Berth-Caller`).
//! * a drop of this process's bus connection (nats-server died): what was in flight
//!   may be lost on either way, so requests fail and streams end; new requests wait
//!   a moment for the reconnection.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;

use bus_schema::{system::ServiceExited, BusError};
use tokio::sync::watch;

/// Notices kept for late checks (a stream set up just after its peer's notice).
const KEEP: usize = 64;

#[derive(Default)]
pub(crate) struct State {
    pub connected: bool,
    pub disconnects: u64,
    /// Notices received so far (a counter that only grows).
    pub seq: u64,
    exits: VecDeque<(u64, Arc<ServiceExited>)>,
}

/// Shared by every clone of a [`crate::Bus`].
pub(crate) struct Liveness {
    tx: watch::Sender<State>,
    /// This node's id: notices of it compare monotonic instants.
    node: String,
}

/// The other side of an exchange.
#[derive(Clone, Debug)]
pub(crate) enum Peer {
    /// Whichever instance of service `name` on `node` takes a request sent at `sent_ns`.
    Service { name: String, node: String, sent_ns: u64, seq: u64 },
    /// One known instance.
    Instance { name: String, node: String, pid: u32 },
    /// A caller that did not say who it is: only a dropped connection ends the exchange.
    Unknown,
}

impl Peer {
    /// `<node>.<name>.<pid>` as sent in `Berth-Caller`.
    pub fn parse_caller(s: &str) -> Option<Peer> {
        let mut it = s.rsplitn(3, '.');
        let pid = it.next()?.parse().ok()?;
        let name = it.next()?.to_string();
        let node = it.next()?.to_string();
        Some(Peer::Instance { name, node, pid })
    }
}

/// CLOCK_MONOTONIC in nanoseconds: one clock for every process of the host.
pub fn mono_ns() -> u64 {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: clock_gettime writes the struct it is given
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

impl Liveness {
    pub fn new(node: &str) -> Arc<Liveness> {
        let (tx, _) = watch::channel(State { connected: true, ..Default::default() });
        Arc::new(Liveness { tx, node: node.to_string() })
    }

    pub fn on_event(&self, ev: &async_nats::Event) {
        match ev {
            async_nats::Event::Disconnected => self.tx.send_modify(|s| {
                s.connected = false;
                s.disconnects += 1;
            }),
            async_nats::Event::Connected => self.tx.send_modify(|s| s.connected = true),
            _ => {}
        }
    }

    pub fn on_exited(&self, n: ServiceExited) {
        self.tx.send_modify(|s| {
            s.seq += 1;
            let seq = s.seq;
            s.exits.push_back((seq, Arc::new(n)));
            if s.exits.len() > KEEP {
                s.exits.pop_front();
            }
        });
    }

    /// Wait up to `max` for the connection to be up; false if it is still down.
    pub async fn connected(&self, max: Duration) -> bool {
        let mut rx = self.tx.subscribe();
        tokio::time::timeout(max, rx.wait_for(|s| s.connected)).await.is_ok_and(|r| r.is_ok())
    }

    /// A request to `name` on `node` about to be sent.
    pub fn service(&self, name: &str, node: &str) -> Peer {
        Peer::Service { name: name.to_string(), node: node.to_string(), sent_ns: mono_ns(), seq: self.tx.borrow().seq }
    }

    /// Watch `peer` from now on.
    pub fn watch(&self, peer: Peer) -> Watch {
        let rx = self.tx.subscribe();
        let disconnects = rx.borrow().disconnects;
        Watch { rx, peer, disconnects, node: self.node.clone() }
    }
}

/// Resolves (with the error to report) once the peer is gone.
pub(crate) struct Watch {
    rx: watch::Receiver<State>,
    peer: Peer,
    disconnects: u64,
    node: String,
}

impl Watch {
    pub fn peer(&self) -> &Peer {
        &self.peer
    }

    /// Why the peer is gone, if it is.
    pub fn check(&self) -> Option<BusError> {
        let s = self.rx.borrow();
        if s.disconnects != self.disconnects {
            return Some(BusError::unavailable(
                "the bus connection was lost (nats-server is restarting); the request may or may not have taken effect",
            ));
        }
        let hit = s.exits.iter().find(|(seq, n)| match &self.peer {
            Peer::Service { name, node, sent_ns, seq: seq0 } => {
                n.service.name() == name
                    && &n.node == node
                    && if *node == self.node { n.at_mono_ns > *sent_ns } else { seq > seq0 }
            }
            Peer::Instance { name, node, pid } => n.service.name() == name && &n.node == node && n.pid == *pid,
            Peer::Unknown => false,
        });
        hit.map(|(_, n)| {
            BusError::unavailable(format!(
                "the {} service exited (pid {}) while handling the request; it is being restarted, and the request may or may not have taken effect",
                n.service, n.pid
            ))
        })
    }

    /// Resolves when the peer is gone; never if it stays.
    pub async fn gone(&mut self) -> BusError {
        loop {
            if let Some(e) = self.check() {
                return e;
            }
            if self.rx.changed().await.is_err() {
                std::future::pending::<()>().await;
            }
        }
    }
}

/// Subscribe to every node's `exited` notices for `live`.
pub(crate) async fn follow_exits(client: &async_nats::Client, live: Arc<Liveness>) -> Result<(), BusError> {
    use futures_util::StreamExt;
    let subject = format!("{}.instance.*.*.{}", bus_schema::subject::PREFIX, bus_schema::subject::InstanceEvent::Exited.token());
    let mut sub = client
        .subscribe(subject)
        .await
        .map_err(|e| BusError::unavailable(format!("bus subscribe failed: {e}")))?;
    tokio::spawn(async move {
        while let Some(m) = sub.next().await {
            match bus_schema::decode::<ServiceExited>(&m.payload) {
                Ok(n) => live.on_exited(n),
                Err(e) => tracing::debug!(error = %e, "unreadable exit notice"),
            }
        }
    });
    Ok(())
}
