//! Secrets: passwords, session ids and API tokens, and the only code that hashes or checks them.
//!
//! Invariant: no secret type implements `Display`, and each `Debug` prints only that there is
//! a secret, so a password or token cannot reach a log line or an error message by accident.
//! Reading the value takes an explicit `expose()`.

use std::fmt;
use std::sync::OnceLock;

use argon2::Argon2;
use argon2::password_hash::phc::PasswordHash;
use argon2::password_hash::{PasswordHasher, PasswordVerifier};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use sha2::{Digest, Sha256};

/// The shortest password Baton accepts.
pub const MIN_PASSWORD_CHARS: usize = 10;
/// The longest: argon2 hashes whatever it is given, so the length is bounded.
pub const MAX_PASSWORD_BYTES: usize = 1024;
/// What every API token starts with, so secret scanners and people can recognise one.
pub const TOKEN_PREFIX: &str = "baton_";

/// A password as typed by a person.
#[derive(Clone, serde::Deserialize)]
#[serde(transparent)]
pub struct Password(String);

impl Password {
    pub fn new(value: impl Into<String>) -> Self {
        Self(value.into())
    }

    pub fn expose(&self) -> &str {
        &self.0
    }

    /// A random password of 24 URL-safe characters (for the demo's admin).
    pub fn generate() -> Self {
        Self(random_text(18))
    }

    /// Whether Baton would store this password; the error says what is expected.
    pub fn check_strength(&self) -> Result<(), String> {
        let chars = self.0.chars().count();
        if chars < MIN_PASSWORD_CHARS {
            return Err(format!(
                "the password is too short ({chars} characters): expected at least {MIN_PASSWORD_CHARS}"
            ));
        }
        if self.0.len() > MAX_PASSWORD_BYTES {
            return Err(format!(
                "the password is too long: expected at most {MAX_PASSWORD_BYTES} bytes"
            ));
        }
        Ok(())
    }
}

impl fmt::Debug for Password {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Password(<redacted>)")
    }
}

/// A bearer secret: an API token or a session id. Baton keeps only its [`SecretToken::hash`].
#[derive(Clone)]
pub struct SecretToken(String);

impl SecretToken {
    /// A new API token: the prefix and 256 random bits.
    pub fn generate_api_token() -> Self {
        Self(format!("{TOKEN_PREFIX}{}", random_text(32)))
    }

    /// A new session id: 256 random bits.
    pub fn generate_session_id() -> Self {
        Self(random_text(32))
    }

    /// A value the client sent (a cookie or a bearer token).
    pub fn from_client(value: &str) -> Self {
        Self(value.to_owned())
    }

    pub fn expose(&self) -> &str {
        &self.0
    }

    /// What the database stores and looks up: the hex SHA-256 of the value. A plain hash is
    /// enough (no salt, no work factor) because the value carries 256 random bits.
    pub fn hash(&self) -> String {
        hex::encode(Sha256::digest(self.0.as_bytes()))
    }
}

impl fmt::Debug for SecretToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("SecretToken(<redacted>)")
    }
}

/// Hashing failed (the operating system's random source, or argon2's own limits).
#[derive(Debug, thiserror::Error)]
#[error("cannot hash the password: {0}")]
pub struct HashError(String);

/// The argon2id PHC string of `password` (argon2's defaults: 19 MiB, 2 passes, 1 lane, the
/// OWASP recommendation), with a fresh random salt. Slow on purpose: call it off the async
/// threads (`spawn_blocking`).
pub fn hash_password(password: &Password) -> Result<String, HashError> {
    let mut salt = [0u8; 16];
    getrandom::fill(&mut salt).map_err(|error| HashError(error.to_string()))?;
    Argon2::default()
        .hash_password_with_salt(password.expose().as_bytes(), &salt)
        .map(|hash: PasswordHash| hash.to_string())
        .map_err(|error| HashError(error.to_string()))
}

/// Whether `password` matches the PHC string; a malformed hash never matches. Slow on
/// purpose, like [`hash_password`].
pub fn verify_password(password: &Password, phc: &str) -> bool {
    let Ok(parsed) = PasswordHash::new(phc) else {
        tracing::error!("a stored password hash is not a valid PHC string");
        return false;
    };
    Argon2::default()
        .verify_password(password.expose().as_bytes(), &parsed)
        .is_ok()
}

/// Spends the time of a real check when the user does not exist, so the answer's timing does
/// not tell which user names exist.
pub fn verify_against_nobody(password: &Password) {
    static NOBODY: OnceLock<Option<String>> = OnceLock::new();
    if let Some(hash) = NOBODY.get_or_init(|| hash_password(&Password::generate()).ok()) {
        let _ = verify_password(password, hash);
    }
}

/// `bytes` random bytes from the operating system, base64url without padding.
fn random_text(bytes: usize) -> String {
    let mut buffer = vec![0u8; bytes];
    // The OS random source failing is not something Baton can work around, and a predictable
    // secret would be worse than stopping.
    getrandom::fill(&mut buffer).expect("the operating system's random source is unavailable");
    URL_SAFE_NO_PAD.encode(buffer)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_output_redacts_every_secret() {
        let password = Password::new("hunter2-hunter2");
        let token = SecretToken::generate_api_token();
        let printed = format!("{password:?} {token:?}");
        assert!(!printed.contains("hunter2"), "{printed}");
        assert!(!printed.contains(token.expose()), "{printed}");
        assert!(printed.contains("redacted"));
    }

    #[test]
    fn a_password_matches_its_hash_and_nothing_else() {
        let password = Password::new("correct horse battery");
        let hash = hash_password(&password).unwrap();
        assert!(hash.starts_with("$argon2id$"), "{hash}");
        assert!(!hash.contains("correct horse"));
        assert!(verify_password(&password, &hash));
        assert!(!verify_password(
            &Password::new("correct horse battery!"),
            &hash
        ));
        assert!(!verify_password(&password, "not a hash"));
        // Two hashes of one password differ (fresh salt).
        assert_ne!(hash, hash_password(&password).unwrap());
    }

    #[test]
    fn tokens_are_random_prefixed_and_hashed_to_hex() {
        let a = SecretToken::generate_api_token();
        let b = SecretToken::generate_api_token();
        assert_ne!(a.expose(), b.expose());
        assert!(a.expose().starts_with(TOKEN_PREFIX));
        assert_eq!(a.expose().len(), TOKEN_PREFIX.len() + 43);
        assert_eq!(a.hash().len(), 64);
        assert_eq!(a.hash(), SecretToken::from_client(a.expose()).hash());
    }

    #[test]
    fn weak_passwords_are_refused_with_what_is_expected() {
        let error = Password::new("short").check_strength().unwrap_err();
        assert!(error.contains("at least 10"), "{error}");
        assert!(Password::new("long enough pass").check_strength().is_ok());
        assert!(
            Password::new("x".repeat(2000))
                .check_strength()
                .unwrap_err()
                .contains("at most")
        );
    }
}
