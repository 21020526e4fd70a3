//! The declarations: the base topology every process needs, endpoint
//! queues (declared, retired, revived, deleted), wait tiers, and the
//! arguments each queue is declared with.

use super::{Topology, TopologyError};
use crate::config::QueueType;
use lapin::options::{
    ExchangeDeclareOptions, QueueBindOptions, QueueDeclareOptions, QueueDeleteOptions,
};
use lapin::types::{AMQPValue, FieldTable, LongString};
use lapin::{Channel, Connection, ExchangeKind};

/// Prefixes whose base topology this process declared through
/// [`Topology::declare_base_once`].
static BASE_DECLARED: crate::names::Names = crate::names::Names::new();

impl Topology {
    /// [`Topology::declare_base`] the first time this process asks for its
    /// prefix; later calls only take the quorum member count settled then
    /// (no round trip). For callers that declare on every request (each API
    /// write): when a declaration after it fails, the base may be gone
    /// since (or this is another broker), so call
    /// [`Topology::forget_base`] and declare again.
    ///
    /// # Errors
    /// As [`Topology::declare_base`].
    pub async fn declare_base_once(
        &self,
        conn: &Connection,
        ch: &Channel,
    ) -> Result<(), TopologyError> {
        if BASE_DECLARED.contains(self.prefix())
            && (self.queue_type != QueueType::Quorum || self.replicas.adopt_last(self.prefix()))
        {
            return Ok(());
        }
        self.declare_base(conn, ch).await?;
        BASE_DECLARED.insert(self.prefix());
        Ok(())
    }

    /// Makes the next [`Topology::declare_base_once`] declare everything.
    pub fn forget_base(&self) {
        BASE_DECLARED.remove(self.prefix());
    }

    /// Declares the bindings-state queue (keeps only the newest message).
    ///
    /// # Errors
    /// [`TopologyError`] naming the queue.
    pub async fn declare_bindings_state(&self, ch: &Channel) -> Result<(), TopologyError> {
        let mut args = self.queue_args();
        // Only the newest record matters: older ones are dropped from the head.
        args.insert("x-max-length".into(), AMQPValue::LongLongInt(1));
        self.declare_queue(ch, &self.bindings_state(), args).await
    }

    /// Declares the exchanges and queues every process needs: events,
    /// unrouted, endpoints, dead. With quorum queues it first settles, on
    /// channels of `conn`'s own, the member count the installation's queues
    /// were created with (`replicas.rs`), so call it before declaring any
    /// other queue.
    ///
    /// # Errors
    /// [`TopologyError`] naming the object the broker refused.
    pub async fn declare_base(&self, conn: &Connection, ch: &Channel) -> Result<(), TopologyError> {
        if self.queue_type == QueueType::Quorum {
            self.replicas.settle(self, conn).await?;
        }
        let mut events_args = FieldTable::default();
        // Events that match no binding go to the unrouted exchange instead of
        // being dropped; a `mandatory` publish then counts as routed.
        events_args.insert("alternate-exchange".into(), long_string(&self.unrouted()));
        declare_exchange(
            ch,
            &self.unrouted(),
            ExchangeKind::Fanout,
            FieldTable::default(),
        )
        .await?;
        declare_exchange(
            ch,
            &self.events_exchange(),
            ExchangeKind::Topic,
            events_args,
        )
        .await?;
        declare_exchange(
            ch,
            &self.unrouted_scoped(),
            ExchangeKind::Fanout,
            FieldTable::default(),
        )
        .await?;
        let mut scoped_args = FieldTable::default();
        scoped_args.insert(
            "alternate-exchange".into(),
            long_string(&self.unrouted_scoped()),
        );
        declare_exchange(
            ch,
            &self.scoped_exchange(),
            ExchangeKind::Topic,
            scoped_args,
        )
        .await?;
        declare_exchange(
            ch,
            &self.endpoints_exchange(),
            ExchangeKind::Direct,
            FieldTable::default(),
        )
        .await?;
        declare_exchange(
            ch,
            &self.dead(),
            ExchangeKind::Fanout,
            FieldTable::default(),
        )
        .await?;

        let mut unrouted_args = self.queue_args();
        unrouted_args.insert(
            "x-max-length".into(),
            AMQPValue::LongLongInt(self.unrouted_max_length.into()),
        );
        // When full, refuse new unrouted events (the publisher sees a nack)
        // rather than silently dropping the oldest.
        unrouted_args.insert("x-overflow".into(), long_string("reject-publish"));
        self.declare_queue(ch, &self.unrouted(), unrouted_args)
            .await?;
        bind(ch, &self.unrouted(), &self.unrouted(), "").await?;

        let mut scoped_unrouted_args = self.queue_args();
        scoped_unrouted_args.insert(
            "x-max-length".into(),
            AMQPValue::LongLongInt(self.unrouted_max_length.into()),
        );
        // Unlike `unrouted`, drop the oldest when full: a tenant without an
        // endpoint for a type is ordinary, and must not make publishes fail.
        scoped_unrouted_args.insert("x-overflow".into(), long_string("drop-head"));
        self.declare_queue(ch, &self.unrouted_scoped(), scoped_unrouted_args)
            .await?;
        bind(ch, &self.unrouted_scoped(), &self.unrouted_scoped(), "").await?;

        self.declare_queue(ch, &self.dead(), self.queue_args())
            .await?;
        bind(ch, &self.dead(), &self.dead(), "").await?;
        Ok(())
    }

    /// Declares one endpoint's queue, dead-lettering to `dead`, bound with
    /// each of its binding `keys` ([`crate::routing::binding_keys`]) to the
    /// events or the scoped exchange, and to the endpoints exchange with its id.
    ///
    /// # Errors
    /// [`TopologyError`] naming the object the broker refused.
    pub async fn declare_endpoint(
        &self,
        ch: &Channel,
        endpoint_id: &str,
        keys: &[String],
    ) -> Result<(), TopologyError> {
        let queue = self.endpoint_queue(endpoint_id);
        let mut args = self.dead_lettering_args(&self.dead());
        if self.queue_type == QueueType::Quorum {
            // A message redelivered this often without an ack (a crash loop on
            // it) is dead-lettered instead of blocking the queue forever.
            args.insert(
                "x-delivery-limit".into(),
                AMQPValue::LongLongInt(self.delivery_limit.into()),
            );
        }
        self.declare_queue(ch, &queue, args).await?;
        for key in keys {
            bind(ch, &queue, &self.exchange_of_key(key), key).await?;
        }
        bind(ch, &queue, &self.endpoints_exchange(), endpoint_id).await
    }

    /// Declares one wait tier: a fanout exchange and a queue whose messages
    /// expire after `delay_ms` back into the endpoints exchange, keeping their
    /// routing key (the endpoint id).
    ///
    /// # Errors
    /// [`TopologyError`] naming the object the broker refused.
    pub async fn declare_wait_tier(
        &self,
        ch: &Channel,
        delay_ms: u64,
    ) -> Result<(), TopologyError> {
        let exchange = self.retry_exchange(delay_ms);
        let queue = self.wait_queue(delay_ms);
        declare_exchange(ch, &exchange, ExchangeKind::Fanout, FieldTable::default()).await?;
        let mut args = self.dead_lettering_args(&self.endpoints_exchange());
        // One TTL for the whole queue: messages expire in order, none waits
        // behind a longer one.
        args.insert(
            "x-message-ttl".into(),
            AMQPValue::LongLongInt(i64::try_from(delay_ms).unwrap_or(i64::MAX)),
        );
        self.declare_queue(ch, &queue, args).await?;
        bind(ch, &queue, &exchange, "").await
    }

    /// Detaches a removed endpoint's queue: unbinds its binding keys and its
    /// retry route, and routes retries still waiting for it to the
    /// dead-letter queue instead (they would otherwise be dropped as
    /// unroutable when they come back).
    ///
    /// # Errors
    /// The broker's error.
    pub async fn retire_endpoint(
        &self,
        ch: &Channel,
        endpoint_id: &str,
        keys: &[String],
    ) -> Result<(), lapin::Error> {
        let queue = self.endpoint_queue(endpoint_id);
        for key in keys {
            ch.queue_unbind(
                queue.as_str().into(),
                self.exchange_of_key(key).as_str().into(),
                key.as_str().into(),
                FieldTable::default(),
            )
            .await?;
        }
        ch.queue_bind(
            self.dead().as_str().into(),
            self.endpoints_exchange().as_str().into(),
            endpoint_id.into(),
            lapin::options::QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await?;
        ch.queue_unbind(
            queue.as_str().into(),
            self.endpoints_exchange().as_str().into(),
            endpoint_id.into(),
            FieldTable::default(),
        )
        .await
    }

    /// Undoes the retry route [`Topology::retire_endpoint`] set for an id now in use again.
    ///
    /// # Errors
    /// The broker's error.
    pub async fn revive_endpoint(
        &self,
        ch: &Channel,
        endpoint_id: &str,
    ) -> Result<(), lapin::Error> {
        ch.queue_unbind(
            self.dead().as_str().into(),
            self.endpoints_exchange().as_str().into(),
            endpoint_id.into(),
            FieldTable::default(),
        )
        .await
    }

    /// Deletes an endpoint's queue (the caller has checked it is empty and
    /// unused: quorum queues do not implement `if-empty`; classic ones get it
    /// as a last guard).
    ///
    /// # Errors
    /// The broker's error.
    pub async fn delete_endpoint_queue(
        &self,
        ch: &Channel,
        endpoint_id: &str,
    ) -> Result<u32, lapin::Error> {
        ch.queue_delete(
            self.endpoint_queue(endpoint_id).as_str().into(),
            QueueDeleteOptions {
                if_empty: self.queue_type == QueueType::Classic,
                ..QueueDeleteOptions::default()
            },
        )
        .await
    }

    pub(super) fn queue_args(&self) -> FieldTable {
        self.queue_args_with(self.replicas.arg())
    }

    /// The arguments of every queue, with `replicas` as the quorum
    /// queues' `x-quorum-initial-group-size` (`None`: without it).
    pub(super) fn queue_args_with(&self, replicas: Option<u8>) -> FieldTable {
        let mut args = FieldTable::default();
        let kind = match self.queue_type {
            QueueType::Quorum => "quorum",
            QueueType::Classic => "classic",
        };
        args.insert("x-queue-type".into(), long_string(kind));
        if let (QueueType::Quorum, Some(n)) = (self.queue_type, replicas) {
            args.insert(
                "x-quorum-initial-group-size".into(),
                AMQPValue::LongLongInt(n.into()),
            );
        }
        args
    }

    pub(super) fn dead_lettering_args(&self, exchange: &str) -> FieldTable {
        let mut args = self.queue_args();
        args.insert("x-dead-letter-exchange".into(), long_string(exchange));
        if self.queue_type == QueueType::Quorum {
            // Quorum queues dead-letter at most once (a message can vanish if
            // the target is unavailable) unless told at-least-once, which in
            // turn requires reject-publish overflow.
            args.insert(
                "x-dead-letter-strategy".into(),
                long_string("at-least-once"),
            );
            args.insert("x-overflow".into(), long_string("reject-publish"));
        }
        args
    }

    pub(super) async fn declare_queue(
        &self,
        ch: &Channel,
        name: &str,
        args: FieldTable,
    ) -> Result<(), TopologyError> {
        ch.queue_declare(
            name.into(),
            QueueDeclareOptions {
                durable: true,
                ..QueueDeclareOptions::default()
            },
            args,
        )
        .await
        .map(drop)
        .map_err(|e| TopologyError::from_lapin(&format!("queue {name}"), e))
    }
}

fn long_string(s: &str) -> AMQPValue {
    AMQPValue::LongString(LongString::from(s))
}

async fn declare_exchange(
    ch: &Channel,
    name: &str,
    kind: ExchangeKind,
    args: FieldTable,
) -> Result<(), TopologyError> {
    ch.exchange_declare(
        name.into(),
        kind,
        ExchangeDeclareOptions {
            durable: true,
            ..ExchangeDeclareOptions::default()
        },
        args,
    )
    .await
    .map_err(|e| TopologyError::from_lapin(&format!("exchange {name}"), e))
}

async fn bind(ch: &Channel, queue: &str, exchange: &str, key: &str) -> Result<(), TopologyError> {
    ch.queue_bind(
        queue.into(),
        exchange.into(),
        key.into(),
        QueueBindOptions::default(),
        FieldTable::default(),
    )
    .await
    .map_err(|e| TopologyError::from_lapin(&format!("binding {queue} <- {exchange} ({key})"), e))
}
