//! Ingress rate limits: an actor over its limit gets 429 with `Retry-After` and nothing of
//! its request is done, while other actors go on unaffected; callers without a valid token
//! are limited per client IP. Limits are set low for the test (RATE_PER_ACTOR=5: bursts of
//! 10; RATE_PER_IP=3: bursts of 6). Nothing waits for a bucket to refill.

use serde_json::json;
use std::time::Instant;
use uuid::Uuid;

use crate::harness::{Answer, TestSystem, tokens::signed_token};

const LOW_LIMITS: [(&str, &str); 2] = [("RATE_PER_ACTOR", "5"), ("RATE_PER_IP", "3")];

/// Panics unless `answer` is a 429 in the API's shape with a whole `Retry-After` ≥ 1 s.
fn expect_rate_limited(answer: Answer, what: &str) {
    let answer = answer.expect_error(429, Some("rate_limited"), what);
    let retry_after = answer
        .header("retry-after")
        .unwrap_or_else(|| panic!("{what}: 429 without Retry-After"));
    let secs: u64 = retry_after.parse().unwrap_or_else(|_| {
        panic!("{what}: Retry-After must be whole seconds, got {retry_after:?}")
    });
    assert!(
        (1..=60).contains(&secs),
        "{what}: Retry-After {secs} s is not a sensible wait"
    );
}

/// Upper bound of requests a bucket of `burst` refilled at `per_sec` lets through in `elapsed`.
fn allowed(burst: u32, per_sec: u32, elapsed: std::time::Duration) -> usize {
    (burst as f64 + per_sec as f64 * elapsed.as_secs_f64()).floor() as usize + 1
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn actor_over_its_limit_gets_429_while_others_pass() {
    let sys = TestSystem::start_with_env(&LOW_LIMITS).await;
    let flooder = sys.token("customer", Uuid::new_v4());
    let bystander = sys.token("customer", Uuid::new_v4());

    let started = Instant::now();
    let mut ok = 0;
    let mut limited = Vec::new();
    for _ in 0..30 {
        let answer = sys.get("/orders", Some(&flooder)).await;
        match answer.status.as_u16() {
            200 => ok += 1,
            429 => limited.push(answer),
            other => panic!("flooding GET /orders: unexpected {other} {}", answer.body),
        }
    }
    let elapsed = started.elapsed();
    // Right after the flood, while the flooder is still over its limit, someone else passes.
    sys.get("/orders", Some(&bystander))
        .await
        .expect_status(200, "another actor at the same moment");

    assert!(
        ok >= 10,
        "the burst of 10 is allowed: only {ok} of 30 passed"
    );
    assert!(
        ok <= allowed(10, 5, elapsed),
        "{ok} of 30 passed in {elapsed:?}: more than a burst of 10 plus 5/s"
    );
    assert!(
        !limited.is_empty(),
        "30 requests in {elapsed:?} at 5/s must hit the limit"
    );
    assert_eq!(ok + limited.len(), 30);
    for answer in limited {
        expect_rate_limited(answer, "flooding actor");
    }

    sys.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn limit_follows_the_actor_not_the_token() {
    let sys = TestSystem::start_with_env(&LOW_LIMITS).await;
    let actor = Uuid::new_v4();
    let tokens = [sys.token("customer", actor), sys.token("support", actor)];

    // Two tokens of one subject take from one bucket: together they get no more than one
    // actor's burst plus its rate (separate buckets would let about 10 through each).
    let started = Instant::now();
    let mut ok = 0;
    let mut limited = 0;
    for n in 0..40 {
        let answer = sys.get("/orders", Some(&tokens[n % 2])).await;
        match answer.status.as_u16() {
            200 => ok += 1,
            429 => limited += 1,
            other => panic!("GET /orders: unexpected {other} {}", answer.body),
        }
    }
    let elapsed = started.elapsed();
    assert!(
        limited > 0,
        "40 requests of one actor in {elapsed:?} must hit the limit"
    );
    assert!(
        ok <= allowed(10, 5, elapsed),
        "{ok} of 40 passed in {elapsed:?} with two tokens of one actor: the bucket is per token, not per actor"
    );
    sys.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rate_limited_requests_change_nothing() {
    let sys = TestSystem::start_with_env(&LOW_LIMITS).await;
    let customer = Uuid::new_v4();
    let token = sys.token("customer", customer);
    let body = json!({"items": [{"sku": "SKU-1", "quantity": 1, "unit_price_cents": 100}]});

    let mut created = 0;
    let mut limited = 0;
    for _ in 0..30 {
        let answer = sys.post("/orders", Some(&token), &body).await;
        match answer.status.as_u16() {
            201 => created += 1,
            429 => {
                limited += 1;
                expect_rate_limited(answer, "flooding POST /orders");
            }
            other => panic!("flooding POST /orders: unexpected {other} {}", answer.body),
        }
    }
    assert!(
        limited > 0,
        "30 quick creations at 5/s must hit the limit ({created} created)"
    );
    let rows = sys
        .count(
            "select count(*) from orders where customer_id = $1",
            customer,
        )
        .await;
    assert_eq!(
        rows, created,
        "only the admitted requests created orders ({limited} were limited)"
    );
    sys.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unauthenticated_callers_are_limited_per_ip() {
    let sys = TestSystem::start_with_env(&LOW_LIMITS).await;
    let customer = sys.token("customer", Uuid::new_v4());

    // No token, and tokens that do not verify, count against the caller's IP.
    let forged = signed_token("not-the-secret", "admin", Uuid::new_v4(), 3600);
    let started = Instant::now();
    let mut unauthorized = 0;
    let mut limited = Vec::new();
    for n in 0..20 {
        let token = (n % 2 == 0).then_some(forged.as_str());
        let answer = sys.get("/orders", token).await;
        match answer.status.as_u16() {
            401 => unauthorized += 1,
            429 => limited.push(answer),
            other => panic!(
                "unauthenticated GET /orders: unexpected {other} {}",
                answer.body
            ),
        }
    }
    let elapsed = started.elapsed();
    // The IP is over its limit; an authenticated actor from the same IP is not.
    sys.get("/orders", Some(&customer))
        .await
        .expect_status(200, "an authenticated actor from the limited IP");

    assert!(
        unauthorized >= 6,
        "the per-IP burst of 6 is allowed: only {unauthorized} of 20 got through to 401"
    );
    assert!(
        unauthorized <= allowed(6, 3, elapsed),
        "{unauthorized} of 20 unauthenticated requests passed in {elapsed:?}: more than a burst of 6 plus 3/s"
    );
    assert!(
        !limited.is_empty(),
        "20 unauthenticated requests in {elapsed:?} at 3/s must hit the limit"
    );
    for answer in limited {
        expect_rate_limited(answer, "unauthenticated caller");
    }
    sys.stop().await;
}
