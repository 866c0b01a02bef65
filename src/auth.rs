//! Bearer tokens: HS256 JWTs whose claims name the actor, and where a request carries one.
//! The HTTP extractor that turns a request into an [`Actor`] or a 401 is
//! `http::extract`; SSE may pass the token as `?access_token=` because EventSource cannot
//! set headers.

use crate::domain::{Actor, Role};
use axum::http::request::Parts;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use uuid::Uuid;

#[derive(Debug, Serialize, Deserialize)]
pub struct Claims {
    pub sub: Uuid,
    pub role: Role,
    pub exp: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub iat: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nbf: Option<u64>,
}

/// Verifies and mints tokens with one HS256 secret.
#[derive(Clone)]
pub struct Keys(Arc<KeysInner>);

struct KeysInner {
    decoding: DecodingKey,
    encoding: EncodingKey,
    validation: Validation,
}

impl Keys {
    pub fn new(secret: &str) -> Self {
        // Only HS256 is accepted: `alg: none` and every other algorithm fail validation.
        let mut validation = Validation::new(Algorithm::HS256);
        validation.validate_nbf = true;
        validation.leeway = 5;
        validation.set_required_spec_claims(&["exp", "sub"]);
        Keys(Arc::new(KeysInner {
            decoding: DecodingKey::from_secret(secret.as_bytes()),
            encoding: EncodingKey::from_secret(secret.as_bytes()),
            validation,
        }))
    }

    /// The actor a valid token names. The error says why a token is refused, for logs:
    /// callers answer only "invalid token", which teaches an attacker nothing.
    pub fn verify(&self, token: &str) -> Result<Actor, jsonwebtoken::errors::Error> {
        let data = jsonwebtoken::decode::<Claims>(token, &self.0.decoding, &self.0.validation)?;
        Ok(Actor {
            id: data.claims.sub,
            role: data.claims.role,
        })
    }

    /// A token for `actor` valid for `ttl` (the `orderflow token` command, and tests).
    pub fn mint(&self, actor: Actor, ttl: Duration) -> String {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .expect("clock after 1970")
            .as_secs();
        let claims = Claims {
            sub: actor.id,
            role: actor.role,
            exp: now + ttl.as_secs(),
            iat: Some(now),
            nbf: None,
        };
        jsonwebtoken::encode(&Header::new(Algorithm::HS256), &claims, &self.0.encoding)
            .expect("HS256 encoding")
    }
}

/// Anything that can hand out the verification keys (the ingress and bridge states).
pub trait HasKeys {
    fn keys(&self) -> &Keys;
}

/// Paths that accept `?access_token=` (EventSource cannot send headers); nowhere else, so
/// tokens do not end up in ordinary access logs.
const QUERY_TOKEN_PREFIX: &str = "/orders/events/";

/// The token from `Authorization: Bearer` (any case), else — on the event stream paths
/// only — from `?access_token=`.
pub fn token_of(parts: &Parts) -> Option<String> {
    bearer(&parts.headers).or_else(|| query_token(parts))
}

/// The token of an `Authorization: Bearer <token>` header.
pub fn bearer(headers: &axum::http::HeaderMap) -> Option<String> {
    let value = headers
        .get(axum::http::header::AUTHORIZATION)?
        .to_str()
        .ok()?;
    let (scheme, token) = value.split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then(|| token.trim().to_owned())
}

fn query_token(parts: &Parts) -> Option<String> {
    if !parts.uri.path().starts_with(QUERY_TOKEN_PREFIX) {
        return None;
    }
    let query = parts.uri.query()?;
    url::form_urlencoded::parse(query.as_bytes())
        .find(|(k, _)| k == "access_token")
        .map(|(_, v)| v.into_owned())
}
