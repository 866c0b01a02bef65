//! JWTs as clients and attackers make them: one HMAC signer for every token the tests need
//! (valid, expired, without `exp`, with a header that lies about its algorithm), and the
//! unsigned `alg: none` token no library mints.

use jsonwebtoken::Algorithm;
use serde_json::{Value, json};
use uuid::Uuid;

/// Unix time now, in seconds (for hand-made claims).
pub fn unix_now() -> i64 {
    chrono::Utc::now().timestamp()
}

/// The claims a valid token carries (`exp` an hour ahead), for tests to vary.
pub fn claims(sub: Uuid, role: &str) -> Value {
    claims_valid_for(sub, role, 3600)
}

fn claims_valid_for(sub: Uuid, role: &str, ttl_secs: i64) -> Value {
    json!({"sub": sub.to_string(), "role": role, "exp": unix_now() + ttl_secs, "iat": unix_now()})
}

/// A JWT header naming `alg`.
pub fn header(alg: &str) -> Value {
    json!({"alg": alg, "typ": "JWT"})
}

/// An HS256 token signed with `secret`, expiring `ttl_secs` from now (negative: expired).
pub fn signed_token(secret: &str, role: &str, sub: Uuid, ttl_secs: i64) -> String {
    jwt_signed_with(
        secret.as_bytes(),
        Algorithm::HS256,
        &header("HS256"),
        &claims_valid_for(sub, role, ttl_secs),
    )
}

/// A correctly signed HS256 token without the required `exp` claim.
pub fn token_without_exp(secret: &str, role: &str, sub: Uuid) -> String {
    let mut claims = claims(sub, role);
    claims.as_object_mut().expect("claims object").remove("exp");
    jwt_signed_with(
        secret.as_bytes(),
        Algorithm::HS256,
        &header("HS256"),
        &claims,
    )
}

/// `base64url(header).base64url(claims).signature`, the signature made with `key` by the
/// HMAC algorithm `alg` (HS256/384/512), whatever `alg` the header names.
pub fn jwt_signed_with(key: &[u8], alg: Algorithm, header: &Value, claims: &Value) -> String {
    let signing_input = format!(
        "{}.{}",
        base64url(header.to_string().as_bytes()),
        base64url(claims.to_string().as_bytes())
    );
    let signature = jsonwebtoken::crypto::sign(
        signing_input.as_bytes(),
        &jsonwebtoken::EncodingKey::from_secret(key),
        alg,
    )
    .expect("HMAC signing");
    format!("{signing_input}.{signature}")
}

/// A token with `alg: none` and an empty signature.
pub fn unsigned_token(role: &str, sub: Uuid) -> String {
    let header = base64url(header("none").to_string().as_bytes());
    let claims = claims(sub, role);
    format!("{header}.{}.", base64url(claims.to_string().as_bytes()))
}

/// Unpadded base64url (RFC 4648 §5), as JWTs use.
fn base64url(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for chunk in bytes.chunks(3) {
        let n = chunk
            .iter()
            .enumerate()
            .fold(0u32, |n, (i, &b)| n | (u32::from(b) << (16 - 8 * i)));
        for i in 0..=chunk.len() {
            out.push(char::from(ALPHABET[((n >> (18 - 6 * i)) & 63) as usize]));
        }
    }
    out
}
