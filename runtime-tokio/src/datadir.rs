//! A node's data directory: who the node is, which cluster it belongs to, and its silo.
//!
//! ```text
//! DIR/
//!   memo.toml    identity marker: format version, node (name + generation), cluster
//!                parameters and id. Written once, when the directory is created.
//!   data.redb    the redb silo (see crate::silo::redb)
//!   data.wal     its write-ahead log (crate::silo::wal)
//!   policy.table the node's copy of the cluster's policy table (crate::policy::table),
//!                written once the node applies a table; fetched again if deleted
//! ```
//!
//! **Creation** happens when `memo.toml` is absent: the database is created and synced
//! first, then `memo.toml` is written (to a temporary file, synced, renamed into place,
//! and the directory synced). `memo.toml` is therefore the "this directory is complete"
//! marker: a `data.redb` without it is what a crash during creation leaves (redb itself
//! can leave a file without its magic number then), which never served anything, so it
//! is wiped and created again; unless it opens and holds data, which means `memo.toml` was
//! removed by hand, and that is refused.
//!
//! **Reopening** checks that the node name and the cluster parameters given now are the
//! ones recorded (a mismatch is an error naming the file and the field), then opens the
//! database, which must exist and be intact: a missing, damaged or foreign `data.redb` is
//! an error, never a silent reinitialisation (that would make the node forget what it
//! acknowledged, which Paxos cannot tolerate).
//!
//! **Generation.** A node of the initial list gets generation 0 when its directory is
//! created. A node that joins a running cluster ([`open_joining`]) gets a fresh random
//! generation, recorded with the cluster parameters it learned (`joined = true`), so a
//! node whose directory was wiped rejoins as a new node, never as its old self, and a
//! restart needs no `--join`.

use crate::silo::redb::OpenError;
use crate::silo::{RedbOptions, RedbStorage};
use memo_engine::storage::StorageError;
use memo_engine::{ClusterParams, NodeId, Storage};
use serde::{Deserialize, Serialize};
use std::fmt::Write as _;
use std::io::Write as _;
use std::path::{Path, PathBuf};

/// The identity marker's file name.
pub const MARKER_FILE: &str = "memo.toml";
/// The database's file name.
pub const DATABASE_FILE: &str = "data.redb";
/// Its write-ahead log's file name (`silo::redb::wal_path` of the database).
pub const WAL_FILE: &str = "data.wal";
/// The node's copy of the policy table's file name.
pub const POLICY_FILE: &str = "policy.table";
/// The marker is written here first, then renamed.
const MARKER_TEMP_FILE: &str = "memo.toml.tmp";
/// Entries a directory may hold besides ours and still be used for a new node (the root
/// of a dedicated ext4 volume has `lost+found`).
const FOREIGN_ENTRIES_ALLOWED: &[&str] = &["lost+found"];

/// The comment at the top of `memo.toml`.
const MARKER_HEADER: &str = "# memo data directory: written once when the directory was created; do not edit.\n\
                             # The node refuses to start if its flags disagree with it.\n";

/// Version of the data directory layout (marker and database contents). A directory
/// with another version is refused.
pub const DATA_DIR_FORMAT: u32 = 1;

/// Why a data directory cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum DataDirError {
    /// A file system operation failed.
    #[error("cannot {action} {path}: {source}")]
    Io {
        /// What was being done.
        action: &'static str,
        /// The file or directory.
        path: PathBuf,
        /// What the OS said.
        source: std::io::Error,
    },
    /// `memo.toml` cannot be read or makes no sense.
    #[error("{path}: {reason}")]
    Marker {
        /// The marker file.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
    /// The directory was created for another node or cluster.
    #[error("data dir {dir} was created for {recorded}, not {given} (recorded in {marker})")]
    Mismatch {
        /// The data directory.
        dir: PathBuf,
        /// Its marker file.
        marker: PathBuf,
        /// Which field differs (`node`, `partitions`, `replication`, `initial_nodes`,
        /// `token`).
        field: &'static str,
        /// What the directory says, e.g. "a cluster with 256 partitions".
        recorded: String,
        /// What was asked for now, e.g. "64".
        given: String,
    },
    /// The directory's contents forbid using it (see the message).
    #[error("{0}")]
    Refused(String),
    /// The database failed to open or to be created (the message names the file).
    #[error("{0}")]
    Storage(#[from] StorageError),
}

/// The contents of `memo.toml`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Marker {
    /// [`DATA_DIR_FORMAT`] when written.
    format: u32,
    /// The memo version that created the directory (informational).
    created_by: String,
    /// Hex of the cluster id the parameters below derive (a consistency check).
    cluster_id: String,
    /// The node joined a running cluster (it is not one of the initial nodes). Absent in
    /// directories of founders, and in every directory written before joins existed.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    joined: bool,
    node: MarkerNode,
    cluster: MarkerCluster,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct MarkerNode {
    name: String,
    generation: u64,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct MarkerCluster {
    partitions: u32,
    replication: u32,
    /// Names of the initial nodes (all of generation 0), sorted.
    initial_nodes: Vec<String>,
    token: String,
}

impl Marker {
    fn new(me: &NodeId, params: &ClusterParams, joined: bool) -> Self {
        Marker {
            format: DATA_DIR_FORMAT,
            created_by: format!("memo {}", env!("CARGO_PKG_VERSION")),
            cluster_id: hex(&params.cluster_id().0),
            joined,
            node: MarkerNode { name: me.name.clone(), generation: me.generation },
            cluster: MarkerCluster {
                partitions: params.partitions,
                replication: params.replication,
                initial_nodes: initial_names(params),
                token: params.token.clone(),
            },
        }
    }

    fn params(&self) -> ClusterParams {
        ClusterParams {
            partitions: self.cluster.partitions,
            replication: self.cluster.replication,
            initial_nodes: self.cluster.initial_nodes.iter().cloned().map(NodeId::initial).collect(),
            token: self.cluster.token.clone(),
        }
    }
}

/// An open data directory.
#[derive(Clone, Debug)]
pub struct DataDir {
    path: PathBuf,
    node: NodeId,
    created: bool,
    params: ClusterParams,
    joined: bool,
}

/// What a data directory's marker records, read before opening it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Recorded {
    /// The node (name and generation).
    pub node: NodeId,
    /// The cluster's parameters.
    pub params: ClusterParams,
    /// Whether the node joined a running cluster.
    pub joined: bool,
}

/// Reads what the data directory at `path` records, if it has a marker.
pub fn recorded(path: &Path) -> Result<Option<Recorded>, DataDirError> {
    let marker_path = path.join(MARKER_FILE);
    let text = match std::fs::read_to_string(&marker_path) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(DataDirError::Io { action: "read", path: marker_path, source: e }),
    };
    let marker = parse_marker(&marker_path, &text)?;
    let node = NodeId { name: marker.node.name.clone(), generation: marker.node.generation };
    Ok(Some(Recorded { node, params: marker.params(), joined: marker.joined }))
}

/// Opens the data directory of a node that joined a running cluster, creating it for
/// `name` with a fresh `generation` and the cluster parameters learned from a seed if it
/// holds no marker yet. A directory that records another node or cluster is refused.
pub fn open_joining(
    path: &Path,
    name: &str,
    generation: u64,
    params: &ClusterParams,
    options: &RedbOptions,
) -> Result<(DataDir, RedbStorage), DataDirError> {
    open_or(path, name, params, options, || {
        create_as(path, NodeId { name: name.to_string(), generation }, params, true, options)
    })
}

impl DataDir {
    /// The directory.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The node it belongs to (name and generation, as recorded).
    pub fn node(&self) -> &NodeId {
        &self.node
    }

    /// Whether this open created it.
    pub fn created(&self) -> bool {
        self.created
    }

    /// The cluster parameters it records.
    pub fn params(&self) -> &ClusterParams {
        &self.params
    }

    /// Whether its node joined a running cluster.
    pub fn joined(&self) -> bool {
        self.joined
    }

    /// Its marker file.
    pub fn marker_path(&self) -> PathBuf {
        self.path.join(MARKER_FILE)
    }

    /// Its database file.
    pub fn database_path(&self) -> PathBuf {
        self.path.join(DATABASE_FILE)
    }
}

/// Opens the data directory at `path` for node `name` of the cluster `params`, creating
/// it (and the directory itself) if it holds no `memo.toml` yet. Returns the directory
/// and its silo. Blocking (file IO, and the integrity check reads the whole database).
pub fn open(
    path: &Path,
    name: &str,
    params: &ClusterParams,
    options: &RedbOptions,
) -> Result<(DataDir, RedbStorage), DataDirError> {
    open_or(path, name, params, options, || create(path, name, params, options))
}

/// Reopens the data directory at `path` if it has a marker, else runs `create`.
fn open_or(
    path: &Path,
    name: &str,
    params: &ClusterParams,
    options: &RedbOptions,
    create: impl FnOnce() -> Result<(DataDir, RedbStorage), DataDirError>,
) -> Result<(DataDir, RedbStorage), DataDirError> {
    std::fs::create_dir_all(path).map_err(io("create the data dir", path))?;
    let marker_path = path.join(MARKER_FILE);
    match std::fs::read_to_string(&marker_path) {
        Ok(text) => reopen(path, &marker_path, &text, name, params, options),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => create(),
        Err(e) => Err(DataDirError::Io { action: "read", path: marker_path, source: e }),
    }
}

fn reopen(
    dir: &Path,
    marker_path: &Path,
    text: &str,
    name: &str,
    params: &ClusterParams,
    options: &RedbOptions,
) -> Result<(DataDir, RedbStorage), DataDirError> {
    let marker = parse_marker(marker_path, text)?;
    check_matches(dir, marker_path, &marker, name, params)?;

    let db_path = dir.join(DATABASE_FILE);
    if !db_path.try_exists().map_err(io("look for", &db_path))? {
        return Err(DataDirError::Refused(format!(
            "data dir {} has {MARKER_FILE} but no {DATABASE_FILE}: this node's data is gone; refusing to start \
             with an empty database (a node that lost its data must join as a new node)",
            dir.display()
        )));
    }
    let storage = RedbStorage::open(&db_path, options)?;
    let node = NodeId { name: marker.node.name.clone(), generation: marker.node.generation };
    let params = marker.params();
    Ok((DataDir { path: dir.to_path_buf(), node, created: false, params, joined: marker.joined }, storage))
}

/// Parses and checks a marker's text.
fn parse_marker(marker_path: &Path, text: &str) -> Result<Marker, DataDirError> {
    let marker_error = |reason: String| DataDirError::Marker { path: marker_path.to_path_buf(), reason };
    let marker: Marker = toml::from_str(text).map_err(|e| marker_error(format!("not a valid memo marker: {e}")))?;
    if marker.format != DATA_DIR_FORMAT {
        return Err(marker_error(format!(
            "data dir format {}, but this memo only reads format {DATA_DIR_FORMAT}",
            marker.format
        )));
    }
    if hex(&marker.params().cluster_id().0) != marker.cluster_id {
        return Err(marker_error(
            "the recorded cluster_id does not match the recorded cluster (was it edited?)".into(),
        ));
    }
    Ok(marker)
}

/// Compares the recorded identity with the one asked for, field by field.
fn check_matches(
    dir: &Path,
    marker_path: &Path,
    marker: &Marker,
    name: &str,
    params: &ClusterParams,
) -> Result<(), DataDirError> {
    let mismatch = |field, recorded: String, given: String| DataDirError::Mismatch {
        dir: dir.to_path_buf(),
        marker: marker_path.to_path_buf(),
        field,
        recorded,
        given,
    };
    if marker.node.name != name {
        return Err(mismatch("node", format!("node {:?}", marker.node.name), format!("{name:?}")));
    }
    let recorded = &marker.cluster;
    if recorded.partitions != params.partitions {
        let text = format!("a cluster with {} partitions", recorded.partitions);
        return Err(mismatch("partitions", text, params.partitions.to_string()));
    }
    if recorded.replication != params.replication {
        let text = format!("a cluster with replication {}", recorded.replication);
        return Err(mismatch("replication", text, params.replication.to_string()));
    }
    let given = initial_names(params);
    if recorded.initial_nodes != given {
        let text = format!("a cluster with initial nodes {}", recorded.initial_nodes.join(","));
        return Err(mismatch("initial_nodes", text, given.join(",")));
    }
    if recorded.token != params.token {
        let text = format!("a cluster with token {:?}", recorded.token);
        return Err(mismatch("token", text, format!("{:?}", params.token)));
    }
    Ok(())
}

fn create(
    dir: &Path,
    name: &str,
    params: &ClusterParams,
    options: &RedbOptions,
) -> Result<(DataDir, RedbStorage), DataDirError> {
    let me = NodeId::initial(name);
    if !params.initial_nodes.contains(&me) {
        return Err(DataDirError::Refused(format!(
            "cannot create data dir {}: node {name:?} is not one of the initial nodes ({}); to add it to a running \
             cluster, start it with --join SEED",
            dir.display(),
            initial_names(params).join(",")
        )));
    }
    create_as(dir, me, params, false, options)
}

fn create_as(
    dir: &Path,
    me: NodeId,
    params: &ClusterParams,
    joined: bool,
    options: &RedbOptions,
) -> Result<(DataDir, RedbStorage), DataDirError> {
    check_empty(dir)?;
    let db_path = dir.join(DATABASE_FILE);
    discard_unfinished_database(dir, &db_path, options)?;
    let storage = RedbStorage::create(&db_path, options)?;
    sync_dir(dir)?;

    let marker = Marker::new(&me, params, joined);
    let body = toml::to_string(&marker)
        .map_err(|e| DataDirError::Marker { path: dir.join(MARKER_FILE), reason: format!("cannot encode: {e}") })?;
    let text = format!("{MARKER_HEADER}{body}");
    let temp = dir.join(MARKER_TEMP_FILE);
    let mut file = std::fs::File::create(&temp).map_err(io("create", &temp))?;
    file.write_all(text.as_bytes()).map_err(io("write", &temp))?;
    file.sync_all().map_err(io("sync", &temp))?;
    drop(file);
    let marker_path = dir.join(MARKER_FILE);
    std::fs::rename(&temp, &marker_path).map_err(io("create", &marker_path))?;
    sync_dir(dir)?;
    if let Some(parent) = dir.parent().filter(|p| !p.as_os_str().is_empty()) {
        // The directory's own entry, in case it was created just now.
        sync_dir(parent)?;
    }
    let params = params.clone();
    Ok((DataDir { path: dir.to_path_buf(), node: me, created: true, params, joined }, storage))
}

/// Refuses a directory holding anything but what an unfinished creation leaves.
fn check_empty(dir: &Path) -> Result<(), DataDirError> {
    let entries = std::fs::read_dir(dir).map_err(io("list", dir))?;
    for entry in entries {
        let entry = entry.map_err(io("list", dir))?;
        let name = entry.file_name();
        let name = name.to_string_lossy();
        if name == DATABASE_FILE
            || name == WAL_FILE
            || name == MARKER_TEMP_FILE
            || FOREIGN_ENTRIES_ALLOWED.contains(&name.as_ref())
        {
            continue;
        }
        return Err(DataDirError::Refused(format!(
            "data dir {} has no {MARKER_FILE} but is not empty (it holds {name}): refusing to create a node there",
            dir.display()
        )));
    }
    Ok(())
}

/// Removes a `data.redb` that a crashed creation left behind (no marker), unless it holds
/// data, which means the marker was removed by hand.
fn discard_unfinished_database(dir: &Path, db_path: &Path, options: &RedbOptions) -> Result<(), DataDirError> {
    let wal = crate::silo::redb::wal_path(db_path);
    if !db_path.try_exists().map_err(io("look for", db_path))? {
        if wal.try_exists().map_err(io("look for", &wal))? {
            std::fs::remove_file(&wal).map_err(io("remove", &wal))?;
        }
        return Ok(());
    }
    // Writes since the last checkpoint live only in the log (and in no redb page), so a
    // log with anything in it is data. The database is probed without its log: a creation
    // that crashed may not have made one yet.
    let logged = match std::fs::metadata(&wal) {
        Ok(meta) => meta.len() > 0,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => false,
        Err(e) => return Err(io("look for", &wal)(e)),
    };
    let probe = RedbOptions { wal: false, ..options.clone() };
    let holds_data = logged
        || match RedbStorage::try_open(db_path, &probe) {
            Ok(storage) => {
                let any = storage.scan(&[], &[0xff; 8], 1)?;
                storage.close()?;
                !any.is_empty()
            }
            // Another process is creating or running this node right now.
            Err(OpenError::InUse(e)) => return Err(e.into()),
            // A creation that crashed may leave a file redb cannot open.
            Err(OpenError::Failed(_)) => false,
        };
    if holds_data {
        return Err(DataDirError::Refused(format!(
            "{} holds data but {} is missing: restore {MARKER_FILE}, or move the directory away to start this node \
             afresh",
            db_path.display(),
            dir.join(MARKER_FILE).display()
        )));
    }
    tracing::warn!(file = %db_path.display(), "removing a database left by an unfinished data dir creation");
    std::fs::remove_file(db_path).map_err(io("remove", db_path))?;
    if wal.try_exists().map_err(io("look for", &wal))? {
        std::fs::remove_file(&wal).map_err(io("remove", &wal))?;
    }
    Ok(())
}

fn sync_dir(dir: &Path) -> Result<(), DataDirError> {
    let handle = std::fs::File::open(dir).map_err(io("open", dir))?;
    handle.sync_all().map_err(io("sync", dir))
}

fn io<'a>(action: &'static str, path: &'a Path) -> impl FnOnce(std::io::Error) -> DataDirError + 'a {
    move |source| DataDirError::Io { action, path: path.to_path_buf(), source }
}

fn initial_names(params: &ClusterParams) -> Vec<String> {
    let mut names: Vec<String> = params.initial_nodes.iter().map(|n| n.name.clone()).collect();
    names.sort();
    names
}

/// Lowercase hex of `bytes`.
pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().fold(String::with_capacity(2 * bytes.len()), |mut s, b| {
        let _ = write!(s, "{b:02x}");
        s
    })
}

#[cfg(test)]
mod tests;
