//! Proof that a delivery came from the git host: an HMAC-SHA256 of the raw body keyed with the
//! shared secret (GitHub, Gitea, Forgejo, Bitbucket), or the secret itself as a token (GitLab).
//!
//! Invariant: every comparison of a received value with a secret-derived one takes the same time
//! whatever the bytes (`hmac`'s `verify_slice` and `subtle`); nothing here logs or returns the
//! secret.

use hmac::{Hmac, KeyInit, Mac};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

type HmacSha256 = Hmac<Sha256>;

/// Whether `signature_hex` (hex, either case) is HMAC-SHA256(`secret`, `body`). A value that is
/// not hex, or not 32 bytes long, never matches.
pub fn hmac_sha256_matches(secret: &[u8], body: &[u8], signature_hex: &str) -> bool {
    let Ok(signature) = hex::decode(signature_hex.trim()) else {
        return false;
    };
    let mut mac = HmacSha256::new_from_slice(secret).expect("HMAC takes a key of any length");
    mac.update(body);
    mac.verify_slice(&signature).is_ok()
}

/// Whether `token` is the secret itself. Both are hashed first, so the comparison does not
/// even reveal the secret's length.
pub fn token_matches(secret: &[u8], token: &[u8]) -> bool {
    Sha256::digest(secret)
        .as_slice()
        .ct_eq(Sha256::digest(token).as_slice())
        .into()
}

/// The lowercase hex HMAC-SHA256 a git host sends for `body` (tests and benchmarks sign with it).
pub fn sign(secret: &[u8], body: &[u8]) -> String {
    let mut mac = HmacSha256::new_from_slice(secret).expect("HMAC takes a key of any length");
    mac.update(body);
    hex::encode(mac.finalize().into_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// GitHub's documented example ("Validating webhook deliveries").
    const SECRET: &[u8] = b"It's a Secret to Everybody";
    const BODY: &[u8] = b"Hello, World!";
    const SIGNATURE: &str = "757107ea0eb2509fc211221cce984b8a37570b6d7586c22c46f4379c8b043e17";

    #[test]
    fn githubs_documented_vector_verifies() {
        assert_eq!(sign(SECRET, BODY), SIGNATURE);
        assert!(hmac_sha256_matches(SECRET, BODY, SIGNATURE));
        assert!(hmac_sha256_matches(
            SECRET,
            BODY,
            &SIGNATURE.to_ascii_uppercase()
        ));
    }

    #[test]
    fn anything_else_fails() {
        assert!(!hmac_sha256_matches(SECRET, b"Hello, World?", SIGNATURE));
        assert!(!hmac_sha256_matches(
            b"It's a secret to everybody",
            BODY,
            SIGNATURE
        ));
        assert!(!hmac_sha256_matches(SECRET, BODY, &SIGNATURE[..62]));
        assert!(!hmac_sha256_matches(SECRET, BODY, "sha256=757107ea"));
        assert!(!hmac_sha256_matches(SECRET, BODY, ""));
        assert!(!hmac_sha256_matches(SECRET, BODY, &"zz".repeat(32)));
    }

    #[test]
    fn tokens_match_only_the_secret() {
        assert!(token_matches(SECRET, SECRET));
        assert!(!token_matches(SECRET, b"It's a Secret to Everybody "));
        assert!(!token_matches(SECRET, b""));
    }
}
