//! Users and permissions on the HTTP API, in rqlite's auth file format.
//!
//! The file is a JSON list of users, each `{"username", "password", "perms"}`:
//!
//! ```json
//! [
//!   {"username": "admin", "password": "secret", "perms": ["all"]},
//!   {"username": "app", "password": "$2b$10$...", "perms": ["execute:orders", "query:orders"]},
//!   {"username": "*", "perms": ["status", "ready"]}
//! ]
//! ```
//!
//! - Permissions are rqlite's: `all`, `execute`, `query`, `backup`, `load`, `join`, `join-read-only`,
//!   `remove`, `ready`, `status`, `leader-ops`. An unknown one is an error when the file is read.
//! - Beyond rqlite, a database permission (`execute`, `query`, `backup`, `load`) may name one database as
//!   `PERM:DATABASE`; without a name it holds for every database.
//! - The user `*` is everyone: its permissions hold for every request, with or without credentials.
//! - A password is plain text, a bcrypt hash (`$2a$`, `$2b$`, `$2y$`) or an argon2 hash in PHC form
//!   (`$argon2id$...`, `$argon2i$...`, `$argon2d$...`). A hash is checked on a blocking thread, at most
//!   [`HASH_CHECKS_MAX`] at once; a check that succeeded is remembered (by a SHA-256 of the user and the
//!   password, at most [`VERIFIED_MAX`] of them) so that a client's every request does not pay for it.
//!
//! A request names its user by HTTP Basic authentication. Without credentials it has the permissions of
//! `*`; wrong credentials are refused whatever `*` may do ([`Denied::Unauthenticated`], answered 401 with
//! `WWW-Authenticate`), and a known user without the permission is [`Denied::Forbidden`] (403).

use std::collections::{HashMap, HashSet};
use std::path::Path;
use std::sync::Arc;

use base64::Engine as _;
use sha2::{Digest, Sha256};

/// A permission of rqlite's auth file.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Perm {
    /// Every permission.
    All,
    /// `POST /db/execute`, and `/db/request` with a write.
    Execute,
    /// `/db/query`, and `/db/request` with only reads.
    Query,
    /// `GET /db/backup`.
    Backup,
    /// `POST /db/load`.
    Load,
    /// `POST /join` as a voter or a non-voter.
    Join,
    /// `POST /join` as a non-voter only.
    JoinReadOnly,
    /// `/remove`.
    Remove,
    /// `GET /readyz`.
    Ready,
    /// `GET /status`, `/nodes`, `/metrics`.
    Status,
    /// `POST /leader` (stepdown and transfer).
    LeaderOps,
}

impl Perm {
    const NAMES: &'static [(&'static str, Perm)] = &[
        ("all", Perm::All),
        ("execute", Perm::Execute),
        ("query", Perm::Query),
        ("backup", Perm::Backup),
        ("load", Perm::Load),
        ("join", Perm::Join),
        ("join-read-only", Perm::JoinReadOnly),
        ("remove", Perm::Remove),
        ("ready", Perm::Ready),
        ("status", Perm::Status),
        ("leader-ops", Perm::LeaderOps),
    ];

    /// The permission's name in the auth file.
    pub fn name(self) -> &'static str {
        Perm::NAMES.iter().find(|(_, p)| *p == self).map(|(n, _)| *n).unwrap_or("?")
    }

    fn parse(name: &str) -> Option<Perm> {
        Perm::NAMES.iter().find(|(n, _)| *n == name).map(|(_, p)| *p)
    }

    /// Whether the permission may be limited to one database.
    fn per_database(self) -> bool {
        matches!(self, Perm::Execute | Perm::Query | Perm::Backup | Perm::Load)
    }
}

/// One permission of a user, for every database or one.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Grant {
    perm: Perm,
    database: Option<String>,
}

impl Grant {
    fn covers(&self, perm: Perm, database: Option<&str>) -> bool {
        (self.perm == Perm::All || self.perm == perm)
            && match (&self.database, database) {
                (None, _) => true,
                (Some(mine), Some(asked)) => mine == asked,
                (Some(_), None) => false,
            }
    }
}

#[derive(Debug)]
enum Secret {
    Plain(String),
    Bcrypt(String),
    Argon2(String),
}

#[derive(Debug)]
struct User {
    secret: Secret,
    grants: Vec<Grant>,
}

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct FileUser {
    username: String,
    #[serde(default)]
    password: Option<String>,
    #[serde(default)]
    perms: Vec<String>,
}

/// At most this many password hashes are checked at once (each takes a blocking thread for a while).
pub const HASH_CHECKS_MAX: usize = 4;
/// At most this many successful hash checks are remembered (all are forgotten when it fills).
pub const VERIFIED_MAX: usize = 4096;
/// Largest auth file read.
pub const AUTH_FILE_BYTES_MAX: u64 = 1 << 20;
/// Longest credentials taken from an `Authorization` header (its base64 text).
pub const CREDENTIALS_BYTES_MAX: usize = 4096;

/// The users of an auth file and what each may do.
#[derive(Debug)]
pub struct Auth {
    users: HashMap<String, User>,
    /// The permissions of `*`: everyone's.
    everyone: Vec<Grant>,
    verified: parking_lot::Mutex<HashSet<[u8; 32]>>,
    hash_checks: tokio::sync::Semaphore,
}

/// Who made a request: anonymous (no credentials), or a user whose password was checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Caller {
    /// No credentials: the permissions of `*` only.
    Anonymous,
    /// A user of the auth file (the permissions of `*` too).
    User(String),
}

/// Why a request may not do what it asked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Denied {
    /// No credentials and `*` lacks the permission, or the credentials are wrong (401).
    Unauthenticated(String),
    /// The user is known and lacks the permission (403).
    Forbidden(String),
}

impl Auth {
    /// Reads an auth file.
    pub fn load(path: &Path) -> Result<Auth, String> {
        use std::io::Read;
        let file = std::fs::File::open(path).map_err(|e| format!("reading {}: {e}", path.display()))?;
        let mut text = Vec::new();
        file.take(AUTH_FILE_BYTES_MAX + 1)
            .read_to_end(&mut text)
            .map_err(|e| format!("reading {}: {e}", path.display()))?;
        if text.len() as u64 > AUTH_FILE_BYTES_MAX {
            return Err(format!("{}: larger than {AUTH_FILE_BYTES_MAX} bytes", path.display()));
        }
        Auth::from_json(&text).map_err(|e| format!("{}: {e}", path.display()))
    }

    /// Parses an auth file's text.
    pub fn from_json(text: &[u8]) -> Result<Auth, String> {
        let entries: Vec<FileUser> = serde_json::from_slice(text)
            .map_err(|e| format!("not an auth file (a JSON list of {{username, password, perms}}): {e}"))?;
        let mut users = HashMap::new();
        let mut everyone = None;
        for entry in entries {
            let grants = entry
                .perms
                .iter()
                .map(|perm| parse_grant(perm).map_err(|e| format!("user {:?}: {e}", entry.username)))
                .collect::<Result<Vec<_>, _>>()?;
            if entry.username == "*" {
                if everyone.replace(grants).is_some() {
                    return Err("user \"*\" is listed twice".into());
                }
                continue;
            }
            if entry.username.is_empty() || entry.username.contains(':') {
                return Err(format!("user name {:?}: not empty, no ':'", entry.username));
            }
            let password =
                entry.password.ok_or_else(|| format!("user {:?} has no password", entry.username))?;
            let secret = if ["$2a$", "$2b$", "$2y$"].iter().any(|p| password.starts_with(p)) {
                password
                    .parse::<bcrypt::HashParts>()
                    .map_err(|e| format!("user {:?}: bad bcrypt hash: {e}", entry.username))?;
                Secret::Bcrypt(password)
            } else if password.starts_with("$argon2") {
                let bad =
                    |e: &dyn std::fmt::Display| format!("user {:?}: bad argon2 hash: {e}", entry.username);
                let parsed = argon2::PasswordHash::new(&password).map_err(|e| bad(&e))?;
                argon2::Algorithm::try_from(parsed.algorithm).map_err(|e| bad(&e))?;
                argon2::Params::try_from(&parsed).map_err(|e| bad(&e))?;
                if parsed.salt.is_none() || parsed.hash.is_none() {
                    return Err(bad(&"no salt or no hash (want $argon2id$v=19$m=...,t=...,p=...$SALT$HASH)"));
                }
                Secret::Argon2(password)
            } else {
                Secret::Plain(password)
            };
            if users.insert(entry.username.clone(), User { secret, grants }).is_some() {
                return Err(format!("user {:?} is listed twice", entry.username));
            }
        }
        Ok(Auth {
            users,
            everyone: everyone.unwrap_or_default(),
            verified: parking_lot::Mutex::new(HashSet::new()),
            hash_checks: tokio::sync::Semaphore::new(HASH_CHECKS_MAX),
        })
    }

    /// The plain-text password of `user`, for a node that calls another as that user (`--join-as`);
    /// `None` if the user is unknown or its password is stored as a hash.
    pub fn plain_password(&self, user: &str) -> Option<&str> {
        match &self.users.get(user)?.secret {
            Secret::Plain(password) => Some(password),
            _ => None,
        }
    }

    /// Who sent a request with this `Authorization` header (or none). Unknown users, wrong passwords and
    /// headers that are not HTTP Basic credentials are [`Denied::Unauthenticated`].
    pub async fn identify(self: &Arc<Self>, authorization: Option<&[u8]>) -> Result<Caller, Denied> {
        let Some(header) = authorization else { return Ok(Caller::Anonymous) };
        let (user, password) = parse_basic(header).map_err(Denied::Unauthenticated)?;
        let wrong = || Denied::Unauthenticated(format!("wrong user name or password for {user:?}"));
        let Some(known) = self.users.get(&user) else { return Err(wrong()) };
        let ok = match &known.secret {
            Secret::Plain(expected) => {
                use subtle::ConstantTimeEq;
                bool::from(expected.as_bytes().ct_eq(password.as_bytes()))
            }
            Secret::Bcrypt(_) | Secret::Argon2(_) => {
                let key = verified_key(&user, &password);
                if self.verified.lock().contains(&key) {
                    true
                } else {
                    let _permit = self.hash_checks.acquire().await.map_err(|_| wrong())?;
                    let auth = Arc::clone(self);
                    let name = user.clone();
                    let ok = tokio::task::spawn_blocking(move || auth.check_hash(&name, &password))
                        .await
                        .unwrap_or(false);
                    if ok {
                        let mut verified = self.verified.lock();
                        if verified.len() >= VERIFIED_MAX {
                            verified.clear();
                        }
                        verified.insert(key);
                    }
                    ok
                }
            }
        };
        if ok {
            Ok(Caller::User(user))
        } else {
            Err(wrong())
        }
    }

    fn check_hash(&self, user: &str, password: &str) -> bool {
        use argon2::PasswordVerifier;
        match self.users.get(user).map(|u| &u.secret) {
            Some(Secret::Bcrypt(hash)) => bcrypt::verify(password, hash).unwrap_or(false),
            Some(Secret::Argon2(hash)) => argon2::PasswordHash::new(hash).is_ok_and(|parsed| {
                argon2::Argon2::default().verify_password(password.as_bytes(), &parsed).is_ok()
            }),
            _ => false,
        }
    }

    /// Whether `caller` holds any of `perms` (for `database`, when the call names one).
    pub fn permits(&self, caller: &Caller, perms: &[Perm], database: Option<&str>) -> bool {
        let own = match caller {
            Caller::Anonymous => &[][..],
            Caller::User(name) => self.users.get(name).map(|u| u.grants.as_slice()).unwrap_or(&[]),
        };
        perms.iter().any(|&perm| own.iter().chain(&self.everyone).any(|g| g.covers(perm, database)))
    }

    /// [`Auth::permits`], or why not: 401 for an anonymous caller, 403 for a user.
    pub fn require(&self, caller: &Caller, perms: &[Perm], database: Option<&str>) -> Result<(), Denied> {
        if self.permits(caller, perms, database) {
            return Ok(());
        }
        let names: Vec<&str> = perms.iter().map(|p| p.name()).collect();
        let what = match database {
            Some(db) => format!("{} on database {db:?}", names.join(" or ")),
            None => names.join(" or "),
        };
        Err(match caller {
            Caller::Anonymous => Denied::Unauthenticated(format!("authentication required ({what})")),
            Caller::User(user) => Denied::Forbidden(format!("user {user:?} lacks the permission {what}")),
        })
    }
}

fn parse_grant(text: &str) -> Result<Grant, String> {
    let (name, database) = match text.split_once(':') {
        Some((name, db)) => (name, Some(db.to_owned())),
        None => (text, None),
    };
    let perm = Perm::parse(name).ok_or_else(|| {
        let known: Vec<&str> = Perm::NAMES.iter().map(|(n, _)| *n).collect();
        format!("unknown permission {name:?} (known: {})", known.join(", "))
    })?;
    if let Some(db) = &database {
        if !perm.per_database() {
            return Err(format!("permission {name:?} is not per database (it cannot name {db:?})"));
        }
        if db.is_empty() {
            return Err(format!("permission {text:?} names no database"));
        }
    }
    Ok(Grant { perm, database })
}

fn verified_key(user: &str, password: &str) -> [u8; 32] {
    let mut hash = Sha256::new();
    hash.update(user.as_bytes());
    hash.update([0]);
    hash.update(password.as_bytes());
    hash.finalize().into()
}

/// The user name and password of an HTTP Basic `Authorization` header (RFC 7617).
pub fn parse_basic(header: &[u8]) -> Result<(String, String), String> {
    let text = std::str::from_utf8(header).map_err(|_| "Authorization header is not text".to_owned())?;
    let (scheme, encoded) =
        text.trim().split_once(' ').ok_or("Authorization header is not Basic credentials")?;
    if !scheme.eq_ignore_ascii_case("basic") {
        return Err(format!("Authorization scheme {scheme:?} is not supported (Basic is)"));
    }
    let encoded = encoded.trim();
    if encoded.len() > CREDENTIALS_BYTES_MAX {
        return Err(format!("credentials longer than {CREDENTIALS_BYTES_MAX} bytes"));
    }
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(encoded)
        .map_err(|_| "Basic credentials are not base64".to_owned())?;
    let decoded = String::from_utf8(decoded).map_err(|_| "Basic credentials are not UTF-8".to_owned())?;
    let (user, password) = decoded.split_once(':').ok_or("Basic credentials have no ':'")?;
    Ok((user.to_owned(), password.to_owned()))
}

/// The `Authorization` header value for `user` and `password` (HTTP Basic).
pub fn basic_header(user: &str, password: &str) -> String {
    format!("Basic {}", base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn auth(text: &str) -> Arc<Auth> {
        Arc::new(Auth::from_json(text.as_bytes()).expect("auth file"))
    }

    #[tokio::test]
    async fn users_are_identified_by_basic_credentials_and_wrong_ones_are_refused() {
        let bcrypt_hash = bcrypt::hash("b-pass", 4).unwrap();
        let argon2_hash = {
            use argon2::password_hash::{PasswordHasher, SaltString};
            let salt = SaltString::encode_b64(b"sixteen byte slt").unwrap();
            argon2::Argon2::default().hash_password(b"a-pass", &salt).unwrap().to_string()
        };
        let file = format!(
            r#"[{{"username": "plain", "password": "p-pass", "perms": ["query"]}},
                {{"username": "bc", "password": "{bcrypt_hash}", "perms": ["execute"]}},
                {{"username": "ar", "password": "{argon2_hash}", "perms": ["backup"]}}]"#
        );
        let auth = auth(&file);
        for (user, password) in [("plain", "p-pass"), ("bc", "b-pass"), ("ar", "a-pass")] {
            let header = basic_header(user, password);
            assert_eq!(auth.identify(Some(header.as_bytes())).await, Ok(Caller::User(user.into())), "{user}");
            // Twice: the second time from the remembered check.
            assert_eq!(auth.identify(Some(header.as_bytes())).await, Ok(Caller::User(user.into())), "{user}");
            let wrong = basic_header(user, "nope");
            assert!(matches!(auth.identify(Some(wrong.as_bytes())).await, Err(Denied::Unauthenticated(_))));
        }
        assert_eq!(auth.identify(None).await, Ok(Caller::Anonymous));
        for bad in ["Bearer abc", "Basic !!!", "Basic", "", "Basic bm9jb2xvbg=="] {
            assert!(
                matches!(auth.identify(Some(bad.as_bytes())).await, Err(Denied::Unauthenticated(_))),
                "{bad:?}"
            );
        }
        let unknown = basic_header("nobody", "p-pass");
        assert!(matches!(auth.identify(Some(unknown.as_bytes())).await, Err(Denied::Unauthenticated(_))));
    }

    #[test]
    fn permissions_hold_per_database_and_everyone_has_stars() {
        let auth = auth(
            r#"[{"username": "root", "password": "x", "perms": ["all"]},
                {"username": "app", "password": "x", "perms": ["execute:orders", "query"]},
                {"username": "*", "perms": ["status"]}]"#,
        );
        let root = Caller::User("root".into());
        let app = Caller::User("app".into());
        assert!(auth.permits(&root, &[Perm::Remove], None));
        assert!(auth.permits(&root, &[Perm::Execute], Some("any")));
        assert!(auth.permits(&app, &[Perm::Execute], Some("orders")));
        assert!(!auth.permits(&app, &[Perm::Execute], Some("main")));
        assert!(auth.permits(&app, &[Perm::Query], Some("main")));
        assert!(auth.permits(&app, &[Perm::Status], None), "* holds for users too");
        assert!(auth.permits(&Caller::Anonymous, &[Perm::Status], None));
        assert!(!auth.permits(&Caller::Anonymous, &[Perm::Query], Some("main")));
        assert!(matches!(
            auth.require(&Caller::Anonymous, &[Perm::Query], Some("main")),
            Err(Denied::Unauthenticated(_))
        ));
        assert!(matches!(auth.require(&app, &[Perm::Remove], None), Err(Denied::Forbidden(_))));
        assert!(auth.require(&app, &[Perm::Remove, Perm::Query], Some("x")).is_ok());
    }

    #[test]
    fn bad_auth_files_are_clear_errors() {
        for (text, says) in [
            ("{}", "not an auth file"),
            (r#"[{"username": "a", "password": "x", "perms": ["exectue"]}]"#, "unknown permission"),
            (r#"[{"username": "a", "password": "x", "perms": ["status:main"]}]"#, "not per database"),
            (r#"[{"username": "a", "password": "x", "perms": ["query:"]}]"#, "names no database"),
            (r#"[{"username": "a", "perms": []}]"#, "no password"),
            (r#"[{"username": "a", "password": "$2b$10$short", "perms": []}]"#, "bad bcrypt hash"),
            (r#"[{"username": "a", "password": "$argon2id$junk", "perms": []}]"#, "bad argon2 hash"),
            (r#"[{"username": "a", "password": "x"}, {"username": "a", "password": "y"}]"#, "twice"),
            (r#"[{"username": "a:b", "password": "x"}]"#, "no ':'"),
            (r#"[{"username": "a", "password": "x", "role": "admin"}]"#, "unknown field"),
        ] {
            let e = Auth::from_json(text.as_bytes()).expect_err(text);
            assert!(e.contains(says), "{text}: {e}");
        }
    }
}
