//! The cluster's policy table: which [`ValuePolicy`] applies to a key, by the longest
//! matching key prefix, the same on every node (docs/OPERATIONS.md, "Policies").
//!
//! # Algorithm
//!
//! - **Stored in the cluster.** The table is one record under the reserved key
//!   [`TABLE_KEY`], a register like any other, so reading it is linearizable. A change
//!   is a read-modify-write: fetch the record, change the table, and store it with a
//!   swap that expects exactly the record read ([`Change::Swap`]); a swap that finds
//!   another record lost a race and starts again from the winner's table. Each change
//!   adds one to the table's revision.
//! - **Pushed to every member.** The node that made a change applies it, then sends the
//!   new table to every other member (`memo.admin.Admin/PolicyInstall`) and answers the
//!   operator once each live member confirmed it, naming the members that did not.
//! - **Cached and saved on every node.** A node encodes each write under its cached
//!   table, saves every table it applies in its data directory before it confirms it,
//!   loads the saved table before it serves, and refreshes from the cluster at start and
//!   every [`REFRESH_INTERVAL`] (catching up on pushes it missed while down or cut off).
//!
//! # Rules
//!
//! - **P1 newer only.** A node applies a table only if its revision is higher than the
//!   one it has: pushes and refreshes may arrive in any order, and a node never goes back.
//! - **P2 saved before confirmed.** A node confirms a push only once the table is on its
//!   disk, so a restarted node applies at least every table it confirmed.
//! - **P3 one table per revision.** Revisions are decided by the swap on the table's
//!   register: two concurrent changes never both store the same revision, and neither is
//!   lost (the loser retries on the winner's table).
//! - **P4 values carry their own encoding.** A rule decides how new writes are encoded;
//!   a stored value is decoded by its own encoding byte, so a rule change never rewrites
//!   a value and never makes one unreadable.
//! - **P5 reserved keys.** Clients cannot read, write or list keys under
//!   [`RESERVED_PREFIX`].
//!
//! What a change promises: once `memo policy set` answered with no unconfirmed member,
//! every write that enters the cluster afterwards is encoded under the new rule. A write
//! racing the change may be encoded under either rule, and reads back the same either way.

use super::crypt::{self, Fingerprint, Keyring};
use super::{Compression, ValuePolicy};
use memo_engine::config::KEY_BYTES_MAX;
use memo_engine::kv::{Change, Stamp, VERSIONS_MAX};
use memo_engine::{Encoding, KvError, Request, Response, Value};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::ops::Bound;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::Duration;

/// Keys under this prefix are memo's own: clients cannot read, write or list them.
pub const RESERVED_PREFIX: &str = "\u{0}memo/";
/// The key of the policy table's record.
pub const TABLE_KEY: &str = "\u{0}memo/policy";
/// How often a node rereads the table from the cluster.
pub const REFRESH_INTERVAL: Duration = Duration::from_secs(10);
/// How soon a node retries a failed refresh (the cluster may still be starting).
pub const REFRESH_RETRY: Duration = Duration::from_secs(1);
/// How long a member may take to confirm a pushed table.
pub const INSTALL_TIMEOUT: Duration = Duration::from_secs(3);
/// Read-modify-write attempts of one change before it gives up (each lost attempt means
/// another change won).
pub const SWAP_ATTEMPTS_MAX: usize = 16;
/// Rules in one table, at most.
pub const RULES_MAX: usize = 1024;

/// The first byte of a stored table: its format. Format 1 has no `versions` in its
/// rules, and is still written while no rule keeps versions (byte for byte what builds
/// before versioning wrote and read); format 2 has them.
const TABLE_FORMAT_1: u8 = 1;
/// See [`TABLE_FORMAT_1`].
const TABLE_FORMAT_2: u8 = 2;

/// A table as format 1 stores it.
#[derive(Serialize, Deserialize)]
struct TableV1 {
    revision: u64,
    rules: BTreeMap<String, PolicyV1>,
    keys: BTreeMap<String, Fingerprint>,
}

/// A rule as format 1 stores it.
#[derive(Serialize, Deserialize)]
struct PolicyV1 {
    compression: Compression,
    encrypt: bool,
}

/// The table: a revision and the rules by key prefix.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PolicyTable {
    /// One more with every change; 0 is the empty table no one stored yet.
    pub revision: u64,
    /// The rule of each prefix; the empty prefix is the cluster's default.
    pub rules: BTreeMap<String, ValuePolicy>,
    /// The fingerprint of every data key named under an encrypting rule (E5 in
    /// [`crypt`]): a node whose key of that name differs refuses the table.
    pub keys: BTreeMap<String, Fingerprint>,
}

impl PolicyTable {
    /// The rule of the longest prefix of `key`, and that prefix.
    ///
    /// Scanning back from `key` in byte order finds it first: of two prefixes of one key
    /// the longer sorts after the shorter, and both sort at or before the key.
    pub fn rule_for(&self, key: &str) -> Option<(&str, &ValuePolicy)> {
        (self.rules.range::<str, _>((Bound::Unbounded, Bound::Included(key))).rev())
            .find(|(prefix, _)| key.starts_with(prefix.as_str()))
            .map(|(prefix, rule)| (prefix.as_str(), rule))
    }

    /// The stored form: the format byte, then the table in postcard.
    pub fn encode(&self) -> Vec<u8> {
        if self.rules.values().all(|r| r.versions <= 1) {
            let rules = (self.rules.iter())
                .map(|(p, r)| (p.clone(), PolicyV1 { compression: r.compression, encrypt: r.encrypt }))
                .collect();
            let v1 = TableV1 { revision: self.revision, rules, keys: self.keys.clone() };
            let mut bytes = vec![TABLE_FORMAT_1];
            bytes.extend(postcard::to_stdvec(&v1).expect("a table always serializes"));
            return bytes;
        }
        let mut bytes = vec![TABLE_FORMAT_2];
        bytes.extend(postcard::to_stdvec(self).expect("a table always serializes"));
        bytes
    }

    /// Reads a stored table, refusing anything malformed.
    pub fn decode(bytes: &[u8]) -> Result<Self, String> {
        let (format, body) = bytes.split_first().ok_or("an empty policy table record")?;
        let malformed = |e: postcard::Error| format!("a malformed policy table: {e}");
        let table: PolicyTable = match *format {
            TABLE_FORMAT_1 => {
                let v1: TableV1 = postcard::from_bytes(body).map_err(malformed)?;
                let rules = (v1.rules.into_iter())
                    .map(|(p, r)| (p, ValuePolicy { compression: r.compression, encrypt: r.encrypt, versions: 0 }))
                    .collect();
                PolicyTable { revision: v1.revision, rules, keys: v1.keys }
            }
            TABLE_FORMAT_2 => postcard::from_bytes(body).map_err(malformed)?,
            _ => return Err(format!("a policy table in format {format}, unknown to this build")),
        };
        if let Some((prefix, rule)) = table.rules.iter().find(|(_, r)| r.versions > VERSIONS_MAX) {
            return Err(format!("a policy table whose rule {prefix:?} keeps {} versions", rule.versions));
        }
        if table.rules.len() > RULES_MAX {
            return Err(format!("a policy table with {} rules (at most {RULES_MAX})", table.rules.len()));
        }
        if let Some(prefix) = table.rules.keys().find(|p| validate_prefix(p).is_err()) {
            return Err(format!("a policy table with an invalid prefix {prefix:?}"));
        }
        Ok(table)
    }

    /// The prefixes whose rule encrypts.
    pub fn encrypted_prefixes(&self) -> Vec<&str> {
        self.rules.iter().filter(|(_, rule)| rule.encrypt).map(|(prefix, _)| prefix.as_str()).collect()
    }

    /// Checks a node's keys against the table's fingerprints (E5): a key of the same name
    /// with other bytes is a wrong key file.
    pub fn check_keys(&self, keys: &BTreeMap<String, Fingerprint>) -> Result<(), String> {
        for (name, fingerprint) in keys {
            if let Some(known) = self.keys.get(name).filter(|known| *known != fingerprint) {
                return Err(format!(
                    "the data key {name:?} of this node (fingerprint {fingerprint}) is not the cluster's \
                     (fingerprint {known}): a wrong key file"
                ));
            }
        }
        Ok(())
    }

    /// Sets the rule of `prefix`.
    pub fn set(&mut self, prefix: String, rule: ValuePolicy) -> Result<(), String> {
        validate_prefix(&prefix)?;
        if !self.rules.contains_key(&prefix) && self.rules.len() >= RULES_MAX {
            return Err(format!("the policy table holds {RULES_MAX} rules already"));
        }
        self.rules.insert(prefix, rule);
        Ok(())
    }
}

/// Checks a rule's prefix: not over the key limit, not under the reserved prefix.
pub fn validate_prefix(prefix: &str) -> Result<(), String> {
    if prefix.len() > KEY_BYTES_MAX {
        return Err(format!("a prefix of {} bytes is over the key limit of {KEY_BYTES_MAX} bytes", prefix.len()));
    }
    if is_reserved(prefix) || RESERVED_PREFIX.starts_with(prefix) && !prefix.is_empty() {
        return Err(format!("the prefix {prefix:?} covers memo's reserved keys"));
    }
    Ok(())
}

/// Whether `key` is one of memo's own (P5).
pub fn is_reserved(key: &str) -> bool {
    key.starts_with(RESERVED_PREFIX)
}

/// Why a node could not load or save its copy of the table.
#[derive(Debug, thiserror::Error)]
pub enum PolicyError {
    /// Reading or writing the file failed.
    #[error("policy table file {path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// What the OS said.
        source: std::io::Error,
    },
    /// This node's keys do not fit the table: a wrong key file, or none where the
    /// cluster encrypts.
    #[error("{0}")]
    Keys(String),
    /// The file is damaged (checksum or format).
    #[error(
        "policy table file {path} is damaged ({why}); delete it to fetch the table from the cluster again at start"
    )]
    Corrupt {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        why: String,
    },
}

/// A node's policies: its cached copy of the cluster's table, where it saves it, and the
/// node's own default for keys no rule covers (its `--compression`).
#[derive(Debug)]
pub struct Policies {
    node_default: ValuePolicy,
    keyring: Option<Arc<Keyring>>,
    table: RwLock<Arc<PolicyTable>>,
    file: Option<PathBuf>,
    /// Serializes installs, so that saving and applying happen in revision order.
    installing: std::sync::Mutex<()>,
    /// Set when a newer table contradicted this node's keys (E5): encrypted writes are
    /// refused from then on.
    key_error: RwLock<Option<String>>,
}

impl Policies {
    /// The node's policies, with the table saved in `file` if there is one (loaded now),
    /// and the node's data keys if it has a key file. Refuses a saved table that
    /// encrypts when the node has no keys, or whose fingerprints its keys contradict.
    pub fn open(
        node_default: ValuePolicy,
        file: Option<PathBuf>,
        keyring: Option<Arc<Keyring>>,
    ) -> Result<Self, PolicyError> {
        let table = match &file {
            Some(path) => load(path)?,
            None => PolicyTable::default(),
        };
        let policies = Policies {
            node_default,
            keyring,
            table: RwLock::new(Arc::new(table)),
            file,
            installing: Default::default(),
            key_error: Default::default(),
        };
        let table = policies.table();
        policies.check(&table)?;
        if policies.keyring.is_none() && !table.encrypted_prefixes().is_empty() {
            return Err(PolicyError::Keys(format!(
                "the cluster encrypts the keys under {:?}, and this node has no --encryption-key-file",
                table.encrypted_prefixes()
            )));
        }
        Ok(policies)
    }

    /// Policies with no saved table and no keys (memory silos, tests).
    pub fn in_memory(node_default: ValuePolicy) -> Self {
        Self::open(node_default, None, None).expect("no file to load")
    }

    /// The node's data keys.
    pub fn keyring(&self) -> Option<&Keyring> {
        self.keyring.as_deref()
    }

    /// Checks this node's keys against a table (E5).
    fn check(&self, table: &PolicyTable) -> Result<(), PolicyError> {
        match &self.keyring {
            Some(keys) => table.check_keys(&keys.fingerprints()).map_err(PolicyError::Keys),
            None => Ok(()),
        }
    }

    /// The table this node applies.
    pub fn table(&self) -> Arc<PolicyTable> {
        self.table.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// The policy for a write to `key`: the longest matching rule, else the node's default.
    pub fn policy_for(&self, key: &str) -> ValuePolicy {
        let table = self.table.read().unwrap_or_else(|e| e.into_inner());
        table.rule_for(key).map_or(self.node_default, |(_, rule)| *rule)
    }

    /// Encodes a client's value for `key`: compressed, then encrypted if its rule says so.
    /// A node without keys refuses a write its rule encrypts, rather than store it in
    /// plaintext.
    pub fn encode(&self, key: &str, plain: Vec<u8>) -> Result<Value, KvError> {
        self.encode_under(self.policy_for(key), key, plain)
    }

    /// A client's write of `plain` to `key` as it enters the cluster at this node: the
    /// value encoded under the key's rule, and the stamp the write carries (the rule's
    /// versions, and this node's wall clock), from one lookup of the table.
    pub fn write(&self, key: &str, plain: Vec<u8>) -> Result<(Value, Stamp), KvError> {
        let policy = self.policy_for(key);
        Ok((self.encode_under(policy, key, plain)?, stamp(policy)))
    }

    /// The stamp of a write to `key` that carries no value (a Delete).
    pub fn stamp(&self, key: &str) -> Stamp {
        stamp(self.policy_for(key))
    }

    fn encode_under(&self, policy: ValuePolicy, key: &str, plain: Vec<u8>) -> Result<Value, KvError> {
        let value = policy.encode(plain);
        if !policy.encrypt {
            return Ok(value);
        }
        let keyring = self.keyring.as_ref().ok_or_else(|| {
            KvError::Unavailable(
                "the policy table encrypts this key, and this node has no --encryption-key-file: \
                 write through a node that has one"
                    .into(),
            )
        })?;
        if let Some(why) = self.key_error.read().unwrap_or_else(|e| e.into_inner()).as_ref() {
            return Err(KvError::Unavailable(format!("this node refuses encrypted writes: {why}")));
        }
        let (bytes, encoding) = keyring.encrypt(key, value.encoding.0, &value.bytes);
        Ok(Value { bytes, encoding: Encoding(encoding) })
    }

    /// Decodes a stored value of `key` back to the client's bytes: decrypted if it is
    /// encrypted (E3), then decompressed within `limit`.
    pub fn decode(&self, key: &str, value: Value, limit: usize) -> Result<Vec<u8>, KvError> {
        if value.encoding.0 & crypt::ENCRYPTED == 0 {
            return super::decode(value, limit);
        }
        let keyring = (self.keyring.as_ref())
            .ok_or_else(|| super::undecodable(value.encoding, "it is encrypted, and this node has no key file"))?;
        let inner = (keyring.decrypt(key, value.encoding.0, &value.bytes))
            .map_err(|why| super::undecodable(value.encoding, &why))?;
        super::decode(Value { bytes: inner, encoding: Encoding(value.encoding.0 & !crypt::ENCRYPTED) }, limit)
    }

    /// Applies `table` if it is newer than the current one (P1), saving it first (P2).
    /// Returns the revision applied now.
    pub fn install(&self, table: PolicyTable) -> Result<u64, PolicyError> {
        let _installing = self.installing.lock().unwrap_or_else(|e| e.into_inner());
        let current = self.table().revision;
        if table.revision <= current {
            return Ok(current);
        }
        if let Err(e) = self.check(&table) {
            // The cluster's table says this node's keys are wrong: whatever it would
            // encrypt now, no other node could read. Refuse encrypted writes until the
            // key file is fixed (a restart).
            tracing::error!(error = %e, "refusing encrypted writes");
            *self.key_error.write().unwrap_or_else(|e| e.into_inner()) = Some(e.to_string());
            return Err(e);
        }
        if let Some(path) = &self.file {
            save(path, &table)?;
        }
        let revision = table.revision;
        *self.table.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(table);
        tracing::info!(revision, "applying policy table");
        Ok(revision)
    }
}

/// The saved table: its stored form, then its CRC-32 (little-endian).
fn load(path: &Path) -> Result<PolicyTable, PolicyError> {
    let bytes = match std::fs::read(path) {
        Ok(bytes) => bytes,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(PolicyTable::default()),
        Err(source) => return Err(PolicyError::Io { path: path.into(), source }),
    };
    let corrupt = |why: String| PolicyError::Corrupt { path: path.into(), why };
    let Some(split) = bytes.len().checked_sub(4) else { return Err(corrupt("truncated".into())) };
    let (body, crc) = bytes.split_at(split);
    if crc32fast::hash(body).to_le_bytes() != crc {
        return Err(corrupt("checksum mismatch".into()));
    }
    PolicyTable::decode(body).map_err(corrupt)
}

/// Saves atomically: a temporary file, synced, renamed over the old one, and the
/// directory synced.
fn save(path: &Path, table: &PolicyTable) -> Result<(), PolicyError> {
    use std::io::Write;
    let io = |source| PolicyError::Io { path: path.into(), source };
    let mut bytes = table.encode();
    bytes.extend(crc32fast::hash(&bytes).to_le_bytes());
    let tmp = path.with_extension("tmp");
    let mut file = std::fs::File::create(&tmp).map_err(io)?;
    file.write_all(&bytes).map_err(io)?;
    file.sync_all().map_err(io)?;
    std::fs::rename(&tmp, path).map_err(io)?;
    if let Some(dir) = path.parent() {
        std::fs::File::open(dir).and_then(|d| d.sync_all()).map_err(io)?;
    }
    Ok(())
}

/// Reads the table's record from the cluster (linearizable): the record as stored (what
/// a swap must expect) and the table.
pub(crate) async fn read(kv: &crate::service::KvService) -> Result<(Option<Value>, PolicyTable), tonic::Status> {
    match kv.submit(Request::fetch(TABLE_KEY)).await {
        Ok(Response::Value(value)) => {
            let table = PolicyTable::decode(&value.bytes).map_err(tonic::Status::data_loss)?;
            Ok((Some(value), table))
        }
        Ok(other) => Err(tonic::Status::internal(format!("unexpected engine response: {other:?}"))),
        Err(status) if status.code() == tonic::Code::NotFound => Ok((None, PolicyTable::default())),
        Err(status) => Err(status),
    }
}

/// Changes the table in the cluster by read-modify-write (P3); returns the table stored.
pub(crate) async fn change(
    kv: &crate::service::KvService,
    edit: impl Fn(&mut PolicyTable) -> Result<(), tonic::Status>,
) -> Result<PolicyTable, tonic::Status> {
    for _ in 0..SWAP_ATTEMPTS_MAX {
        let (stored, mut table) = read(kv).await?;
        edit(&mut table)?;
        table.revision += 1;
        let swap = Change::Swap { expected: stored, value: Value::plain(table.encode()) };
        match kv.submit(Request::Kv { key: TABLE_KEY.into(), change: swap, stamp: Stamp::default() }).await {
            Ok(_) => return Ok(table),
            Err(status) if status.code() == tonic::Code::Aborted => continue,
            Err(status) => return Err(status),
        }
    }
    Err(tonic::Status::aborted("the policy table kept changing under this change; try again"))
}

/// Rereads the table from the cluster at start and every [`REFRESH_INTERVAL`], and
/// applies it if it is newer; runs until `stop` is set.
pub(crate) async fn refresh(
    kv: crate::service::KvService,
    policies: Arc<Policies>,
    interval: Duration,
    mut stop: tokio::sync::watch::Receiver<bool>,
) {
    loop {
        let delay = match read(&kv).await {
            Ok((_, table)) => match policies.install(table) {
                Ok(_) => interval,
                Err(e) => {
                    tracing::warn!(error = %e, "cannot save the policy table");
                    REFRESH_RETRY.min(interval)
                }
            },
            Err(status) => {
                tracing::debug!(%status, "policy table refresh failed");
                REFRESH_RETRY.min(interval)
            }
        };
        tokio::select! {
            _ = stop.changed() => return,
            () = tokio::time::sleep(delay) => {}
        }
    }
}

/// The stamp of a write under `policy` entering the cluster now: versioning only reads
/// the clock when the rule keeps versions.
fn stamp(policy: ValuePolicy) -> Stamp {
    if policy.versions <= 1 {
        return Stamp::default();
    }
    let since_epoch = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
    Stamp { keep: policy.versions, at_ms: u64::try_from(since_epoch.as_millis()).unwrap_or(u64::MAX) }
}

/// Parses a rule as the admin API carries it (an empty compression is `none`; 0
/// versions is the same as 1: no history).
pub fn parse_rule(compression: &str, encrypt: bool, versions: u64) -> Result<ValuePolicy, String> {
    let compression = if compression.is_empty() { Compression::None } else { compression.parse()? };
    let versions = u16::try_from(versions)
        .ok()
        .filter(|v| *v <= VERSIONS_MAX)
        .ok_or_else(|| format!("--versions {versions} is over the limit of {VERSIONS_MAX}"))?;
    Ok(ValuePolicy { compression, encrypt, versions })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rule(compression: Compression) -> ValuePolicy {
        ValuePolicy { compression, encrypt: false, versions: 0 }
    }

    fn table(rules: &[(&str, Compression)]) -> PolicyTable {
        let rules = rules.iter().map(|(p, c)| (p.to_string(), rule(*c))).collect();
        PolicyTable { revision: 1, rules, keys: BTreeMap::new() }
    }

    #[test]
    fn the_longest_matching_prefix_wins() {
        let t = table(&[
            ("", Compression::Lz4),
            ("a", Compression::Zstd(1)),
            ("ab", Compression::None),
            ("abc/", Compression::Zstd(9)),
            ("b", Compression::Zstd(2)),
        ]);
        let cases = [
            ("", ""),
            ("x", ""),
            ("a", "a"),
            ("aa", "a"),
            // "ab" sorts between "a" and "ac" but is not a prefix of "ac".
            ("ac", "a"),
            ("ab", "ab"),
            ("abc", "ab"),
            ("abc/", "abc/"),
            ("abc/d", "abc/"),
            ("abd", "ab"),
            ("b", "b"),
            ("ba", "b"),
            ("c", ""),
        ];
        for (key, prefix) in cases {
            assert_eq!(t.rule_for(key).map(|(p, _)| p), Some(prefix), "key {key:?}");
        }
        assert_eq!(table(&[("a", Compression::Lz4)]).rule_for("b"), None);
    }

    #[test]
    fn policies_fall_back_to_the_nodes_default() {
        let policies = Policies::in_memory(rule(Compression::Lz4));
        assert_eq!(policies.policy_for("k"), rule(Compression::Lz4));
        let t = table(&[("z/", Compression::None)]);
        policies.install(t).unwrap();
        assert_eq!(policies.policy_for("z/1"), rule(Compression::None));
        assert_eq!(policies.policy_for("k"), rule(Compression::Lz4));
    }

    #[test]
    fn a_table_contradicting_the_nodes_keys_is_refused_and_stops_encrypted_writes() {
        let keys = |hex: &str| Arc::new(Keyring::parse(&format!("k1 {}\n", hex.repeat(32)), [3; 32]).unwrap());
        let theirs = keys("aa").fingerprints();
        let policies = Policies::open(ValuePolicy::default(), None, Some(keys("bb"))).unwrap();
        let mut t = table(&[]);
        t.set("s/".into(), ValuePolicy { compression: Compression::None, encrypt: true, versions: 0 }).unwrap();
        let mut first = t.clone();
        first.keys.clear();
        policies.install(first).unwrap();
        assert!(policies.encode("s/1", b"v".to_vec()).is_ok(), "no fingerprint recorded yet");
        t.revision = 2;
        t.keys = theirs;
        let error = policies.install(t).unwrap_err();
        assert!(error.to_string().contains("wrong key file"), "{error}");
        assert_eq!(policies.table().revision, 1, "the contradicting table is not applied");
        let refused = policies.encode("s/2", b"v".to_vec()).unwrap_err();
        assert!(matches!(&refused, KvError::Unavailable(m) if m.contains("wrong key file")), "{refused:?}");
        assert!(policies.encode("plain", b"v".to_vec()).is_ok(), "unencrypted writes go on");
    }

    #[test]
    fn a_table_round_trips_and_garbage_is_refused() {
        let t = table(&[("", Compression::Lz4), ("logs/", Compression::Zstd(19))]);
        assert_eq!(PolicyTable::decode(&t.encode()), Ok(t.clone()));
        let mut wrong_format = t.encode();
        wrong_format[0] = 9;
        for bad in [vec![], wrong_format, vec![TABLE_FORMAT_1, 0xff, 0xff], t.encode()[..5].to_vec()] {
            assert!(PolicyTable::decode(&bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn a_table_without_versions_keeps_format_1_and_one_with_them_reads_back() {
        // The bytes builds before versioning wrote for a one-rule table (revision 3, "a"
        // under lz4 and encrypted, no keys): still written, still read.
        let mut t = table(&[]);
        t.revision = 3;
        t.rules.insert("a".into(), ValuePolicy { compression: Compression::Lz4, encrypt: true, versions: 0 });
        let v1 = [TABLE_FORMAT_1, 3, 1, 1, b'a', 1, 1, 0];
        assert_eq!(t.encode(), v1);
        assert_eq!(PolicyTable::decode(&v1), Ok(t.clone()));
        t.rules.insert("docs/".into(), ValuePolicy { compression: Compression::None, encrypt: false, versions: 10 });
        let v2 = t.encode();
        assert_eq!(v2[0], TABLE_FORMAT_2);
        assert_eq!(PolicyTable::decode(&v2), Ok(t.clone()));
        t.rules.insert("many/".into(), ValuePolicy { compression: Compression::None, encrypt: false, versions: 101 });
        assert!(PolicyTable::decode(&t.encode()).unwrap_err().contains("101 versions"));
        assert!(parse_rule("", false, 101).is_err());
        assert_eq!(parse_rule("", false, 100).map(|r| r.versions), Ok(100));
    }

    #[test]
    fn prefixes_must_not_cover_reserved_keys_or_exceed_the_key_limit() {
        let mut t = PolicyTable::default();
        assert!(t.set("".into(), rule(Compression::Lz4)).is_ok());
        for bad in ["\u{0}", "\u{0}me", "\u{0}memo/", "\u{0}memo/x", &"k".repeat(KEY_BYTES_MAX + 1)] {
            assert!(t.set(bad.to_string(), rule(Compression::Lz4)).is_err(), "{bad:?}");
        }
        assert!(t.set("\u{1}".into(), rule(Compression::Lz4)).is_ok());
        assert!(is_reserved(TABLE_KEY));
    }

    #[test]
    fn a_node_applies_newer_tables_only_and_saves_them_first() {
        let dir = std::env::temp_dir().join(format!("memo-policy-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("policy.table");
        let _ = std::fs::remove_file(&path);
        let policies = Policies::open(ValuePolicy::default(), Some(path.clone()), None).unwrap();
        let mut t2 = table(&[("a", Compression::Lz4)]);
        t2.revision = 2;
        let mut t1 = table(&[("a", Compression::Zstd(3))]);
        t1.revision = 1;
        assert_eq!(policies.install(t2.clone()).unwrap(), 2);
        assert_eq!(policies.install(t1).unwrap(), 2, "an older table is ignored");
        assert_eq!(*policies.table(), t2);
        // A restarted node loads what it saved.
        let reopened = Policies::open(ValuePolicy::default(), Some(path.clone()), None).unwrap();
        assert_eq!(*reopened.table(), t2);
        // A damaged file is a clear error, not an empty table.
        let mut bytes = std::fs::read(&path).unwrap();
        let last = bytes.len() - 1;
        bytes[last] ^= 1;
        std::fs::write(&path, &bytes).unwrap();
        let error = Policies::open(ValuePolicy::default(), Some(path.clone()), None).unwrap_err();
        assert!(error.to_string().contains("damaged"), "{error}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
