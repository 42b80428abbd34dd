//! Events from the JetStream stream every service's events land in.

use bus_schema::event::Event;
use bus_schema::BusError;

use super::BusBackend;

impl crate::routes::events::Backend for BusBackend {
    async fn events(&self, since: Option<i128>, until: Option<i128>, tx: tokio::sync::mpsc::Sender<Event>) -> Result<(), BusError> {
        use berth_bus::async_nats::jetstream::{self, consumer::pull::OrderedConfig, consumer::DeliverPolicy};
        use futures_util::StreamExt;
        let js = jetstream::new(self.bus.client().clone());
        let stream = js
            .get_stream(bus_schema::subject::EVENTS_STREAM)
            .await
            .map_err(|e| BusError::unavailable(format!("events stream: {e}")))?;
        let deliver_policy = match since {
            None => DeliverPolicy::New,
            Some(ns) => DeliverPolicy::ByStartTime {
                start_time: berth_bus::async_nats::datetime::from_nanos(ns).map_err(|e| BusError::invalid(e.to_string()))?,
            },
        };
        let consumer = stream
            .create_consumer(OrderedConfig {
                filter_subject: bus_schema::subject::EVENTS_WILDCARD.to_string(),
                deliver_policy,
                ..Default::default()
            })
            .await
            .map_err(|e| BusError::unavailable(format!("events consumer: {e}")))?;
        let mut msgs = consumer.messages().await.map_err(|e| BusError::unavailable(format!("events: {e}")))?;
        let now = berth_rules::clock::now();
        let now_ns = now.0 as i128 * 1_000_000_000 + now.1 as i128;
        let history_only = until.is_some_and(|u| u <= now_ns);
        if history_only {
            // nothing kept since `since`: end at once rather than wait for new events
            let mut stream = stream;
            let info = stream.info().await.map_err(|e| BusError::unavailable(e.to_string()))?;
            let last = info.state.last_timestamp.unix_timestamp_nanos();
            if info.state.messages == 0 || since.is_some_and(|s| last < s) {
                return Ok(());
            }
        }
        loop {
            // the history is in the stream already: a delivery that stalls (seen once
            // under CI load, after the last event) must not hold the client forever
            let next = if history_only {
                match tokio::time::timeout(std::time::Duration::from_secs(2), msgs.next()).await {
                    Ok(n) => n,
                    Err(_) => return Ok(()),
                }
            } else {
                msgs.next().await
            };
            let Some(m) = next else { break };
            let m = m.map_err(|e| BusError::unavailable(format!("events: {e}")))?;
            let pending = m.info().map(|i| i.pending).unwrap_or(0);
            if let Ok(ev) = bus_schema::decode::<Event>(&m.payload) {
                if tx.send(ev).await.is_err() {
                    return Ok(());
                }
            }
            if history_only && pending == 0 {
                return Ok(());
            }
        }
        Ok(())
    }
}
