//! Authentication, as an attacker tries it: a request without a valid token — none,
//! expired, wrong secret, `alg: none`, no `exp`, not a JWT, another or an unknown
//! algorithm, not yet valid, claims missing or malformed — is a shaped 401 `unauthorized`
//! on every endpoint, and queues nothing.

use jsonwebtoken::Algorithm;
use reqwest::Method;
use serde_json::{Value, json};
use uuid::Uuid;

use crate::harness::{
    TestSystem,
    tokens::{claims, header, jwt_signed_with, signed_token, unix_now, unsigned_token},
};

/// An RSA public key as an attacker finds it published. The classic confusion signs HS256
/// with these bytes as the HMAC secret, hoping the server verifies with "its key".
const RSA_PUBLIC_KEY_PEM: &str = "-----BEGIN PUBLIC KEY-----
MIIBIjANBgkqhkiG9w0BAQEFAAOCAQ8AMIIBCgKCAQEAu1SU1LfVLPHCozMxH2Mo
4lgOEePzNm0tRgeLezV6ffAt0gunVTLw7onLRnrq0/IzW7yWR7QkrmBL7jTKEn5u
+qKhbwKfBstIs+bMY2Zkp18gnTxKLxoS2tFczGkPLPgizskuemMghRniWaoLcyeh
kd3qqGElvW/VDL5AaWTg0nLVkjRo9z+40RQzuVaE8AkAFmxZzow3x+VJYKdjykkJ
0iT9wCS0DRTXu269V264Vf/3jvredZiKRkgwlL9xNAwxXFg0x/XFw005UWVRIkdg
cKWTjpBP2dPwVZ4WWC+9aGVd+Gyn1o0CLelf4rEjGoXbAAEgAqeGUxrcIlbjXfbc
mwIDAQAB
-----END PUBLIC KEY-----
";

/// A system with one customer's order, and that customer's id; checks first that a token
/// built by hand the way the cases are (correct header and claims) is accepted, so that the
/// cases' 401s are about what each case changes.
async fn system_with_order() -> (TestSystem, Uuid, Uuid) {
    let sys = TestSystem::start().await;
    let sub = Uuid::new_v4();
    let order = sys.create_simple_order(&sys.token("customer", sub)).await;
    let control = sys.token_with(Algorithm::HS256, &header("HS256"), &claims(sub, "customer"));
    sys.get(&format!("/orders/{order}"), Some(&control))
        .await
        .expect_status(200, "control: a hand-made HS256 token with valid claims");
    (sys, sub, order)
}

/// Sends each token (None: no token) to an order read, the order list, a change (which
/// would queue a job), a job read and the event stream; every answer must be a shaped 401
/// `unauthorized`, and no job queued. The order exists and belongs to the token's subject,
/// so anything but 401 means the token got through. Stops the system.
async fn expect_refused_everywhere(
    sys: TestSystem,
    order: Uuid,
    cases: Vec<(&str, Option<String>)>,
) {
    let mut failures = Vec::new();
    for (case, token) in &cases {
        let token = token.as_deref();
        let requests = [
            (
                "GET /orders/{id}",
                sys.request(Method::GET, &format!("/orders/{order}"), token),
            ),
            ("GET /orders", sys.request(Method::GET, "/orders", token)),
            (
                "POST /orders/{id}/change-status",
                sys.request(
                    Method::POST,
                    &format!("/orders/{order}/change-status"),
                    token,
                )
                .json(&json!({"action": "cancel"})),
            ),
            (
                "GET /jobs/{id}",
                sys.request(Method::GET, &format!("/jobs/{}", Uuid::new_v4()), token),
            ),
            (
                "GET /orders/events/subscribe",
                sys.request(Method::GET, "/orders/events/subscribe", token),
            ),
        ];
        for (what, request) in requests {
            let answer = sys.send(request, what).await;
            // The message names no parser internals ("expected one of `HS256`…").
            let expected = match token {
                None => "missing bearer token",
                Some(_) => "invalid token",
            };
            let message_ok = answer.body["error"]["message"].as_str() == Some(expected);
            if answer.status.as_u16() != 401 || answer.code() != Some("unauthorized") || !message_ok
            {
                failures.push(format!(
                    "{case}, {what}: expected 401 unauthorized \"{expected}\", got {} {}",
                    answer.status, answer.body
                ));
            }
        }
    }
    let jobs = sys.jobs_of_order(order).await;
    if jobs != 0 {
        failures.push(format!("{jobs} jobs were queued with refused tokens"));
    }
    sys.stop().await;
    assert!(
        failures.is_empty(),
        "401 contract broken:\n{}",
        failures.join("\n")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unauthenticated_requests_get_401() {
    let (sys, sub, order) = system_with_order().await;
    // The control: a valid token gets past authentication (404 for an order that does not exist).
    let missing = format!("/orders/{}", Uuid::new_v4());
    sys.get(&missing, Some(&sys.token("admin", sub)))
        .await
        .expect_error(404, None, "valid token, unknown order");

    // EventSource cannot send headers: a bad ?access_token= is refused the same way.
    let answer = sys
        .get(
            &format!(
                "/orders/events/subscribe?access_token={}",
                unsigned_token("admin", sub)
            ),
            None,
        )
        .await;
    assert_eq!(
        answer.status.as_u16(),
        401,
        "SSE ?access_token=<alg none>: {}",
        answer.body
    );
    let cases = vec![
        ("no token", None),
        ("expired", Some(sys.expired_token("admin", sub))),
        (
            "wrong secret",
            Some(signed_token("not-the-secret", "admin", sub, 3600)),
        ),
        ("alg none", Some(unsigned_token("admin", sub))),
        ("no exp claim", Some(sys.token_without_exp("admin", sub))),
        ("not a JWT", Some("not-a-jwt".to_owned())),
    ];
    expect_refused_everywhere(sys, order, cases).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn token_signed_for_another_algorithm_gets_401() {
    let (sys, sub, order) = system_with_order().await;
    let admin = claims(sub, "admin");
    let rsa_key = RSA_PUBLIC_KEY_PEM.as_bytes();
    let cases = vec![
        (
            "header RS256, HMAC-signed with the server's secret",
            sys.token_with(Algorithm::HS256, &header("RS256"), &admin),
        ),
        (
            "header HS512, HS256-signed with the server's secret",
            sys.token_with(Algorithm::HS256, &header("HS512"), &admin),
        ),
        (
            "HS512, validly signed with the server's secret",
            sys.token_with(Algorithm::HS512, &header("HS512"), &admin),
        ),
        (
            "HS256 signed with an RSA public key as the HMAC secret",
            jwt_signed_with(rsa_key, Algorithm::HS256, &header("HS256"), &admin),
        ),
        (
            "header RS256 signed with an RSA public key as the HMAC secret",
            jwt_signed_with(rsa_key, Algorithm::HS256, &header("RS256"), &admin),
        ),
        (
            "header ES256 with an HMAC signature",
            sys.token_with(Algorithm::HS256, &header("ES256"), &admin),
        ),
    ];
    expect_refused_everywhere(sys, order, tokens(cases)).await;
}

/// Every case carries a token.
fn tokens(cases: Vec<(&str, String)>) -> Vec<(&str, Option<String>)> {
    cases.into_iter().map(|(case, t)| (case, Some(t))).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn token_with_unknown_algorithm_gets_401() {
    let (sys, sub, order) = system_with_order().await;
    let admin = claims(sub, "admin");
    let with_header = |header: Value| sys.token_with(Algorithm::HS256, &header, &admin);
    let cases = vec![
        ("alg HS1024", with_header(header("HS1024"))),
        ("alg NONE (upper case)", with_header(header("NONE"))),
        ("alg empty", with_header(header(""))),
        ("alg missing", with_header(json!({"typ": "JWT"}))),
        (
            "alg a number",
            with_header(json!({"alg": 256, "typ": "JWT"})),
        ),
    ];
    expect_refused_everywhere(sys, order, tokens(cases)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn token_not_yet_valid_gets_401() {
    let (sys, sub, order) = system_with_order().await;
    let with_nbf = |nbf: i64| {
        let mut c = claims(sub, "customer");
        c["nbf"] = json!(nbf);
        sys.token_with(Algorithm::HS256, &header("HS256"), &c)
    };
    // The control: `nbf` in the past is fine, so the cases below fail only on their `nbf`.
    sys.get(
        &format!("/orders/{order}"),
        Some(&with_nbf(unix_now() - 60)),
    )
    .await
    .expect_status(200, "control: nbf a minute ago");
    let cases = vec![
        ("nbf in an hour", with_nbf(unix_now() + 3600)),
        (
            "nbf in two minutes (beyond any leeway)",
            with_nbf(unix_now() + 120),
        ),
    ];
    expect_refused_everywhere(sys, order, tokens(cases)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn token_without_sub_or_role_gets_401() {
    let (sys, sub, order) = system_with_order().await;
    let without = |field: &str| {
        let mut c = claims(sub, "customer");
        c.as_object_mut().expect("object").remove(field);
        sys.token_with(Algorithm::HS256, &header("HS256"), &c)
    };
    let cases = vec![
        ("no sub", without("sub")),
        ("no role", without("role")),
        ("sub null", with_claim(&sys, sub, "sub", Value::Null)),
        ("role null", with_claim(&sys, sub, "role", Value::Null)),
    ];
    expect_refused_everywhere(sys, order, tokens(cases)).await;
}

/// A customer token of `sub` whose claim `field` is `value`.
fn with_claim(sys: &TestSystem, sub: Uuid, field: &str, value: Value) -> String {
    let mut c = claims(sub, "customer");
    c[field] = value;
    sys.token_with(Algorithm::HS256, &header("HS256"), &c)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn token_with_unknown_role_or_non_uuid_sub_gets_401() {
    let (sys, sub, order) = system_with_order().await;
    let with = |field: &str, value: Value| with_claim(&sys, sub, field, value);
    let cases = vec![
        ("role superuser", with("role", json!("superuser"))),
        ("role Admin (wrong case)", with("role", json!("Admin"))),
        ("role a list", with("role", json!(["customer", "admin"]))),
        ("sub not a uuid", with("sub", json!("alice"))),
        ("sub a number", with("sub", json!(42))),
        ("sub empty", with("sub", json!(""))),
    ];
    expect_refused_everywhere(sys, order, tokens(cases)).await;
}
