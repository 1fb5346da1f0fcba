//! Launching a window: the cluster and its topics, producer ids, batches
//! cut and the plan stored before anything is sent, then one task per
//! lane.

use super::flight::{self, Ticket};
use super::lane::LaneJob;
use super::lane_outcome::LaneOutcome;
use super::plan::{self, Item, Lane, whole_stored_run};
use super::security;
use super::streams::Idempotence;
use super::window::Window;
use super::{Chain, Forwarder, LOCAL_STORAGE, NO_LEADER, RECORD_OVERHEAD};
use crate::kafka::cluster::Cluster;
use crate::kafka::errors::{Class, Failure};
use crate::kafka::producer;
use crate::outbox::Block;
use crate::outbox::plan::{PlanSave, ProducerMeta};
use log::{error, info, warn};
use std::sync::Arc;
use std::sync::atomic::AtomicUsize;
use std::time::Instant;
use tokio::task::JoinSet;

impl Forwarder {
    /// For each block of the window: is it still in the outbox? (If the
    /// outbox cannot tell, assume so: sending twice beats losing.)
    pub(super) async fn still_stored(&self, blocks: &[Block]) -> Vec<bool> {
        let ids: Vec<i64> = blocks.iter().map(|b| b.seq_first).collect();
        match self.outbox.present(ids).await {
            Ok(present) => blocks
                .iter()
                .map(|b| present.binary_search(&b.seq_first).is_ok())
                .collect(),
            Err(_) => vec![true; blocks.len()],
        }
    }

    /// Producer ids and sequences belong to one cluster (KIP-98: the
    /// broker keeps producer state per cluster). When the brokers now name
    /// another cluster id than the streams were numbered for (a reload to
    /// other brokers, a cluster rebuilt, a data dir moved), the streams
    /// start afresh with ids of this cluster, and planned lanes are cut and
    /// numbered again: their events go at least once, and ferry says so.
    pub(super) fn bind_cluster(&mut self, window: &mut Window) {
        let Some(current) = self
            .cluster
            .as_ref()
            .and_then(|c| c.cluster_id())
            .map(str::to_string)
        else {
            return;
        };
        if let Some(old) = self
            .streams_cluster
            .as_deref()
            .filter(|old| *old != current)
        {
            warn!(
                "the brokers now belong to Kafka cluster {current}, not {old}: ferry takes new producer ids there; events planned for {old} and not yet acknowledged are sent again at least once"
            );
            self.streams.reset();
            self.at_least_once = Some(format!("events planned for cluster {old}"));
            self.publish_state(None);
        }
        self.streams_cluster = Some(current.clone());
        match window.cluster.as_deref() {
            Some(planned) if planned != current => {
                if let Some(lanes) = window.lanes.as_mut() {
                    for lane in lanes.iter_mut().filter(|l| !l.settled()) {
                        lane.cut_again();
                    }
                }
                warn!(
                    "a delivery window planned for Kafka cluster {planned} goes to cluster {current} under new producer ids: its events are sent at least once"
                );
                self.at_least_once = Some(format!("events planned for cluster {planned}"));
                self.publish_state(None);
            }
            _ => {}
        }
        window.cluster = Some(current);
    }

    /// How long the broker may take to replicate a produce (`timeout_ms`):
    /// the request timeout.
    pub(super) fn produce_timeout_ms(&self) -> i32 {
        self.config
            .request_timeout
            .as_millis()
            .min(i32::MAX as u128) as i32
    }

    /// The cluster, set up on first use (TLS and SASL files are read then:
    /// a file changed since start-up is a configuration error now).
    pub(super) fn cluster(&mut self) -> Result<&mut Cluster, Failure> {
        if self.cluster.is_none() {
            let config = security::connection_config(&self.config, self.uplink.clone())?;
            self.cluster = Some(Cluster::new(
                self.config.brokers.clone(),
                config,
                self.config.allow_auto_create_topics,
            ));
        }
        Ok(self.cluster.as_mut().expect("set above"))
    }

    /// Make sure every destination topic of `blocks` has been asked about
    /// (one Metadata request naming those not known yet).
    pub(super) async fn ensure_topics(&mut self, blocks: &[Block]) -> Result<(), Failure> {
        let mut wanted: Vec<String> = Vec::new();
        self.cluster()?;
        {
            let cluster = self.cluster.as_ref().expect("set up above");
            for block in blocks {
                self.router.for_each_destination(&block.topic, |t| {
                    if cluster.partition_count(t).is_none() && !wanted.iter().any(|w| w == t) {
                        wanted.push(t.to_string());
                    }
                });
            }
        }
        let cluster = self.cluster()?;
        // Also when all are known: it opens the connection (and learns the
        // brokers) before anything is produced.
        if !wanted.is_empty() {
            cluster.refresh(&wanted).await?;
        } else {
            cluster.any_connection().await?;
        }
        Ok(())
    }

    /// A producer id from the broker, if any stream needs one now.
    pub(super) async fn ensure_producer_ids(&mut self, lanes: &[Lane]) -> Result<(), Failure> {
        let needed = lanes
            .iter()
            .filter(|l| !l.settled())
            .any(|l| self.streams.needs_producer_id(&l.topic, l.partition));
        if !needed {
            return Ok(());
        }
        let conn = self.cluster()?.any_connection().await?;
        let id = producer::init_producer_id(&conn).await?;
        let first = self.streams.idempotence == Idempotence::Unknown;
        match id {
            Some(p) if first => info!(
                "Kafka gave ferry producer id {} (epoch {}): exactly-once delivery (idempotent producer)",
                p.producer_id, p.epoch
            ),
            Some(p) => info!(
                "new producer id {} for streams that start afresh",
                p.producer_id
            ),
            None => warn!(
                "broker {} gives no idempotent producer id (no InitProducerId, or IdempotentWrite not authorised): delivery is at-least-once; consumers can drop duplicates by the ferry-id header",
                conn.addr()
            ),
        }
        self.streams.producer_id_received(id);
        self.publish_state(None);
        Ok(())
    }

    /// Plan `window` (on its first attempt), cut and number the lanes that
    /// need it (storing the plan before anything is sent), and start a job
    /// for each lane with events left. With a `chain`, each job first waits
    /// for the previous lane of its partition (see [`Chain`]).
    pub(super) async fn launch(
        &mut self,
        window: &mut Window,
        mut chain: Option<&mut Chain>,
    ) -> Result<(JoinSet<(usize, LaneOutcome)>, Arc<AtomicUsize>), Failure> {
        let blocks = window.blocks.clone();
        self.ensure_topics(&blocks).await?;
        self.bind_cluster(window);
        if window.lanes.is_none() {
            // Connecting may have taken a while: leave out blocks the outbox
            // dropped by policy meanwhile (they are counted and announced).
            let keep = self.still_stored(&blocks).await;
            let (lanes, undecodable) = self.plan(&blocks, &keep);
            if !undecodable.is_empty() {
                // Stored by this ferry and checksummed, so a bug: said
                // loudly, counted as quarantined, the rest goes on.
                error!(
                    "{} stored runs do not decode and cannot be sent (first: {}); quarantined",
                    undecodable.len(),
                    undecodable[0].why
                );
                self.outbox
                    .quarantine(undecodable)
                    .await
                    .map_err(|e| Failure::new(Class::Transient, LOCAL_STORAGE, e.to_string()))?;
            }
            window.lanes = Some(lanes);
        }
        let mut lanes = window.lanes.take().expect("planned above");
        for lane in &mut lanes {
            lane.undefer();
        }
        // Lanes whose topic got parked since the window was read.
        self.hold_parked(&blocks, &mut lanes);
        // Lanes whose topic Kafka does not know (yet).
        let missing: Vec<usize> = (0..lanes.len())
            .filter(|&i| {
                !lanes[i].abandoned
                    && self
                        .cluster
                        .as_ref()
                        .is_none_or(|c| c.partition_count(&lanes[i].topic).is_none())
            })
            .collect();
        for i in missing {
            let topic = lanes[i].topic.clone();
            let code = self
                .cluster
                .as_ref()
                .and_then(|c| c.topic(&topic))
                .map_or(3, |t| if t.error == 0 { 5 } else { t.error });
            let hint = if self.config.allow_auto_create_topics {
                "not known to Kafka yet (the broker may be creating it, or does not create topics: create it)"
            } else {
                "does not exist on the Kafka cluster (kafka.allow_auto_create_topics = false: create it)"
            };
            let f = Failure::from_code(code, &format!("topic {topic} {hint}"), None);
            self.abandon_topic(&blocks, &mut lanes, &topic, &f);
        }
        let result = self.cut_and_save(window, &mut lanes).await;
        window.lanes = Some(lanes);
        result?;
        // Every leader first: once a job is started, its outcome is needed.
        let mut leaders = Vec::new();
        let unsettled: Vec<(usize, String, i32)> = window
            .lanes
            .as_ref()
            .expect("set above")
            .iter()
            .enumerate()
            .filter(|(_, l)| !l.settled())
            .map(|(i, l)| (i, l.topic.clone(), l.partition))
            .collect();
        // A partition without a leader holds up only its own lanes (when
        // the window's plan is stored: it can be put aside, see
        // [`deferral`]); so do partitions with lanes put aside already.
        let may_defer = window.saved;
        for (i, topic, partition) in unsettled {
            self.stats.beat_forward();
            if may_defer && self.deferral.waits(&topic, partition, Instant::now()) {
                Self::defer_lane(window, i);
                continue;
            }
            let cluster = self.cluster()?;
            let conn = match cluster.leader(&topic, partition).await {
                Ok(c) => c,
                Err(f) if may_defer && f.name == NO_LEADER => {
                    let delay = self.deferral.no_leader(&topic, partition, Instant::now());
                    self.loud(
                        &format!("leader:{topic}/{partition}"),
                        &format!(
                            "{}: its events wait (looked for again in {} ms); other partitions and topics go on",
                            f.message,
                            delay.as_millis()
                        ),
                    );
                    Self::defer_lane(window, i);
                    continue;
                }
                Err(f) => {
                    cluster.forget_topic(&topic);
                    return Err(f);
                }
            };
            let version = producer::produce_version(&conn, self.codec)?;
            leaders.push((i, conn, version));
        }
        let lanes = window.lanes.as_ref().expect("set above");
        let mut set = JoinSet::new();
        let left = Arc::new(AtomicUsize::new(0));
        let timeout_ms = self.produce_timeout_ms();
        for (i, conn, version) in leaders {
            let lane = &lanes[i];
            let producer_id = lane.producer.map(|p| p.producer_id);
            let (after, hand_over) = match chain.as_deref_mut() {
                Some(chain) => {
                    let (tx, rx) = flight::hand_over();
                    let after =
                        chain.insert((lane.topic.clone(), lane.partition), (rx, producer_id));
                    (after, Some(tx))
                }
                None => (None, None),
            };
            // A lane that follows one of the same producer id in its
            // partition starts sending only once that one has sent all
            // its batches, the first of them answered: the broker holds
            // the producer's state by then. Otherwise the first batch goes
            // alone, unless the partition acknowledged one of this
            // producer id lately.
            let follows_same_producer = after
                .as_ref()
                .is_some_and(|(_, id)| producer_id.is_some() && *id == producer_id);
            let probe = !follows_same_producer
                && lane.producer.is_some_and(|p| {
                    !self.confirmed.recently(
                        &lane.topic,
                        lane.partition,
                        p.producer_id,
                        Instant::now(),
                    )
                });
            let after = after.map(|(p, _)| p);
            let done = lane.done();
            let job = LaneJob {
                conn,
                version,
                topic: lane.topic.clone(),
                partition: lane.partition,
                blocks: blocks.clone(),
                items: lane.items[done..].to_vec(),
                batches: lane.batches[lane.acked..]
                    .iter()
                    .map(|b| plan::Batch {
                        start: b.start - done as u32,
                        ..*b
                    })
                    .collect(),
                sent_before: lane.sent_before.saturating_sub(lane.acked),
                producer: lane.producer,
                codec: self.codec,
                node_id: self.node_id.clone(),
                partitions: self
                    .cluster
                    .as_ref()
                    .and_then(|c| c.partition_count(&lane.topic))
                    .unwrap_or(0),
                node_hash: self.node_hash,
                stats: self.stats.clone(),
                clock: self.clock.clone(),
                timeout_ms,
                writers: self.writers.clone(),
                after,
                hand_over,
                slots: self.slots.of(&lane.topic, lane.partition),
                ticket: Ticket::new(&self.flight, &left),
                probe,
            };
            set.spawn(async move {
                let out = job.run().await;
                (i, out)
            });
        }
        Ok((set, left))
    }

    /// The producer id and epoch new streams take, with this boot, for a
    /// stored plan (`None` without idempotence).
    pub(super) fn producer_meta(&self) -> Option<ProducerMeta> {
        match self.streams.idempotence {
            Idempotence::On(current) => Some(ProducerMeta {
                producer_id: current.producer_id,
                epoch: current.epoch,
                boot: i64::from(self.clock.read().boot),
            }),
            _ => None,
        }
    }

    /// Cut the lanes that need it into numbered batches and, if anything
    /// changed, store the window's plan (and the streams it advanced)
    /// before any of it is sent.
    pub(super) async fn cut_and_save(
        &mut self,
        window: &mut Window,
        lanes: &mut [Lane],
    ) -> Result<(), Failure> {
        self.ensure_producer_ids(lanes).await?;
        let max_events = self.config.max_batch_events as usize;
        let max_bytes = self.config.max_batch_bytes as usize;
        let blocks = window.blocks.clone();
        let mut advanced: Vec<(String, i32)> = Vec::new();
        for lane in lanes.iter_mut().filter(|l| !l.settled()) {
            let generation = self.streams.generation_of(&lane.topic, lane.partition);
            if !lane.replan && generation == Some(lane.generation) {
                continue;
            }
            let partitions = self
                .cluster
                .as_ref()
                .and_then(|c| c.partition_count(&lane.topic))
                .unwrap_or(0);
            let (codec, node) = (self.codec, self.node_hash);
            let stream = self.streams.get(&lane.topic, lane.partition);
            let size = |item: &Item| {
                blocks[item.block as usize]
                    .event_at(item.offset as usize)
                    .map_or(0, |e| e.payload_len())
                    + RECORD_OVERHEAD
            };
            let destination = (partitions, lane.partition);
            let runs_whole = window.runs_whole;
            let whole_run = |items: &[Item]| {
                whole_stored_run(&blocks, items, destination, codec, node).filter(|_| runs_whole)
            };
            let mut next = stream.next_sequence;
            lane.cut(
                (max_events, max_bytes),
                size,
                whole_run,
                stream.producer,
                stream.generation,
                &mut next,
            );
            stream.next_sequence = next;
            advanced.push((lane.topic.clone(), lane.partition));
        }
        if advanced.is_empty() && window.saved {
            return Ok(());
        }
        let Some(producer) = self.producer_meta() else {
            // Nothing to keep without idempotence: a resend is a duplicate anyway.
            return Ok(());
        };
        let save = PlanSave {
            window: window.saved_form(lanes, self.streams_cluster.clone()),
            streams: self.streams.stored(advanced),
            producer,
        };
        self.outbox.save_plan(save).await.map_err(|e| {
            Failure::new(
                Class::Transient,
                LOCAL_STORAGE,
                format!("cannot store the delivery plan before sending: {e}"),
            )
        })?;
        window.saved = true;
        Ok(())
    }
}
