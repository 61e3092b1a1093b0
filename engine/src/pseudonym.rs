//! Keyed pseudonyms: HMAC-SHA256 under the steward's 256-bit key.
//!
//! A pseudonym is the first 63 bits of HMAC-SHA256(key, domain ‖ 0x00 ‖ value), where `domain`
//! is the stored column's name. The same identifier gives the same `person_id` in every table
//! (so tables join), identifiers of different kinds never collide into each other's space, and
//! without the key nobody can recompute or invert a pseudonym. With 1,000,000 patients the
//! chance that two share a 63-bit pseudonym is about 5e-8 (birthday bound n²/2^64).

use std::io::Write;
use std::path::Path;

use hmac::{Hmac, Mac};
use sha2::Sha256;

use crate::error::{Error, Result};

type HmacSha256 = Hmac<Sha256>;

/// The steward's pseudonymization key. Never printed, never logged.
#[derive(Clone)]
pub struct Key([u8; 32]);

impl std::fmt::Debug for Key {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Key(..)")
    }
}

impl Key {
    /// 256 bits from the operating system's secure random source.
    pub fn generate() -> Key {
        use rand::RngCore;
        let mut k = [0u8; 32];
        rand::rngs::OsRng.fill_bytes(&mut k);
        Key(k)
    }

    pub fn from_bytes(bytes: [u8; 32]) -> Key {
        Key(bytes)
    }

    /// Write a new key file readable by its owner only. Refuses to overwrite an existing file.
    pub fn create_file(path: &Path) -> Result<Key> {
        let key = Key::generate();
        let err = |reason: String| Error::Key { path: path.to_owned(), reason };
        let mut options = std::fs::OpenOptions::new();
        options.write(true).create_new(true);
        #[cfg(unix)]
        {
            use std::os::unix::fs::OpenOptionsExt;
            options.mode(0o600);
        }
        let mut file = options.open(path).map_err(|e| {
            if e.kind() == std::io::ErrorKind::AlreadyExists {
                err("already exists; refusing to overwrite a pseudonymization key (every pseudonym made with it would be lost). Use another --key-file or remove it deliberately".into())
            } else {
                err(format!("cannot create: {e}"))
            }
        })?;
        writeln!(file, "{}", hex::encode(key.0)).and_then(|_| file.sync_all()).map_err(|e| err(format!("cannot write: {e}")))?;
        Ok(key)
    }

    /// Read a key file, refusing one that others can read.
    pub fn load(path: &Path) -> Result<Key> {
        let err = |reason: String| Error::Key { path: path.to_owned(), reason };
        let meta = std::fs::metadata(path).map_err(|e| {
            if e.kind() == std::io::ErrorKind::NotFound {
                err("not found: pass the steward's key with --key-file (the key made by `secretum init`)".into())
            } else {
                err(format!("cannot read: {e}"))
            }
        })?;
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = meta.permissions().mode() & 0o777;
            if mode & 0o077 != 0 {
                return Err(err(format!(
                    "permissions {mode:03o} let other users read the pseudonymization key; run `chmod 600 {}` and check who has copied it",
                    path.display()
                )));
            }
        }
        let _ = meta;
        let text = std::fs::read_to_string(path).map_err(|e| err(format!("cannot read: {e}")))?;
        let bytes = hex::decode(text.trim()).map_err(|_| err("is not a secretum key (expected 64 hex digits)".into()))?;
        let bytes: [u8; 32] = bytes.try_into().map_err(|_| err("is not a secretum key (expected 256 bits)".into()))?;
        Ok(Key(bytes))
    }

    /// A fingerprint recorded in the catalog at init, so that ingest with another key is refused
    /// instead of silently producing pseudonyms that link to nobody.
    pub fn fingerprint(&self) -> String {
        let mut mac = HmacSha256::new_from_slice(&self.0).expect("HMAC takes keys of any length");
        mac.update(b"secretum key fingerprint v1");
        hex::encode(&mac.finalize().into_bytes()[..16])
    }

    /// Derive an independent sub-key for another purpose (e.g. date shifting).
    pub fn derive(&self, purpose: &str) -> Key {
        let mut mac = HmacSha256::new_from_slice(&self.0).expect("HMAC takes keys of any length");
        mac.update(b"secretum subkey v1\0");
        mac.update(purpose.as_bytes());
        Key(mac.finalize().into_bytes().into())
    }
}

/// A pseudonymizer for one stored column: the keyed HMAC state is computed once and cloned per
/// value (the key schedule is the expensive part of a short HMAC).
#[derive(Clone)]
pub struct Pseudonymizer {
    state: HmacSha256,
}

impl Pseudonymizer {
    pub fn new(key: &Key, domain: &str) -> Pseudonymizer {
        let mut state = HmacSha256::new_from_slice(&key.0).expect("HMAC takes keys of any length");
        state.update(domain.as_bytes());
        state.update(&[0]);
        Pseudonymizer { state }
    }

    /// The pseudonym of one raw identifier: a non-negative 63-bit integer.
    pub fn pseudonymize(&self, value: &[u8]) -> i64 {
        let mut mac = self.state.clone();
        mac.update(value);
        let out = mac.finalize().into_bytes();
        let mut first = [0u8; 8];
        first.copy_from_slice(&out[..8]);
        (u64::from_be_bytes(first) >> 1) as i64
    }
}

/// The French NIR check: 13 characters (digits; 2A/2B for Corsica in positions 6-7) then a
/// two-digit key equal to 97 - (n mod 97).
pub fn nir_is_valid(nir: &str) -> bool {
    let b = nir.as_bytes();
    if b.len() != 15 || !b[13..].iter().all(u8::is_ascii_digit) {
        return false;
    }
    let body = &nir[..13];
    let numeric: String = match &body[5..7] {
        "2A" => format!("{}19{}", &body[..5], &body[7..]),
        "2B" => format!("{}18{}", &body[..5], &body[7..]),
        _ => body.to_owned(),
    };
    let Ok(n) = numeric.parse::<u64>() else { return false };
    if !numeric.bytes().all(|c| c.is_ascii_digit()) {
        return false;
    }
    let key: u64 = nir[13..].parse().unwrap_or(100);
    97 - n % 97 == key
}

/// The NIR key for a 13-digit body (used by the synthetic generator).
pub fn nir_key(body: u64) -> u64 {
    97 - body % 97
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pseudonyms_are_deterministic_per_key_and_domain() {
        let k1 = Key::from_bytes([1; 32]);
        let k2 = Key::from_bytes([2; 32]);
        let p = Pseudonymizer::new(&k1, "person_id");
        assert_eq!(p.pseudonymize(b"185057800608436"), Pseudonymizer::new(&k1, "person_id").pseudonymize(b"185057800608436"));
        assert_ne!(p.pseudonymize(b"185057800608436"), Pseudonymizer::new(&k2, "person_id").pseudonymize(b"185057800608436"));
        assert_ne!(p.pseudonymize(b"185057800608436"), Pseudonymizer::new(&k1, "visit_occurrence_id").pseudonymize(b"185057800608436"));
        assert!(p.pseudonymize(b"x") >= 0);
    }

    #[test]
    fn nir_control_key() {
        let body = 1_85_05_78_006_084u64;
        let nir = format!("{body:013}{:02}", nir_key(body));
        assert!(nir_is_valid(&nir), "{nir}");
        assert!(!nir_is_valid(&format!("{body:013}{:02}", (nir_key(body) + 1) % 100)));
        assert!(!nir_is_valid("12345"));
        assert!(!nir_is_valid("1850578006084xx"));
        // Corsica: 2A counts as 19.
        let corsica = 2_85_05_19_006_084u64;
        let nir = format!("28505{}006084{:02}", "2A", nir_key(corsica));
        assert!(nir_is_valid(&nir), "{nir}");
    }

    #[test]
    fn key_files_are_private_and_never_overwritten() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("key");
        let k = Key::create_file(&path).unwrap();
        assert_eq!(Key::load(&path).unwrap().fingerprint(), k.fingerprint());
        let again = Key::create_file(&path).unwrap_err().to_string();
        assert!(again.contains("refusing to overwrite"), "{again}");
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
            let loose = Key::load(&path).unwrap_err().to_string();
            assert!(loose.contains("chmod 600"), "{loose}");
        }
        std::fs::write(dir.path().join("bad"), "zz").unwrap();
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(dir.path().join("bad"), std::fs::Permissions::from_mode(0o600)).unwrap();
        }
        assert!(Key::load(&dir.path().join("bad")).unwrap_err().to_string().contains("not a secretum key"));
        assert!(Key::load(&dir.path().join("missing")).unwrap_err().to_string().contains("--key-file"));
    }
}
