//! The producer layers on their own (connection, cluster, producer), over
//! real sockets against librdkafka's mock cluster.

mod common;

use common::cluster;
use ferry::kafka::cluster::Cluster;
use ferry::kafka::connection::ConnectionConfig;
use std::time::Duration;

fn config() -> ConnectionConfig {
    ConnectionConfig {
        client_id: "ferry-test".into(),
        connect_timeout: Duration::from_secs(2),
        request_timeout: Duration::from_secs(5),
        tls: None,
        sasl: None,
    }
}

#[tokio::test]
async fn metadata_creates_a_named_topic_only_when_allowed() {
    let c = cluster(1, &[("present", 2)]);
    let bootstrap = vec![c.bootstrap_servers()];
    let mut strict = Cluster::new(bootstrap.clone(), config(), false);
    strict.refresh(&["absent".to_string()]).await.unwrap();
    assert_eq!(strict.partition_count("absent"), None);
    assert_eq!(strict.topic("absent").map(|t| t.error), Some(3));
    strict.refresh(&["present".to_string()]).await.unwrap();
    assert_eq!(strict.partition_count("present"), Some(2));

    let mut creating = Cluster::new(bootstrap, config(), true);
    creating.refresh(&["fresh".to_string()]).await.unwrap();
    assert!(creating.partition_count("fresh").is_some());
    let leader = creating.leader("fresh", 0).await.unwrap();
    assert!(!leader.is_closed());
}
