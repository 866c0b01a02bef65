//! Lists are bounded and walkable: limits are capped (400 outside 1..=200, in the error
//! format), and following `next_cursor` returns each row exactly once.

use std::collections::HashSet;

use serde_json::json;
use uuid::Uuid;

use crate::harness::TestSystem;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn list_limits_are_capped() {
    let sys = TestSystem::start().await;
    let atok = sys.token("admin", Uuid::new_v4());
    let ctok = sys.token("customer", Uuid::new_v4());
    sys.create_simple_order(&ctok).await;
    let mut failures = Vec::new();
    for (token, path, status) in [
        (&ctok, "/orders?limit=100000", 400),
        (&ctok, "/orders?limit=201", 400),
        (&ctok, "/orders?limit=0", 400),
        (&ctok, "/orders?limit=-1", 400),
        (&ctok, "/orders?cursor=not-a-uuid", 400),
        (&ctok, "/orders?status=teleported", 400),
        (&ctok, "/orders?limit=200", 200),
        (&atok, "/admin/jobs?limit=0", 400),
        (&atok, "/admin/jobs?limit=100000", 400),
        (&atok, "/admin/jobs?limit=-5", 400),
        (&atok, "/admin/jobs?status=bogus", 400),
        (&atok, "/admin/jobs?cursor=not-a-uuid", 400),
        (&atok, "/admin/jobs?limit=200", 200),
    ] {
        let answer = sys.get(path, Some(token)).await;
        let ok = answer.status.as_u16() == status
            && (status != 400 || answer.code() == Some("invalid_request"));
        if !ok {
            failures.push(format!(
                "GET {path}: expected {status}, got {} {}",
                answer.status, answer.body
            ));
        }
    }
    sys.stop().await;
    assert!(failures.is_empty(), "list limits:\n{}", failures.join("\n"));
}

/// Follows `next_cursor` from the first page; returns the ids of every page, in order.
async fn walk(
    sys: &TestSystem,
    token: &str,
    path: &str,
    limit: usize,
    key: &str,
) -> Vec<Vec<String>> {
    let mut pages = Vec::new();
    let mut cursor: Option<String> = None;
    loop {
        let sep = if path.contains('?') { '&' } else { '?' };
        let url = match &cursor {
            Some(c) => format!("{path}{sep}limit={limit}&cursor={c}"),
            None => format!("{path}{sep}limit={limit}"),
        };
        let body = sys
            .get(&url, Some(token))
            .await
            .expect_status(200, &format!("GET {url}"))
            .body;
        let ids: Vec<String> = body[key]
            .as_array()
            .unwrap_or_else(|| panic!("GET {url}: no `{key}` array in {body}"))
            .iter()
            .map(|row| row["id"].as_str().expect("row id").to_owned())
            .collect();
        assert!(
            ids.len() <= limit,
            "GET {url}: {} rows for limit {limit}",
            ids.len()
        );
        pages.push(ids);
        match body["next_cursor"].as_str() {
            Some(next) => cursor = Some(next.to_owned()),
            None => {
                assert!(
                    body["next_cursor"].is_null(),
                    "GET {url}: next_cursor must be a string or null: {body}"
                );
                return pages;
            }
        }
        assert!(
            pages.len() <= 20,
            "cursor walk over {path} does not end: {pages:?}"
        );
    }
}

/// Every id exactly once, and exactly the expected set.
fn assert_each_once(what: &str, pages: &[Vec<String>], expected: &HashSet<String>) {
    let all: Vec<&String> = pages.iter().flatten().collect();
    let unique: HashSet<String> = all.iter().map(|s| (*s).clone()).collect();
    assert_eq!(
        all.len(),
        unique.len(),
        "{what}: some id came twice: {pages:?}"
    );
    assert_eq!(&unique, expected, "{what}: pages {pages:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cursor_walk_returns_each_row_exactly_once() {
    let sys = TestSystem::start().await;
    let ctok = sys.token("customer", Uuid::new_v4());
    let otok = sys.token("customer", Uuid::new_v4());
    let atok = sys.token("admin", Uuid::new_v4());
    let mut mine = Vec::new();
    for n in 0..7 {
        mine.push(sys.create_simple_order(&ctok).await);
        if n % 3 == 0 {
            sys.create_simple_order(&otok).await; // someone else's, interleaved
        }
    }
    let mine_set: HashSet<String> = mine.iter().map(Uuid::to_string).collect();

    let pages = walk(&sys, &ctok, "/orders", 3, "orders").await;
    let sizes: Vec<usize> = pages.iter().map(Vec::len).collect();
    assert_eq!(sizes, vec![3, 3, 1], "7 orders in pages of 3: {pages:?}");
    assert_each_once("customer's walk, limit 3", &pages, &mine_set);

    // A page that ends exactly at the last row says there is no next one.
    let pages = walk(&sys, &ctok, "/orders", 7, "orders").await;
    assert_eq!(
        pages.len(),
        1,
        "7 orders with limit 7 are one page: {pages:?}"
    );
    assert_each_once("customer's walk, limit 7", &pages, &mine_set);

    // Staff see every order, each once.
    let all: HashSet<String> = sqlx::query_scalar::<_, Uuid>("select id from orders")
        .fetch_all(sys.db())
        .await
        .expect("order ids")
        .iter()
        .map(Uuid::to_string)
        .collect();
    assert_eq!(all.len(), 10);
    let pages = walk(&sys, &atok, "/orders", 4, "orders").await;
    assert_each_once("admin's walk, limit 4", &pages, &all);

    // Jobs page the same way.
    let mut jobs = HashSet::new();
    for order in &mine {
        jobs.insert(
            sys.submit(&atok, *order, &json!({"action": "mark_paid"}))
                .await
                .to_string(),
        );
    }
    let pages = walk(&sys, &atok, "/admin/jobs", 3, "jobs").await;
    assert_each_once("admin's job walk, limit 3", &pages, &jobs);

    sys.stop().await;
}
