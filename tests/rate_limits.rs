//! Ingress rate limits: an actor over its limit gets 429 with `Retry-After` and nothing of
//! its request is done, while other actors go on unaffected; callers without a valid token
//! are limited per client IP. Limits are set low for the test (RATE_PER_ACTOR=5: bursts of
//! 10; RATE_PER_IP=3: bursts of 6). Nothing waits for a bucket to refill.

use std::{
    future::Future,
    time::{Duration, Instant},
};

use serde_json::json;
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
fn allowed(burst: u32, per_sec: u32, elapsed: Duration) -> usize {
    (burst as f64 + per_sec as f64 * elapsed.as_secs_f64()).floor() as usize + 1
}

/// What a flood of requests got: how many got through, the 429 answers, how long it took.
struct Flood {
    passed: usize,
    limited: Vec<Answer>,
    elapsed: Duration,
}

/// Sends the `n` requests `request(0..n)` one after the other; each must get through
/// (`passed`) or be limited (429).
async fn flood<F>(what: &str, n: usize, passed: u16, mut request: impl FnMut(usize) -> F) -> Flood
where
    F: Future<Output = Answer>,
{
    let started = Instant::now();
    let (mut through, mut limited) = (0, Vec::new());
    for i in 0..n {
        let answer = request(i).await;
        match answer.status.as_u16() {
            429 => limited.push(answer),
            status if status == passed => through += 1,
            other => panic!("{what}: unexpected {other} {}", answer.body),
        }
    }
    Flood {
        passed: through,
        limited,
        elapsed: started.elapsed(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn actor_over_its_limit_gets_429_while_others_pass() {
    let sys = TestSystem::start_with_env(&LOW_LIMITS).await;
    let flooder = sys.token("customer", Uuid::new_v4());
    let bystander = sys.token("customer", Uuid::new_v4());

    let Flood {
        passed: ok,
        limited,
        elapsed,
    } = flood("flooding GET /orders", 30, 200, |_| {
        sys.get("/orders", Some(&flooder))
    })
    .await;
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
    let Flood {
        passed: ok,
        limited,
        elapsed,
    } = flood("GET /orders", 40, 200, |n| {
        sys.get("/orders", Some(&tokens[n % 2]))
    })
    .await;
    assert!(
        !limited.is_empty(),
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

    let Flood {
        passed: created,
        limited,
        ..
    } = flood("flooding POST /orders", 30, 201, |_| {
        sys.post("/orders", Some(&token), &body)
    })
    .await;
    assert!(
        !limited.is_empty(),
        "30 quick creations at 5/s must hit the limit ({created} created)"
    );
    let limited_count = limited.len();
    for answer in limited {
        expect_rate_limited(answer, "flooding POST /orders");
    }
    let rows = sys
        .count(
            "select count(*) from orders where customer_id = $1",
            customer,
        )
        .await;
    assert_eq!(
        rows, created as i64,
        "only the admitted requests created orders ({limited_count} were limited)"
    );
    sys.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unauthenticated_callers_are_limited_per_ip() {
    let sys = TestSystem::start_with_env(&LOW_LIMITS).await;
    let customer = sys.token("customer", Uuid::new_v4());

    // No token, and tokens that do not verify, count against the caller's IP.
    let forged = signed_token("not-the-secret", "admin", Uuid::new_v4(), 3600);
    let Flood {
        passed: unauthorized,
        limited,
        elapsed,
    } = flood("unauthenticated GET /orders", 20, 401, |n| {
        sys.get("/orders", (n % 2 == 0).then_some(forged.as_str()))
    })
    .await;
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
