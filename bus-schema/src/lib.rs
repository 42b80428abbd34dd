//! The bus contract. Every subject berth uses is spelled here and nowhere else.
//!
//! A request type implements [`Rpc`]: it names its service, its operation (Docker's
//! NounVerb, e.g. `ContainerCreate`), whether it is node-local, and its reply type.
//! These impls, each service's API trait, its typed client and server adapter (in
//! `shared/bus`) and the bus permissions are all generated from one table of calls
//! per service: see [`contract`].
//! Payloads are MessagePack with named fields ([`encode`]/[`decode`]). Replies travel
//! as [`WireResult`] so that errors cross the bus as a [`ErrorKind`] plus a message.
//!
//! Streams (pull progress, logs, attach/exec stdio, build output) use [`stream`]'s
//! framing: sequence numbers, an end marker and reader-granted credits.

pub mod contract;
pub mod error;
pub mod event;
pub mod gojson;
pub mod stream;
pub mod subject;
pub mod system;

pub mod builder;
pub mod images;
pub mod network;
pub mod plugin;
pub mod runtime;
pub mod storage;
pub mod swarm;

pub use contract::{secs, BusStream, Caller};
pub use error::{BusError, ErrorKind};
pub use subject::{Scope, Service};

/// Docker's API models (serde only), re-exported so every crate uses the same version.
/// They cross the bus as they are. Three fields cannot be left `None`, because
/// bollard's serde skips them when empty but requires them when reading:
/// `Volume::scope`, `PortSummary::typ` and `ImageManifestSummary::kind`.
pub use bollard_stubs::models as docker;

use serde::{de::DeserializeOwned, Serialize};

/// A typed request on the bus. The subject is derived from the constants, never typed by hand.
pub trait Rpc: Serialize + DeserializeOwned + Send + Sync + 'static {
    /// The service that serves this request.
    const SERVICE: Service;
    /// Docker-style NounVerb operation name; the last subject token.
    const OP: &'static str;
    /// The reply sent back on success.
    type Reply: Serialize + DeserializeOwned + Send + Sync + 'static;
    /// Marked `idempotent` in its table: it only reads, so a caller may send it again
    /// when the instance serving it died under the first request.
    const IDEMPOTENT: bool = false;

    /// How long the caller waits for the reply, when the table says (else the bus
    /// default, 30 s).
    fn timeout(&self) -> Option<std::time::Duration> {
        None
    }

    /// The subject for this request on `node` (ignored for cluster-wide services).
    fn subject(node: &str) -> String {
        subject::subject(Self::SERVICE, node, Self::OP)
    }
}

/// A request answered by a reply followed by a stream of `Item`s (see [`stream`]).
pub trait StreamRpc: Rpc {
    type Item: Serialize + DeserializeOwned + Send + Sync + 'static;
}

/// A stream request whose caller also writes a stream (stdin for attach and exec).
pub trait DuplexRpc: StreamRpc {
    type Input: Serialize + DeserializeOwned + Send + Sync + 'static;
}

/// A request any service answers (health ping, its part of `/info`). The subject is
/// `berth.v1.<service>[.<node>].<OP>` for the service it is sent to.
pub trait SystemRpc: Serialize + DeserializeOwned + Send + Sync + 'static {
    const OP: &'static str;
    type Reply: Serialize + DeserializeOwned + Send + Sync + 'static;

    fn subject(svc: Service, node: &str) -> String {
        subject::subject(svc, node, Self::OP)
    }
}

/// Declares `impl Rpc` (and optionally `StreamRpc`/`DuplexRpc`) for an ad-hoc request
/// type: only for tests and benchmarks of the bus itself. A service's operations
/// belong in its table (see [`contract`]), which the permissions are generated from:
/// nobody may call an operation declared here on a node started by `berth up`.
#[doc(hidden)]
#[macro_export]
macro_rules! rpc {
    ($svc:ident, $req:ident => $reply:ty) => {
        impl $crate::Rpc for $req {
            const SERVICE: $crate::Service = $crate::Service::$svc;
            const OP: &'static str = stringify!($req);
            type Reply = $reply;
        }
    };
    ($svc:ident, $req:ident => $reply:ty, stream $item:ty) => {
        $crate::rpc!($svc, $req => $reply);
        impl $crate::StreamRpc for $req {
            type Item = $item;
        }
    };
    ($svc:ident, $req:ident => $reply:ty, stream $item:ty, input $input:ty) => {
        $crate::rpc!($svc, $req => $reply, stream $item);
        impl $crate::DuplexRpc for $req {
            type Input = $input;
        }
    };
}

/// Every request subject on `node`, for the golden test and for documentation.
pub fn all_subjects(node: &str) -> Vec<String> {
    let mut v = Vec::new();
    for svc in Service::ALL {
        for op in system::OPS {
            v.push(subject::subject(svc, node, op));
        }
    }
    for (svc, ops) in [
        (Service::Images, images::OPS),
        (Service::Storage, storage::OPS),
        (Service::Runtime, runtime::OPS),
        (Service::Network, network::OPS),
        (Service::Builder, builder::OPS),
        (Service::Swarm, swarm::OPS),
    ] {
        for op in ops {
            v.push(subject::subject(svc, node, op));
        }
    }
    v
}

/// How a reply crosses the bus.
pub type WireResult<T> = Result<T, BusError>;

/// Encode a message as MessagePack with named fields.
pub fn encode<T: Serialize + ?Sized>(v: &T) -> Result<Vec<u8>, BusError> {
    rmp_serde::to_vec_named(v).map_err(|e| BusError::internal(format!("encode: {e}")))
}

/// Decode a MessagePack message.
pub fn decode<T: DeserializeOwned>(b: &[u8]) -> Result<T, BusError> {
    rmp_serde::from_slice(b).map_err(|e| BusError::internal(format!("decode: {e}")))
}

#[cfg(test)]
pub(crate) mod testutil {
    use serde::{de::DeserializeOwned, Serialize};
    use std::fmt::Debug;

    /// Encode, decode, and compare: a message must survive the bus unchanged.
    pub fn roundtrip<T: Serialize + DeserializeOwned + PartialEq + Debug>(v: T) {
        let b = crate::encode(&v).unwrap();
        let back: T = crate::decode(&b).unwrap();
        assert_eq!(v, back);
    }
}
