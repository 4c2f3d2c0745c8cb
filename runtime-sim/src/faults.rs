//! The fault scheduler: each [`Episode`] of the seed's schedule runs as a task on the
//! supervisor that sleeps until its start, applies its fault, waits out its duration and
//! undoes it. Episodes may overlap; the cluster's bookkeeping (counted link cuts, the
//! episode that holds a node down or paused) keeps overlapping faults from undoing each
//! other. After the final heal no episode acts any more.

use crate::cluster::{Cluster, Host};
use crate::options::{Episode, Fault};
use std::sync::Arc;
use std::time::Duration;
use tokio::time::{Instant, sleep, sleep_until};

/// How often a power-cut episode looks whether the cut has fired.
const POWER_CUT_POLL: Duration = Duration::from_millis(5);

/// Runs episode `token` of the schedule; `origin` is the start of the safety phase.
pub async fn run_episode(cluster: Arc<Cluster>, token: u64, origin: Instant, episode: Episode) {
    sleep_until(origin + episode.at).await;
    if !cluster.faults_on() {
        return;
    }
    let rec = &cluster.rec;
    let until = Instant::now() + episode.duration;
    let fault = &episode.fault;
    let tag = format!("E{token}");
    match fault {
        Fault::Partition { left, right } => {
            let links = cross(left, right);
            rec.note("FAULT", format!("{tag} {fault} for {}ms", episode.duration.as_millis()));
            links.iter().for_each(|&(a, b)| cluster.cut(a, b));
            sleep_until(until).await;
            links.iter().for_each(|&(a, b)| cluster.uncut(a, b));
            rec.note("HEAL", format!("{tag} {fault} healed"));
        }
        Fault::OneWay { links } => {
            let links: Vec<(Host, Host)> = links.iter().map(|&(a, b)| (Host::Server(a), Host::Server(b))).collect();
            rec.note("FAULT", format!("{tag} {fault} for {}ms", episode.duration.as_millis()));
            links.iter().for_each(|&(a, b)| cluster.cut(a, b));
            sleep_until(until).await;
            links.iter().for_each(|&(a, b)| cluster.uncut(a, b));
            rec.note("HEAL", format!("{tag} {fault} healed"));
        }
        Fault::Flap { a, b, period } => {
            let (a, b) = (Host::Server(*a), Host::Server(*b));
            rec.note("FAULT", format!("{tag} {fault} for {}ms", episode.duration.as_millis()));
            while Instant::now() < until && cluster.faults_on() {
                cluster.cut(a, b);
                cluster.cut(b, a);
                sleep(*period).await;
                cluster.uncut(a, b);
                cluster.uncut(b, a);
                sleep(*period).await;
            }
            rec.note("HEAL", format!("{tag} {fault} ended"));
        }
        Fault::Crash { node } => {
            let what = format!("{tag} {fault}, down for {}ms", episode.duration.as_millis());
            crash_until(&cluster, *node, token, until, &what, &format!("{tag} {fault}")).await;
        }
        Fault::Join { node } => {
            rec.note("FAULT", format!("{tag} {fault}"));
            cluster.join(*node);
        }
        Fault::Leave { node } => {
            rec.note("FAULT", format!("{tag} {fault}"));
            // Asked from a client host, as an operator would; retried while the node is
            // down or its view of the others is too small to allow it.
            let addr = crate::cluster::server_addr(*node);
            let asked = cluster.clients[0].spawn(async move {
                use memo_proto::admin::{LeaveRequest, admin_client::AdminClient};
                let mut last = String::new();
                for _ in 0..20 {
                    let endpoint = tonic::transport::Endpoint::from_shared(format!("http://{addr}"));
                    let channel = endpoint.expect("a valid URI").connect_lazy();
                    match AdminClient::new(channel).leave(LeaveRequest {}).await {
                        Ok(_) => return Ok(()),
                        Err(e) => last = e.to_string(),
                    }
                    sleep(Duration::from_millis(500)).await;
                }
                Err(last)
            });
            match asked.await {
                Ok(Ok(())) => rec.note("NODE", format!("{tag} n{} is leaving", node + 1)),
                Ok(Err(e)) => rec.note("SKIP", format!("{tag} {fault}: refused ({e})")),
                Err(_) => rec.note("SKIP", format!("{tag} {fault}: the asking task died")),
            }
        }
        Fault::PowerCut { node, calls, down } => power_cut(&cluster, &tag, token, *node, *calls, *down, until).await,
        Fault::Pause { node } => {
            if !cluster.pause(*node, token) {
                return rec.note("SKIP", format!("{tag} {fault}: the node is down or paused"));
            }
            rec.note("FAULT", format!("{tag} {fault} for {}ms", episode.duration.as_millis()));
            sleep_until(until).await;
            cluster.resume(*node, token);
            rec.note("HEAL", format!("{tag} n{} resumed", node + 1));
        }
        Fault::ClockJump { node, delta_ms } => {
            cluster.servers[*node].clock.jump(delta_ms * 1_000_000);
            rec.note("FAULT", format!("{tag} {fault}"));
        }
        Fault::ClockDrift { node, drift_ppm } => {
            let clock = &cluster.servers[*node].clock;
            clock.set_drift(*drift_ppm);
            rec.note("FAULT", format!("{tag} {fault} for {}ms", episode.duration.as_millis()));
            sleep_until(until).await;
            clock.set_drift(cluster.opts.clocks[*node].drift_ppm);
            rec.note("HEAL", format!("{tag} n{} drift back to baseline", node + 1));
        }
        Fault::Degrade { loss_permille, latency_ms } => {
            rec.note("FAULT", format!("{tag} {fault} for {}ms", episode.duration.as_millis()));
            cluster.degrade(token, Some((*loss_permille as f64 / 1000.0, *latency_ms)));
            sleep_until(until).await;
            cluster.degrade(token, None);
            rec.note("HEAL", format!("{tag} network back to normal"));
        }
        Fault::RestartAll => {
            let crashed: Vec<usize> = (0..cluster.servers.len()).filter(|&i| cluster.crash(i, token)).collect();
            rec.note(
                "FAULT",
                format!("{tag} {fault}: {} nodes down for {}ms", crashed.len(), episode.duration.as_millis()),
            );
            sleep_until(until).await;
            if cluster.faults_on() {
                crashed.iter().for_each(|&i| cluster.restart(i, token));
            }
        }
        Fault::RebalancerDown { cut_off, down } => {
            rec.note("FAULT", format!("{tag} {fault}: watching for a move"));
            let Some(node) = find_mover(&cluster, until).await else {
                return rec.note("SKIP", format!("{tag} no node was found moving a partition"));
            };
            if !cluster.faults_on() {
                return;
            }
            let others: Vec<usize> = (0..cluster.servers.len()).filter(|&i| i != node).collect();
            if *cut_off {
                let links = cross(&[node], &others);
                rec.note(
                    "FAULT",
                    format!("{tag} n{} is moving a partition: cut off for {}ms", node + 1, down.as_millis()),
                );
                links.iter().for_each(|&(a, b)| cluster.cut(a, b));
                sleep(*down).await;
                links.iter().for_each(|&(a, b)| cluster.uncut(a, b));
                rec.note("HEAL", format!("{tag} n{} reconnected", node + 1));
            } else {
                let what = format!("{tag} n{} is moving a partition: crashed for {}ms", node + 1, down.as_millis());
                let until = Instant::now() + *down;
                crash_until(&cluster, node, token, until, &what, &format!("{tag} n{}", node + 1)).await;
            }
        }
        Fault::ClientCut { client, node } => {
            let (c, s) = (Host::Client(*client), Host::Server(*node));
            rec.note("FAULT", format!("{tag} {fault} for {}ms", episode.duration.as_millis()));
            cluster.cut(c, s);
            cluster.cut(s, c);
            sleep_until(until).await;
            cluster.uncut(c, s);
            cluster.uncut(s, c);
            rec.note("HEAL", format!("{tag} {fault} healed"));
        }
    }
}

/// Crashes `node` (noting `what`) and restarts it at `until`, unless the final heal came
/// first; `skip` names the fault when the node is already down or paused.
async fn crash_until(cluster: &Cluster, node: usize, token: u64, until: Instant, what: &str, skip: &str) {
    if !cluster.crash(node, token) {
        return cluster.rec.note("SKIP", format!("{skip}: the node is down or paused"));
    }
    cluster.rec.note("FAULT", what);
    sleep_until(until).await;
    if cluster.faults_on() {
        cluster.restart(node, token);
    }
}

/// Arms `node`'s disk; if the cut fires before `until`, buries the node and restarts it
/// `down` later.
async fn power_cut(cluster: &Cluster, tag: &str, token: u64, node: usize, calls: u32, down: Duration, until: Instant) {
    let rec = &cluster.rec;
    if !cluster.is_running(node) {
        return rec.note("SKIP", format!("{tag} power cut n{}: the node is down or paused", node + 1));
    }
    let disk = &cluster.servers[node].disk;
    disk.arm(calls);
    rec.note("FAULT", format!("{tag} power cut armed on n{} (disk call #{calls})", node + 1));
    while Instant::now() < until && !disk.died() && cluster.faults_on() {
        sleep(POWER_CUT_POLL).await;
    }
    if !disk.died() {
        disk.disarm();
        return rec.note("HEAL", format!("{tag} power cut on n{} did not fire; disarmed", node + 1));
    }
    if !cluster.faults_on() {
        return;
    }
    cluster.bury(node, token);
    sleep(down).await;
    if cluster.faults_on() {
        cluster.restart(node, token);
    }
}

/// How often a rebalancer-down episode asks the nodes whether they are moving.
const MOVER_POLL: Duration = Duration::from_millis(10);

/// The first running server that reports a move in flight (`Admin/Members`, asked from
/// client 0's host, as an operator would), polling until `until`.
async fn find_mover(cluster: &Arc<Cluster>, until: Instant) -> Option<usize> {
    use memo_proto::admin::{MembersRequest, admin_client::AdminClient};
    while Instant::now() < until && cluster.faults_on() {
        for node in 0..cluster.servers.len() {
            if !cluster.is_running(node) {
                continue;
            }
            let addr = crate::cluster::server_addr(node);
            let asked = cluster.clients[0].spawn(async move {
                let endpoint = tonic::transport::Endpoint::from_shared(format!("http://{addr}")).ok()?;
                let mut admin = AdminClient::new(endpoint.connect_lazy());
                let call = admin.members(MembersRequest {});
                let answer = tokio::time::timeout(Duration::from_millis(50), call).await.ok()?.ok()?;
                answer.into_inner().moves.map(|m| m.in_flight)
            });
            if matches!(asked.await, Ok(Some(n)) if n > 0) {
                return Some(node);
            }
        }
        sleep(MOVER_POLL).await;
    }
    None
}

/// Both directions of every link between the two sides.
fn cross(left: &[usize], right: &[usize]) -> Vec<(Host, Host)> {
    let mut links = Vec::new();
    for &a in left {
        for &b in right {
            links.push((Host::Server(a), Host::Server(b)));
            links.push((Host::Server(b), Host::Server(a)));
        }
    }
    links
}
