//! Accounts and bearer tokens.
//!
//! A token is 256 bits from the operating system's random source, shown once when it is
//! issued; the catalog keeps only its SHA-256. Looking a token up by its hash needs no secret
//! comparison, and a stolen catalog yields no usable token (the preimage is 256 random bits).
//! Revoking or rotating takes effect on the next request: every request looks the hash up.
//! Every change writes its audit entry (who did it, never the token) in the same transaction.

use rand::RngCore;
use rusqlite::{Connection, OptionalExtension, TransactionBehavior, params};
use serde::Serialize;
use sha2::{Digest, Sha256};

use crate::audit::{self, Event};
use crate::db::now_rfc3339;
use crate::error::{Error, Result};

/// What an account may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, serde::Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Manages accounts, nothing else.
    Admin,
    /// Ingest, project approval, budgets, audit.
    Steward,
    /// Project requests and queries in the projects they belong to.
    Researcher,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Admin => "admin",
            Role::Steward => "steward",
            Role::Researcher => "researcher",
        }
    }
}

impl std::str::FromStr for Role {
    type Err = Error;
    fn from_str(s: &str) -> Result<Role> {
        match s {
            "admin" => Ok(Role::Admin),
            "steward" => Ok(Role::Steward),
            "researcher" => Ok(Role::Researcher),
            other => Err(Error::BadRequest(format!("unknown role {other:?}: expected admin, steward or researcher"))),
        }
    }
}

impl std::fmt::Display for Role {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.pad(self.as_str())
    }
}

/// An account, as anyone may see it (no secrets).
#[derive(Debug, Clone, PartialEq, Serialize, utoipa::ToSchema)]
pub struct User {
    pub name: String,
    pub role: Role,
    pub created_at: String,
    /// Tokens that still work, by their public prefix.
    pub active_tokens: Vec<TokenInfo>,
}

/// A token without its secret.
#[derive(Debug, Clone, PartialEq, Serialize, utoipa::ToSchema)]
pub struct TokenInfo {
    /// The first characters of the token, enough to tell tokens apart.
    pub prefix: String,
    pub created_at: String,
    pub last_used_at: Option<String>,
}

/// Who made a request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Principal {
    pub name: String,
    pub role: Role,
}

const TOKEN_PREFIX: &str = "sct_";

/// A fresh token: `sct_` and 64 hex digits (256 bits from the OS's random source).
fn new_token() -> String {
    let mut bytes = [0u8; 32];
    rand::rngs::OsRng.fill_bytes(&mut bytes);
    format!("{TOKEN_PREFIX}{}", hex::encode(bytes))
}

pub fn token_hash(token: &str) -> String {
    hex::encode(Sha256::digest(token.as_bytes()))
}

fn check_name(name: &str) -> Result<()> {
    if name.is_empty() || name.len() > 64 || !name.chars().all(|c| c.is_ascii_alphanumeric() || "-_.@".contains(c)) {
        return Err(Error::BadRequest(format!("user name {name:?}: use 1 to 64 letters, digits, '-', '_', '.' or '@'")));
    }
    Ok(())
}

/// Accounts over the catalog database.
pub struct Accounts<'c> {
    conn: &'c mut Connection,
}

impl<'c> Accounts<'c> {
    pub fn new(conn: &'c mut Connection) -> Accounts<'c> {
        Accounts { conn }
    }

    /// Create an account and its first token, on `actor`'s behalf. The token is returned once
    /// and never stored.
    pub fn add(&mut self, actor: &str, name: &str, role: Role) -> Result<(User, String)> {
        check_name(name)?;
        let tx = self.conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        let exists: bool = tx.query_row("SELECT EXISTS (SELECT 1 FROM users WHERE name = ?1)", [name], |r| r.get(0))?;
        if exists {
            return Err(Error::Conflict(format!("user {name:?} already exists (rotate its token with `secretum user rotate`)")));
        }
        tx.execute("INSERT INTO users (name, role, created_at) VALUES (?1, ?2, ?3)", params![name, role.as_str(), now_rfc3339()])?;
        let token = insert_token(&tx, tx.last_insert_rowid())?;
        let detail = format!("{name} as {role}");
        audit::append_in(&tx, &Event { actor, action: "user.added", outcome: "ok", detail: Some(&detail), ..Default::default() })?;
        tx.commit()?;
        let user = self.get(name)?.ok_or_else(|| Error::internal(format!("user {name:?} vanished after its creation")))?;
        Ok((user, token))
    }

    pub fn get(&self, name: &str) -> Result<Option<User>> {
        let row = self
            .conn
            .query_row("SELECT id, name, role, created_at FROM users WHERE name = ?1", [name], |r| {
                Ok((r.get::<_, i64>(0)?, r.get::<_, String>(1)?, r.get::<_, String>(2)?, r.get::<_, String>(3)?))
            })
            .optional()?;
        let Some((id, name, role, created_at)) = row else { return Ok(None) };
        let mut stmt = self
            .conn
            .prepare_cached("SELECT prefix, created_at, last_used_at FROM tokens WHERE user_id = ?1 AND revoked_at IS NULL ORDER BY id")?;
        let active_tokens = stmt
            .query_map([id], |r| Ok(TokenInfo { prefix: r.get(0)?, created_at: r.get(1)?, last_used_at: r.get(2)? }))?
            .collect::<rusqlite::Result<_>>()?;
        Ok(Some(User { name, role: role.parse()?, created_at, active_tokens }))
    }

    pub fn list(&self) -> Result<Vec<User>> {
        let names: Vec<String> = self
            .conn
            .prepare_cached("SELECT name FROM users ORDER BY id")?
            .query_map([], |r| r.get(0))?
            .collect::<rusqlite::Result<_>>()?;
        names.iter().filter_map(|n| self.get(n).transpose()).collect()
    }

    /// Revoke every token of an account, on `actor`'s behalf. Returns how many were revoked.
    pub fn revoke(&mut self, actor: &str, name: &str) -> Result<usize> {
        let id = self.user_id(name)?;
        let tx = self.conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        let revoked =
            tx.execute("UPDATE tokens SET revoked_at = ?1 WHERE user_id = ?2 AND revoked_at IS NULL", params![now_rfc3339(), id])?;
        let detail = format!("{name}: {revoked} tokens");
        audit::append_in(&tx, &Event { actor, action: "token.revoked", outcome: "ok", detail: Some(&detail), ..Default::default() })?;
        tx.commit()?;
        Ok(revoked)
    }

    /// Revoke every token of an account and issue a new one (returned once), on `actor`'s behalf.
    pub fn rotate(&mut self, actor: &str, name: &str) -> Result<String> {
        let id = self.user_id(name)?;
        let tx = self.conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        tx.execute("UPDATE tokens SET revoked_at = ?1 WHERE user_id = ?2 AND revoked_at IS NULL", params![now_rfc3339(), id])?;
        let token = insert_token(&tx, id)?;
        audit::append_in(&tx, &Event { actor, action: "token.rotated", outcome: "ok", detail: Some(name), ..Default::default() })?;
        tx.commit()?;
        Ok(token)
    }

    /// The account a bearer token belongs to, if the token exists and is not revoked.
    pub fn authenticate(&self, token: &str) -> Result<Option<Principal>> {
        if !token.starts_with(TOKEN_PREFIX) || token.len() != TOKEN_PREFIX.len() + 64 {
            return Ok(None);
        }
        let hash = token_hash(token);
        let row = self
            .conn
            .query_row(
                "SELECT u.name, u.role, t.id FROM tokens t JOIN users u ON u.id = t.user_id
                 WHERE t.hash = ?1 AND t.revoked_at IS NULL",
                [&hash],
                |r| Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?, r.get::<_, i64>(2)?)),
            )
            .optional()?;
        let Some((name, role, token_id)) = row else { return Ok(None) };
        // Bookkeeping, at most once a minute per token so that reads stay reads; best effort: a
        // busy catalog must not fail the request for it.
        let stale = (chrono::Utc::now() - chrono::Duration::seconds(60)).format("%Y-%m-%dT%H:%M:%S%.6fZ").to_string();
        let _ = self.conn.execute(
            "UPDATE tokens SET last_used_at = ?1 WHERE id = ?2 AND (last_used_at IS NULL OR last_used_at < ?3)",
            params![now_rfc3339(), token_id, stale],
        );
        Ok(Some(Principal { name, role: role.parse()? }))
    }

    fn user_id(&self, name: &str) -> Result<i64> {
        self.conn
            .query_row("SELECT id FROM users WHERE name = ?1", [name], |r| r.get(0))
            .optional()?
            .ok_or_else(|| Error::not_found("user", format!("{name:?}")))
    }
}

fn insert_token(conn: &Connection, user_id: i64) -> Result<String> {
    let token = new_token();
    let prefix: String = token.chars().take(TOKEN_PREFIX.len() + 8).collect();
    conn.execute(
        "INSERT INTO tokens (user_id, hash, prefix, created_at) VALUES (?1, ?2, ?3, ?4)",
        params![user_id, token_hash(&token), prefix, now_rfc3339()],
    )?;
    Ok(token)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn conn() -> (tempfile::TempDir, Connection) {
        let dir = tempfile::tempdir().unwrap();
        let c = crate::db::open(&dir.path().join("catalog.sqlite")).unwrap();
        (dir, c)
    }

    #[test]
    fn tokens_authenticate_until_revoked_and_rotation_replaces_them() {
        let (_d, mut c) = conn();
        let mut a = Accounts::new(&mut c);
        let (user, token) = a.add("root", "alice", Role::Researcher).unwrap();
        assert_eq!(user.active_tokens.len(), 1);
        assert!(token.starts_with("sct_") && token.len() == 68);
        assert!(!user.active_tokens[0].prefix.is_empty() && token.starts_with(&user.active_tokens[0].prefix));
        assert_eq!(a.authenticate(&token).unwrap(), Some(Principal { name: "alice".into(), role: Role::Researcher }));
        let rotated = a.rotate("root", "alice").unwrap();
        assert_ne!(rotated, token);
        assert_eq!(a.authenticate(&token).unwrap(), None, "the old token dies at once");
        assert!(a.authenticate(&rotated).unwrap().is_some());
        assert_eq!(a.revoke("root", "alice").unwrap(), 1);
        assert_eq!(a.authenticate(&rotated).unwrap(), None);
        assert!(a.add("root", "alice", Role::Steward).is_err(), "names are unique");
        assert!(a.add("root", "bad name", Role::Steward).is_err());
        assert_eq!(a.authenticate("sct_00").unwrap(), None);
        let log = crate::audit::entries(&c, &crate::audit::Filter::default()).unwrap();
        let actions: Vec<&str> = log.iter().map(|e| e.action.as_str()).collect();
        assert_eq!(actions, ["user.added", "token.rotated", "token.revoked"]);
        assert!(log.iter().all(|e| e.actor == "root" && !e.detail.as_deref().unwrap_or("").contains(&token[4..])));
    }

    #[test]
    fn only_the_hash_is_stored() {
        let (_d, mut c) = conn();
        let (_, token) = Accounts::new(&mut c).add("root", "bob", Role::Steward).unwrap();
        let stored: Vec<String> = c
            .prepare("SELECT hash || prefix FROM tokens")
            .unwrap()
            .query_map([], |r| r.get(0))
            .unwrap()
            .collect::<rusqlite::Result<_>>()
            .unwrap();
        assert!(stored.iter().all(|s| !s.contains(&token[4..])));
    }
}
