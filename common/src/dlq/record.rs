//! The `dlq export` / `dlq import` line format: one JSON object per message,
//! with the AMQP properties (headers keep their AMQP types) and the body in
//! base64, so a message survives the round trip byte for byte.

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use lapin::BasicProperties;
use serde::{Deserialize, Serialize};

/// One exported message.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Record {
    /// Event id, for people reading the file.
    pub id: String,
    /// The routing key it was dead-lettered with (the endpoint id).
    pub routing_key: String,
    /// All AMQP properties, headers included.
    pub properties: BasicProperties,
    /// The body, base64.
    pub body_base64: String,
}

impl Record {
    /// A record of a message.
    pub fn new(id: String, routing_key: String, properties: BasicProperties, body: &[u8]) -> Self {
        Self {
            id,
            routing_key,
            properties,
            body_base64: STANDARD.encode(body),
        }
    }

    /// The body bytes.
    ///
    /// # Errors
    /// When `body_base64` is not base64.
    pub fn body(&self) -> Result<Vec<u8>, base64::DecodeError> {
        STANDARD.decode(&self.body_base64)
    }
}
