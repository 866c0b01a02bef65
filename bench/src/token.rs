//! Bearer tokens as API.md defines them (HS256; claims `sub`, `role`, `exp`), signed
//! with the secret the system under test was started with.

use serde::Serialize;
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use uuid::Uuid;

#[derive(Serialize)]
struct Claims<'a> {
    sub: Uuid,
    role: &'a str,
    exp: u64,
    iat: u64,
}

/// A token for actor `sub` in `role` (`admin`, `customer`, ...), valid for `ttl`.
pub fn mint(secret: &str, sub: Uuid, role: &str, ttl: Duration) -> String {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock after 1970")
        .as_secs();
    let claims = Claims {
        sub,
        role,
        exp: now + ttl.as_secs(),
        iat: now,
    };
    jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
        &claims,
        &jsonwebtoken::EncodingKey::from_secret(secret.as_bytes()),
    )
    .expect("HS256 encoding")
}

/// An admin token for a new actor, valid for the length of any benchmark.
pub fn admin(secret: &str) -> String {
    mint(
        secret,
        Uuid::new_v4(),
        "admin",
        Duration::from_secs(6 * 3600),
    )
}
