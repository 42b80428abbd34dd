//! Requests on the swarm's own NATS system (the connection between nodes' swarm
//! services: cluster routes and leaf nodes), not on a node's bus: JSON in and out, one
//! answer awaited for a bounded time. The swarm's join handshake, a worker's request for
//! its tasks' files and the JetStream system API go through [`ask_json`].

use serde::{de::DeserializeOwned, Serialize};
use std::time::Duration;

/// Why [`ask_json`] got no answer it could read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AskError {
    /// Nothing answered in time.
    NoAnswer,
    /// The request could not be made (no responders, the connection).
    Failed(String),
    /// The question could not be encoded, or the answer decoded.
    Undecodable(String),
}

impl std::fmt::Display for AskError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            AskError::NoAnswer => f.write_str("no answer"),
            AskError::Failed(m) | AskError::Undecodable(m) => f.write_str(m),
        }
    }
}

/// `q` as JSON to `subject` on `client`; the answer, as JSON, within `within`.
pub async fn ask_json<Q: Serialize, A: DeserializeOwned>(client: &async_nats::Client, subject: String, q: &Q, within: Duration) -> Result<A, AskError> {
    let body = serde_json::to_vec(q).map_err(|e| AskError::Undecodable(e.to_string()))?;
    let msg = tokio::time::timeout(within, client.request(subject, body.into()))
        .await
        .map_err(|_| AskError::NoAnswer)?
        .map_err(|e| AskError::Failed(e.to_string()))?;
    serde_json::from_slice(&msg.payload).map_err(|e| AskError::Undecodable(e.to_string()))
}
