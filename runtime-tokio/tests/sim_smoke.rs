//! A smoke test of the runtime inside the madsim simulator: three nodes on simulated
//! hosts serve the public API, keep serving with one node killed, and the killed node
//! comes back; the admin service answers. The deep scenarios live in `sim-scenarios`; this one only proves the
//! runtime's real code runs under `--cfg madsim` (`cargo simtest -p memo-node`).
#![cfg(madsim)]

use madsim::runtime::Handle;
use memo_engine::{ClusterParams, Config, MemoryStorage, NodeId};
use memo_node::{NodeOptions, SharedStorage, spawn_node};
use memo_proto::admin::StatusRequest;
use memo_proto::admin::admin_client::AdminClient;
use memo_proto::kvs::key_value_store_client::KeyValueStoreClient;
use memo_proto::kvs::{FetchRequest, UpsertRequest};
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

const PORT: u16 = 7001;
/// Time for nodes to start, and for a restarted node to come back.
const SETTLE: Duration = Duration::from_secs(1);

fn addr(i: usize) -> SocketAddr {
    SocketAddr::from(([10, 0, 0, i as u8 + 1], PORT))
}

#[madsim::test]
async fn a_simulated_cluster_serves_through_a_crash_and_a_restart() {
    let handle = Handle::current();
    let ids: Vec<NodeId> = (1..=3).map(|i| NodeId::initial(format!("n{i}"))).collect();
    let peers: BTreeMap<NodeId, SocketAddr> = ids.iter().cloned().enumerate().map(|(i, id)| (id, addr(i))).collect();
    let params = ClusterParams { partitions: 16, replication: 3, initial_nodes: ids.clone(), token: "sim".into() };
    let mut hosts = Vec::new();
    for (i, id) in ids.iter().enumerate() {
        let (id, peers, params) = (id.clone(), peers.clone(), params.clone());
        // One silo per host, kept across restarts like a disk.
        let storage: SharedStorage = Arc::new(MemoryStorage::new());
        let host = handle
            .create_node()
            .name(id.name.clone())
            .ip(addr(i).ip())
            .init(move || {
                let config = Config::new(id.clone(), params.clone());
                let options = NodeOptions::new(config, addr(i), peers.clone(), i as u64);
                let storage = storage.clone();
                async move {
                    let mut node = spawn_node(options, storage).await.expect("node starts");
                    let _ = node.stopped().await;
                }
            })
            .build();
        hosts.push(host);
    }
    let client = handle.create_node().name("client").ip([10, 0, 0, 9].into()).build();
    client
        .spawn(async move {
            madsim::time::sleep(SETTLE).await;
            let mut c = KeyValueStoreClient::connect(format!("http://{}", addr(0))).await.expect("connects");
            let upsert = |value: &str| UpsertRequest { key: "k".into(), value: value.into() };
            c.upsert(upsert("v1")).await.expect("upsert with all nodes up");

            Handle::current().kill(hosts[2].id());
            c.upsert(upsert("v2")).await.expect("upsert with a quorum");

            Handle::current().restart(hosts[2].id());
            madsim::time::sleep(SETTLE).await;
            let mut c3 = KeyValueStoreClient::connect(format!("http://{}", addr(2)))
                .await
                .expect("connects to the restarted node");
            let fetched = c3.fetch(FetchRequest { key: "k".into(), version: 0 }).await;
            assert_eq!(fetched.expect("fetch").into_inner().value, b"v2");

            // The admin service answers in simulation too.
            let mut admin = AdminClient::connect(format!("http://{}", addr(0))).await.expect("connects");
            let status = admin.status(StatusRequest { partitions: true }).await.expect("status").into_inner();
            assert_eq!(status.node, "n1");
            assert_eq!(status.nodes.len(), 3);
            assert_eq!(status.partitions.len(), 16);
            assert_eq!(status.nodes.iter().map(|n| n.primary_partitions).sum::<u32>(), 16);
        })
        .await
        .expect("the client finishes");
}
