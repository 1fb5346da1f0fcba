//! The durable outbox: one SQLite database in WAL mode, owned by a single
//! writer thread. Ingest hands it batches of encoded events; it group-commits
//! everything waiting into CRC-checked blocks and only then acknowledges.
//! A block is a record run (a partition's events as Kafka records,
//! compressed with the wire's codec, see `run`) where the forwarder has
//! said how a topic is partitioned, otherwise a block of events (LZ4). The forwarder reads blocks by priority, in sequence order
//! within one, and deletes them once Kafka has acknowledged every event in
//! them.
//!
//! A block is the unit of storage: one row holds many events (cheap per
//! event, few flash writes), `seq_first..seq_first+count` are its events'
//! sequence numbers. Counters live in the `meta` table and are updated in
//! the same transactions, so start-up needs no scan.
//!
//! ```text
//! handle     Outbox (requests), Appender (one per connection), start
//!   writer     the writer thread: group commit, reads, finish, caps, quarantine
//!   offline    the outbox as `ferry status` and `ferry dlq` open it
//!     hot        the append path's prepared statements
//!     schema     migrations and the meta counters
//!       open_error what opening the outbox can fail on (typed)
//!     plan dead_letter loss   producer state and plans, dead letters, loss markers
//!     mqtt_marks heartbeat    MQTT redelivery marks; the heartbeat's slot
//!     reserve    disk space held back so the drain can write on a full disk
//!     command    what the handles send the writer; errors and options
//!       storage_error  a request's SQLite failure, with the step it was at
//!       corruption     why a stored row read back is quarantined
//!       block      the stored block: compression, checksum, verification
//!         run        the stored record run: a partition's events as Kafka
//!                    records, compressed as the wire takes them
//!       config     the [outbox] section
//! ```

mod block;
mod command;
pub mod config;
mod corruption;
pub mod dead_letter;
mod handle;
pub mod heartbeat;
mod hot;
pub mod loss;
pub mod mqtt_marks;
pub mod offline;
pub mod open_error;
pub mod plan;
mod reserve;
pub use reserve::free_bytes;
pub mod run;
mod schema;
mod storage_error;
pub use storage_error::StorageError;
mod writer;

pub use block::{Block, BlockEvents, StoredRun, verify_block};
pub use command::{
    AppendBatch, CorruptBlock, Options, OutboxError, ReadLimits, StoreError, Waiting,
};
pub use corruption::Corruption;
pub use handle::{Appender, Outbox, start};
pub use schema::Counters;
pub use writer::open_connection;

#[cfg(test)]
mod tests;
