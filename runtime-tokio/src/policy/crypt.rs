//! Encryption at rest: XChaCha20-Poly1305 with 256-bit data keys from a key file
//! (docs/OPERATIONS.md, "Encryption").
//!
//! # Rules
//!
//! - **E1 encrypted where it enters.** The node that takes a client's write encrypts the
//!   value (after compressing it) before it goes anywhere: peer links, other replicas,
//!   logs and databases only ever hold the ciphertext. Key names (the KV keys) stay in
//!   plaintext: List needs their order.
//! - **E2 bound to its key.** The associated data is the format tag, the value's encoding
//!   byte, the data key's name and the KV key: a ciphertext moved to another KV key, or
//!   relabelled as another encoding or data key, fails to decrypt.
//! - **E3 never garbage, never plaintext.** A value that fails to decrypt, or names a data
//!   key this node does not have, is an error; there is no fallback to the stored bytes.
//! - **E4 the newest key encrypts, every key decrypts.** A key file lists keys oldest
//!   first; the last one encrypts new values, the others still decrypt (rotation).
//! - **E5 one key per name in the whole cluster.** The policy table records the
//!   fingerprint of every data key used under a rule; a node whose key file gives one of
//!   those names other bytes refuses to start (a wrong key file would otherwise write
//!   values no other node can read). Every peer batch also carries its sender's key
//!   fingerprints, and a receiver holding one of those names with other bytes refuses it
//!   (`crate::peer`), so a wrong key shows before any rule records it.
//! - **E6 unique nonces.** Each encryption draws a fresh 192-bit nonce from a ChaCha20
//!   generator seeded with 256 bits of OS randomness (from the simulation's seed under
//!   madsim, so runs stay deterministic).
//!
//! # The stored form
//!
//! `[name length: u8][name][nonce: 24 bytes][ciphertext and 16-byte tag]`, with bit 4 of
//! the encoding byte set; bits 0–3 still name the compression applied before encryption.

use rand_chacha::ChaCha20Rng;
use rand_core::{Rng, SeedableRng};
use std::collections::BTreeMap;
use std::fmt;
use std::path::Path;
use std::sync::Mutex;

use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use chacha20poly1305::{XChaCha20Poly1305, XNonce};

/// The encoding bit of an encrypted value.
pub const ENCRYPTED: u8 = 0x10;
/// The first bytes of the associated data: the format of the stored form.
const AAD_TAG: &[u8] = b"memo/xchacha20poly1305/v1";
const NONCE_BYTES: usize = 24;
const TAG_BYTES: usize = 16;
/// A key name: 1 to 32 of `[A-Za-z0-9._-]`.
const KEY_NAME_BYTES_MAX: usize = 32;

/// A data key's fingerprint: the first 8 bytes of its BLAKE3 hash under a fixed context,
/// safe to show and to store.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, serde::Serialize, serde::Deserialize)]
pub struct Fingerprint(pub [u8; 8]);

impl fmt::Display for Fingerprint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&hex(&self.0))
    }
}

/// Bytes as lowercase hex digits (a fingerprint as a peer sent it, whatever its length).
pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

struct DataKey {
    name: String,
    cipher: XChaCha20Poly1305,
    fingerprint: Fingerprint,
}

/// The data keys of a node, from its key file (E4), and its nonce generator (E6).
pub struct Keyring {
    keys: Vec<DataKey>,
    nonces: Mutex<ChaCha20Rng>,
}

impl fmt::Debug for Keyring {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let keys: Vec<_> = self.keys.iter().map(|k| (&k.name, k.fingerprint.to_string())).collect();
        f.debug_struct("Keyring").field("keys", &keys).finish_non_exhaustive()
    }
}

impl Keyring {
    /// Reads a key file: one key per line, `NAME HEX` with 64 hex digits (32 bytes),
    /// oldest first; blank lines and lines starting with `#` are skipped.
    pub fn load(path: &Path, nonce_seed: [u8; 32]) -> Result<Keyring, String> {
        let text = std::fs::read_to_string(path).map_err(|e| format!("key file {}: {e}", path.display()))?;
        Self::parse(&text, nonce_seed).map_err(|why| format!("key file {}: {why}", path.display()))
    }

    /// Parses the key file's text (see [`Keyring::load`]).
    pub fn parse(text: &str, nonce_seed: [u8; 32]) -> Result<Keyring, String> {
        let mut keys: Vec<DataKey> = Vec::new();
        for (i, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let at = || format!("line {}", i + 1);
            let mut fields = line.split_whitespace();
            let (Some(name), Some(hex), None) = (fields.next(), fields.next(), fields.next()) else {
                return Err(format!("{}: expected `NAME HEX`", at()));
            };
            let name_ok = name.len() <= KEY_NAME_BYTES_MAX
                && name.bytes().all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b));
            if !name_ok {
                return Err(format!("{}: a key name is 1 to {KEY_NAME_BYTES_MAX} of A-Z a-z 0-9 . _ -", at()));
            }
            if keys.iter().any(|k| k.name == name) {
                return Err(format!("{}: the key name {name} is used twice", at()));
            }
            let bytes = parse_hex(hex).ok_or_else(|| format!("{}: a key is 64 hex digits (32 bytes)", at()))?;
            let fingerprint = fingerprint(&bytes);
            let cipher = XChaCha20Poly1305::new(&bytes.into());
            keys.push(DataKey { name: name.to_string(), cipher, fingerprint });
        }
        if keys.is_empty() {
            return Err("it holds no key".into());
        }
        Ok(Keyring { keys, nonces: Mutex::new(ChaCha20Rng::from_seed(nonce_seed)) })
    }

    /// Every key's name and fingerprint, oldest first.
    pub fn fingerprints(&self) -> BTreeMap<String, Fingerprint> {
        self.keys.iter().map(|k| (k.name.clone(), k.fingerprint)).collect()
    }

    /// The key that encrypts: the newest.
    fn newest(&self) -> &DataKey {
        self.keys.last().expect("a keyring holds a key")
    }

    /// Encrypts `plain` (already compressed as `encoding` says) for the KV key `key`;
    /// returns the stored bytes and the encoding with [`ENCRYPTED`] set.
    pub fn encrypt(&self, key: &str, encoding: u8, plain: &[u8]) -> (Vec<u8>, u8) {
        let encoding = encoding | ENCRYPTED;
        let data_key = self.newest();
        let mut nonce = [0u8; NONCE_BYTES];
        self.nonces.lock().unwrap_or_else(|e| e.into_inner()).fill_bytes(&mut nonce);
        let aad = aad(encoding, &data_key.name, key);
        let sealed = (data_key.cipher.encrypt(XNonce::from_slice(&nonce), Payload { msg: plain, aad: &aad }))
            .expect("XChaCha20-Poly1305 encrypts any message under 256 GiB");
        let mut out = Vec::with_capacity(1 + data_key.name.len() + NONCE_BYTES + sealed.len());
        out.push(data_key.name.len() as u8);
        out.extend_from_slice(data_key.name.as_bytes());
        out.extend_from_slice(&nonce);
        out.extend_from_slice(&sealed);
        (out, encoding)
    }

    /// Decrypts a stored value of the KV key `key` (E2, E3).
    pub fn decrypt(&self, key: &str, encoding: u8, stored: &[u8]) -> Result<Vec<u8>, String> {
        let (name, rest) = split_name(stored).ok_or("truncated")?;
        if rest.len() < NONCE_BYTES + TAG_BYTES {
            return Err("truncated".into());
        }
        let data_key = (self.keys.iter().find(|k| k.name == name)).ok_or_else(|| {
            format!("it is encrypted with the key {name:?}, which this node's key file does not hold")
        })?;
        let (nonce, sealed) = rest.split_at(NONCE_BYTES);
        let aad = aad(encoding, name, key);
        (data_key.cipher.decrypt(XNonce::from_slice(nonce), Payload { msg: sealed, aad: &aad }))
            .map_err(|_| format!("it does not decrypt with the key {name:?} (a wrong key, or damaged or moved bytes)"))
    }
}

/// The name of the data key a stored value names, and the rest of it.
fn split_name(stored: &[u8]) -> Option<(&str, &[u8])> {
    let (&len, rest) = stored.split_first()?;
    let name = rest.get(..len as usize)?;
    Some((std::str::from_utf8(name).ok()?, &rest[len as usize..]))
}

fn aad(encoding: u8, name: &str, key: &str) -> Vec<u8> {
    let mut aad = Vec::with_capacity(AAD_TAG.len() + 2 + name.len() + key.len());
    aad.extend_from_slice(AAD_TAG);
    aad.push(encoding);
    aad.push(name.len() as u8);
    aad.extend_from_slice(name.as_bytes());
    aad.extend_from_slice(key.as_bytes());
    aad
}

fn fingerprint(key: &[u8; 32]) -> Fingerprint {
    let hash = blake3::derive_key("memo 2026 data key fingerprint", key);
    Fingerprint(hash[..8].try_into().expect("eight bytes"))
}

fn parse_hex(hex: &str) -> Option<[u8; 32]> {
    if hex.len() != 64 {
        return None;
    }
    let mut out = [0u8; 32];
    for (i, byte) in out.iter_mut().enumerate() {
        *byte = u8::from_str_radix(hex.get(2 * i..2 * i + 2)?, 16).ok()?;
    }
    Some(out)
}

/// 256 bits for a node's nonce generator: from the OS in real builds (falling back to
/// `seed` mixed with the time only if `/dev/urandom` cannot be read), from `seed` under
/// madsim.
pub fn nonce_seed(seed: u64) -> [u8; 32] {
    #[cfg(not(madsim))]
    {
        use std::io::Read;
        let mut bytes = [0u8; 32];
        if std::fs::File::open("/dev/urandom").and_then(|mut f| f.read_exact(&mut bytes)).is_ok() {
            return bytes;
        }
        let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default().as_nanos();
        let mut hasher = blake3::Hasher::new();
        hasher.update(&seed.to_le_bytes()).update(&now.to_le_bytes()).update(&std::process::id().to_le_bytes());
        *hasher.finalize().as_bytes()
    }
    #[cfg(madsim)]
    {
        *blake3::hash(&seed.to_le_bytes()).as_bytes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const K1: &str = "1111111111111111111111111111111111111111111111111111111111111111";
    const K2: &str = "2222222222222222222222222222222222222222222222222222222222222222";

    fn ring(text: &str) -> Keyring {
        Keyring::parse(text, [7; 32]).unwrap()
    }

    #[test]
    fn a_value_round_trips_and_is_not_stored_in_plaintext() {
        let keys = ring(&format!("# keys\nk1 {K1}\n"));
        let plain = b"a secret worth keeping, a secret worth keeping".to_vec();
        let (stored, encoding) = keys.encrypt("doc/1", 0, &plain);
        assert_eq!(encoding, ENCRYPTED);
        assert!(!stored.windows(8).any(|w| plain.windows(8).any(|p| p == w)), "plaintext leaked");
        assert_eq!(keys.decrypt("doc/1", encoding, &stored).unwrap(), plain);
        // Two encryptions of one value differ (fresh nonces).
        assert_ne!(keys.encrypt("doc/1", 0, &plain).0, stored);
    }

    #[test]
    fn a_ciphertext_moved_relabelled_or_damaged_does_not_decrypt() {
        let keys = ring(&format!("k1 {K1}\n"));
        let (stored, encoding) = keys.encrypt("doc/1", 0, b"value");
        assert!(keys.decrypt("doc/2", encoding, &stored).is_err(), "moved to another key");
        assert!(keys.decrypt("doc/1", encoding | 1, &stored).is_err(), "relabelled as compressed");
        for i in 0..stored.len() {
            let mut damaged = stored.clone();
            damaged[i] ^= 0x40;
            assert!(keys.decrypt("doc/1", encoding, &damaged).is_err(), "byte {i} damaged");
        }
        for len in 0..stored.len() {
            assert!(keys.decrypt("doc/1", encoding, &stored[..len]).is_err(), "truncated to {len}");
        }
    }

    #[test]
    fn the_newest_key_encrypts_and_every_key_decrypts() {
        let old = ring(&format!("k1 {K1}\n"));
        let rotated = ring(&format!("k1 {K1}\nk2 {K2}\n"));
        let (by_old, e1) = old.encrypt("k", 0, b"before");
        let (by_new, e2) = rotated.encrypt("k", 0, b"after");
        assert_eq!(rotated.decrypt("k", e1, &by_old).unwrap(), b"before");
        assert_eq!(&by_new[..3], b"\x02k2");
        let missing = old.decrypt("k", e2, &by_new).unwrap_err();
        assert!(missing.contains("\"k2\""), "{missing}");
        // The same name with other bytes: a wrong key, found by its fingerprint.
        let wrong = ring(&format!("k1 {K2}\n"));
        assert_ne!(wrong.fingerprints()["k1"], old.fingerprints()["k1"]);
        assert!(wrong.decrypt("k", e1, &by_old).unwrap_err().contains("does not decrypt"));
    }

    #[test]
    fn bad_key_files_are_refused_with_the_line() {
        for (text, why) in [
            ("", "no key"),
            ("# only a comment\n", "no key"),
            ("k1\n", "line 1"),
            (&format!("k1 {K1} extra\n"), "line 1"),
            (&format!("k1 {}\n", &K1[..62]), "64 hex"),
            (&format!("k1 {}zz\n", &K1[..62]), "64 hex"),
            (&format!("bad/name {K1}\n"), "key name"),
            (&format!("k1 {K1}\nk1 {K2}\n"), "twice"),
        ] {
            let error = Keyring::parse(text, [0; 32]).unwrap_err();
            assert!(error.contains(why), "{text:?}: {error}");
        }
    }
}
