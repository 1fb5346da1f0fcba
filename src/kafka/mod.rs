//! ferry's own Kafka producer, layered as rskafka lays itself out; each
//! layer imports only the ones below it:
//!
//! ```text
//! producer     idempotent producer id, Produce requests, throttling
//! consumer     a topic read from start to end (ListOffsets, Fetch: `ferry fleet`)
//!   cluster      bootstrap, metadata (naming topics), leaders, connections
//!     connection   one TCP/TLS connection per broker, SASL, pipelining, timeouts
//!       sasl         the SASL exchange's steps (rsasl), typed errors
//!       uplink       bytes on the wire, counted, and the bandwidth cap
//!       wire         framing around the `kafka-protocol` message codecs
//!         answers      ferry's own decoders for the answers it reads
//!       record_batch ferry's record-batch encoder (v2, LZ4 frame or zstd, CRC-32C)
//!         crc_combine  CRC-32C of joined bytes from their CRCs (stored runs)
//!       record_read  record batches read back (bounded, checked)
//!       errors       error classes: what ferry does about each Kafka error
//!       throttle     KIP-219: which request versions the client holds off for
//!       partitioner  the Java client's murmur2 partitioner; sticky keyless batches
//! ```
//!
//! The forwarder (`forward`) decides what to send; nothing here retries on
//! its own.

pub mod answers;
pub mod cluster;
pub mod connection;
pub mod consumer;
pub mod crc_combine;
pub mod errors;
pub mod partitioner;
pub mod producer;
pub mod record_batch;
pub mod record_read;
pub mod sasl;
pub mod throttle;
pub mod uplink;
pub mod wire;
