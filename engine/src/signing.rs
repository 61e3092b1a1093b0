//! The warehouse's release-signing key (Ed25519) and the canonical form of what it signs.
//!
//! A release bundle is a JSON object `{"format", "release", "public_key", "signature"}`; the
//! signature is over the canonical bytes of `release`: JSON with every object's keys sorted (by
//! their UTF-8 bytes), no whitespace, strings escaped as JSON requires (`"`, `\`, control
//! characters; nothing else), numbers as written. Anyone with the public key checks a bundle
//! offline, without the warehouse: the key is created at `init`, kept next to the database
//! (mode 0600), printed by `secretum info` and served at `/v1/signing-key`.

use std::io::Write;
use std::path::{Path, PathBuf};

use ed25519_dalek::{Signature, Signer as _, SigningKey, Verifier as _, VerifyingKey};
use serde_json::Value;

use crate::error::{Error, Result};

/// The file the signing key lives in, in the data directory.
pub fn key_path(data_dir: &Path) -> PathBuf {
    data_dir.join("signing.key")
}

/// The warehouse's signing key.
pub struct Signer {
    key: SigningKey,
}

impl std::fmt::Debug for Signer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Signer({})", self.public_hex())
    }
}

impl Signer {
    /// The warehouse's key, created (from the operating system's secure random source, written
    /// readable by its owner only) if the warehouse has none yet.
    pub fn open_or_create(data_dir: &Path) -> Result<Signer> {
        let path = key_path(data_dir);
        let err = |reason: String| Error::Key { path: path.clone(), reason };
        if !path.exists() {
            use rand::RngCore;
            let mut seed = [0u8; 32];
            rand::rngs::OsRng.fill_bytes(&mut seed);
            let mut options = std::fs::OpenOptions::new();
            options.write(true).create_new(true);
            #[cfg(unix)]
            {
                use std::os::unix::fs::OpenOptionsExt;
                options.mode(0o600);
            }
            match options.open(&path) {
                Ok(mut file) => {
                    writeln!(file, "{}", hex::encode(seed)).and_then(|_| file.sync_all()).map_err(|e| err(format!("cannot write: {e}")))?
                }
                // Another process created it meanwhile: read theirs.
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
                Err(e) => return Err(err(format!("cannot create: {e}"))),
            }
        }
        let text = std::fs::read_to_string(&path).map_err(|e| err(format!("cannot read: {e}")))?;
        let seed: [u8; 32] = hex::decode(text.trim())
            .ok()
            .and_then(|b| b.try_into().ok())
            .ok_or_else(|| err("is not a signing key (expected 64 hex digits)".into()))?;
        Ok(Signer { key: SigningKey::from_bytes(&seed) })
    }

    /// The public key, as 64 hex digits.
    pub fn public_hex(&self) -> String {
        hex::encode(self.key.verifying_key().to_bytes())
    }

    /// Sign `release`: the signature (hex) over its canonical form.
    pub fn sign(&self, release: &Value) -> String {
        hex::encode(self.key.sign(canonical(release).as_bytes()).to_bytes())
    }
}

/// The canonical text of a JSON value (see the module's comment).
pub fn canonical(v: &Value) -> String {
    let mut out = String::new();
    write_canonical(v, &mut out);
    out
}

fn write_canonical(v: &Value, out: &mut String) {
    match v {
        Value::Object(map) => {
            let mut keys: Vec<&String> = map.keys().collect();
            keys.sort();
            out.push('{');
            for (i, k) in keys.into_iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                out.push_str(&Value::String(k.clone()).to_string());
                out.push(':');
                write_canonical(&map[k], out);
            }
            out.push('}');
        }
        Value::Array(items) => {
            out.push('[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                write_canonical(item, out);
            }
            out.push(']');
        }
        other => out.push_str(&other.to_string()),
    }
}

/// The format tag of bundles this version writes.
pub const BUNDLE_FORMAT: &str = "secretum-release-bundle/1";

/// Check a bundle's signature with a public key given by the person checking (never the one in
/// the bundle alone: whoever edits a bundle can put their own key in it). Returns the checked
/// `release`, or what failed (a [`Error::BadRequest`] saying which check).
pub fn verify(bundle: &Value, public_key_hex: &str) -> Result<Value> {
    verify_inner(bundle, public_key_hex).map_err(|why| Error::BadRequest(why.into_owned()))
}

fn verify_inner(bundle: &Value, public_key_hex: &str) -> std::result::Result<Value, std::borrow::Cow<'static, str>> {
    if bundle.get("format").and_then(Value::as_str) != Some(BUNDLE_FORMAT) {
        return Err(format!("not a secretum release bundle (format is not {BUNDLE_FORMAT})").into());
    }
    let key_bytes: [u8; 32] = hex::decode(public_key_hex.trim())
        .ok()
        .and_then(|b| b.try_into().ok())
        .ok_or("the public key is not 64 hex digits (as `secretum info` prints it)")?;
    let key = VerifyingKey::from_bytes(&key_bytes).map_err(|_| "the public key is not a valid Ed25519 key")?;
    if bundle.get("public_key").and_then(Value::as_str).is_some_and(|k| !k.eq_ignore_ascii_case(public_key_hex.trim())) {
        return Err("the bundle names another signing key than the one given: it was not signed by this warehouse".into());
    }
    let signature: [u8; 64] = bundle
        .get("signature")
        .and_then(Value::as_str)
        .and_then(|s| hex::decode(s).ok())
        .and_then(|b| b.try_into().ok())
        .ok_or("the bundle's signature is missing or not 128 hex digits")?;
    let release = bundle.get("release").ok_or("the bundle has no release")?;
    key.verify(canonical(release).as_bytes(), &Signature::from_bytes(&signature))
        .map_err(|_| "the signature does not match the release: the bundle was changed after it was signed, or signed by another key")?;
    Ok(release.clone())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn canonical_sorts_keys_and_keeps_numbers_and_strings_as_json() {
        let v: Value = serde_json::from_str(r#"{"b": [1, 2.5, 1e-6], "a": {"z": null, "é": "x\"\n"}}"#).unwrap();
        assert_eq!(canonical(&v), r#"{"a":{"z":null,"é":"x\"\n"},"b":[1,2.5,1e-6]}"#);
    }

    #[test]
    fn a_signed_release_verifies_and_any_change_fails() {
        let dir = tempfile::tempdir().unwrap();
        let signer = Signer::open_or_create(dir.path()).unwrap();
        let again = Signer::open_or_create(dir.path()).unwrap();
        assert_eq!(signer.public_hex(), again.public_hex(), "the key is kept");
        let release = serde_json::json!({"sql": "SELECT 1", "rows": [[{"value": 10}]], "epsilon": 0.5});
        let bundle = serde_json::json!({
            "format": BUNDLE_FORMAT, "release": release, "public_key": signer.public_hex(), "signature": signer.sign(&release)
        });
        assert!(verify(&bundle, &signer.public_hex()).is_ok());
        let mut changed = bundle.clone();
        changed["release"]["rows"][0][0]["value"] = 11.into();
        assert!(verify(&changed, &signer.public_hex()).is_err());
        let other = Signer::open_or_create(&dir.path().join("x")).err();
        assert!(other.is_some(), "no directory, no key");
    }
}
