//! The transition table is published as data (JSON and a Mermaid diagram) and drives
//! `valid-actions`: each caller learns what it may do next and, if not, what blocks it.

use std::collections::BTreeSet;

use serde_json::Value;
use uuid::Uuid;

use crate::harness::TestSystem;

const ACTIONS: [&str; 7] = [
    "mark_paid",
    "confirm",
    "start_processing",
    "ship",
    "deliver",
    "cancel",
    "refund",
];
const STATUSES: [&str; 7] = [
    "pending",
    "confirmed",
    "processing",
    "shipped",
    "delivered",
    "cancelled",
    "refunded",
];

fn names(list: &Value, key: Option<&str>) -> BTreeSet<String> {
    list.as_array()
        .unwrap_or_else(|| panic!("expected an array, got {list}"))
        .iter()
        .map(|item| {
            let name = match key {
                Some(key) => &item[key],
                None => item,
            };
            name.as_str()
                .unwrap_or_else(|| panic!("expected a name in {item}"))
                .to_owned()
        })
        .collect()
}

fn set(items: &[&str]) -> BTreeSet<String> {
    items.iter().map(|s| (*s).to_owned()).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn state_machine_documentation_lists_the_seven_actions_and_a_mermaid_diagram() {
    let sys = TestSystem::start().await;
    let atok = sys.token("admin", Uuid::new_v4());

    let doc = sys
        .get("/orders/state-machine/documentation", Some(&atok))
        .await
        .expect_status(200, "GET documentation")
        .body;
    assert_eq!(
        doc["actions"].as_array().map(Vec::len),
        Some(7),
        "seven actions: {doc}"
    );
    assert_eq!(
        names(&doc["actions"], Some("action")),
        set(&ACTIONS),
        "{doc}"
    );
    assert_eq!(names(&doc["statuses"], None), set(&STATUSES), "{doc}");
    assert_eq!(
        names(&doc["roles"], None),
        set(&["customer", "support", "admin", "system"]),
        "{doc}"
    );
    for action in doc["actions"].as_array().unwrap() {
        for field in ["from", "to", "roles", "guards", "effects"] {
            assert!(
                action.get(field).is_some(),
                "action without `{field}`: {action}"
            );
        }
    }
    let confirm = doc["actions"]
        .as_array()
        .unwrap()
        .iter()
        .find(|a| a["action"] == "confirm")
        .unwrap();
    assert_eq!(
        names(&confirm["from"], None),
        set(&["pending"]),
        "{confirm}"
    );
    assert_eq!(confirm["to"], "confirmed", "{confirm}");
    assert_eq!(
        names(&confirm["roles"], None),
        set(&["admin", "system"]),
        "{confirm}"
    );

    let mermaid = sys
        .request(
            reqwest::Method::GET,
            "/orders/state-machine/documentation?format=mermaid",
            Some(&atok),
        )
        .send()
        .await
        .expect("GET mermaid");
    assert_eq!(mermaid.status(), 200);
    let text = mermaid.text().await.expect("mermaid body");
    assert!(
        text.trim_start().starts_with("stateDiagram-v2"),
        "mermaid diagram: {text}"
    );
    assert!(
        text.contains("pending --> confirmed"),
        "the confirm transition is drawn: {text}"
    );

    sys.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn valid_actions_say_what_blocks_each_action() {
    let sys = TestSystem::start().await;
    let atok = sys.token("admin", Uuid::new_v4());
    let ctok = sys.token("customer", Uuid::new_v4());
    let order = sys.create_simple_order(&ctok).await;

    let valid = sys
        .get(&format!("/orders/{order}/valid-actions"), Some(&atok))
        .await
        .expect_status(200, "admin: GET valid-actions")
        .body;
    assert_eq!(valid["order_id"], order.to_string(), "{valid}");
    assert_eq!(valid["status"], "pending", "{valid}");
    assert_eq!(valid["version"], 1, "{valid}");
    let find = |valid: &Value, action: &str| -> Value {
        valid["actions"]
            .as_array()
            .and_then(|actions| actions.iter().find(|a| a["action"] == action).cloned())
            .unwrap_or_else(|| panic!("`{action}` is not listed: {valid}"))
    };
    let confirm = find(&valid, "confirm");
    assert_eq!(confirm["allowed"], false, "unpaid: {confirm}");
    assert_eq!(confirm["blocked_by"], "payment_required", "{confirm}");
    assert_eq!(confirm["to"], "confirmed", "{confirm}");
    let mark_paid = find(&valid, "mark_paid");
    assert_eq!(mark_paid["allowed"], true, "{mark_paid}");
    assert!(
        mark_paid.get("blocked_by").is_none_or(Value::is_null),
        "{mark_paid}"
    );

    // The owner may cancel its pending order.
    let own = sys
        .get(&format!("/orders/{order}/valid-actions"), Some(&ctok))
        .await
        .expect_status(200, "customer: GET valid-actions")
        .body;
    assert_eq!(find(&own, "cancel")["allowed"], true, "{own}");

    sys.stop().await;
}
