//! Publishing hookpost's operational events ([`common::operational`]) from
//! the dispatcher: [`Notices::emit`] never waits; the [`outbox`] writer
//! publishes them to the scoped events exchange. Lost ones are counted in
//! `hookpost_operational_events_total{result="lost"}`.

use crate::delivery::outbox::{self, Outgoing, Purpose};
use common::amqp::AmqpClient;
use common::operational::Notice;
use common::topology::Topology;
use prometheus::IntCounterVec;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// Where workers hand their operational events (cheap to clone).
#[derive(Debug, Clone)]
pub struct Notices {
    tx: mpsc::Sender<Outgoing>,
    exchange: String,
    counted: IntCounterVec,
}

impl Notices {
    /// Starts the writer on `client`'s connection; it ends when `stop`
    /// fires, after publishing what is buffered.
    pub fn start(
        client: AmqpClient,
        topology: Topology,
        counted: IntCounterVec,
        stop: CancellationToken,
    ) -> (Self, JoinHandle<()>) {
        let exchange = topology.scoped_exchange();
        let purpose = Purpose::Events;
        let (tx, task) = outbox::start(client, topology, purpose, counted.clone(), stop);
        (
            Self {
                tx,
                exchange,
                counted,
            },
            task,
        )
    }

    /// Hands `notice` to the writer; never waits. A full buffer loses it.
    pub fn emit(&self, notice: &Notice<'_>) {
        let Ok((event, key)) = notice.event() else {
            self.counted.with_label_values(&["lost"]).inc();
            return;
        };
        let out = Outgoing {
            exchange: self.exchange.clone(),
            key,
            body: event.to_vec(),
            message_id: Some(event.id),
        };
        if self.tx.try_send(out).is_err() {
            self.counted.with_label_values(&["lost"]).inc();
        }
    }
}
