//! The operations console, end to end in real headless Chromium against the real system:
//! an admin signs in and watches orders arrive live, acts on an order while a support
//! operator sees the same change live without any action button, redrives a dead job,
//! runs a bulk over 2,000 orders to 100 % and downloads its CSV, and cancels a larger
//! bulk midway with the page's counts agreeing with the API. Screenshots of every page go
//! to `target/console-screenshots/`; each page is checked for console errors and for
//! horizontal scrolling at 1280x800 and 390x844.

use crate::harness::TestSystem;
use crate::harness::browser::{Driver, Page, UI_DEADLINE, screenshot_dir};
use crate::harness::wait::poll_until;
use futures::StreamExt;
use serde_json::json;
use std::path::Path;
use std::time::Duration;
use uuid::Uuid;

const DESKTOP: (u32, u32) = (1280, 800);
const PHONE: (u32, u32) = (390, 844);

/// Sign in on the console's sign-in page by pasting `token`.
async fn sign_in(page: &Page, sys: &TestSystem, token: &str) {
    page.goto(&sys.url("/console")).await;
    page.wait_css("the sign-in form", "#token").await;
    // Pasting a long token: set the value the way a paste does, then submit by click.
    page.eval_with(
        "const t = document.querySelector('#token'); t.value = arguments[0]; \
         t.dispatchEvent(new Event('input', {bubbles: true}))",
        vec![json!(token)],
    )
    .await;
    page.click("form.signin button[type=submit]").await;
    page.wait_for(
        "the overview after sign-in",
        UI_DEADLINE,
        "return document.querySelector('main').dataset.page === 'overview' && !!document.querySelector('#tile-dead')",
    )
    .await;
}

/// Open a console route (`#/...`) and wait for its page to be mounted.
async fn open(page: &Page, sys: &TestSystem, route: &str, page_name: &str) {
    page.goto(&sys.url(&format!("/console{route}"))).await;
    page.wait_for(
        &format!("page `{page_name}` at {route}"),
        UI_DEADLINE,
        &format!(
            "return document.querySelector('main').dataset.page === {}",
            json!(page_name)
        ),
    )
    .await;
}

async fn checked(page: &Page, dir: &Path, name: &str) {
    page.assert_no_console_errors(name).await;
    page.assert_no_horizontal_scroll(name).await;
    page.full_screenshot(dir, name).await;
}

/// Create `n` orders for `customer` through the API (as admin), a few at a time.
async fn create_orders(sys: &TestSystem, admin: &str, customer: Uuid, n: usize) {
    let body = json!({
        "customer_id": customer,
        "items": [{"sku": "console-tea", "quantity": 1, "unit_price_cents": 990}],
    });
    let created = futures::stream::iter(0..n)
        .map(|_| sys.post("/orders", Some(admin), &body))
        .buffer_unordered(16)
        .filter(|a| futures::future::ready(a.status.as_u16() == 201))
        .count()
        .await;
    assert_eq!(created, n, "every order was created");
}

/// A job the worker cannot read (as a defect would leave it), published: it ends dead.
async fn dead_job(sys: &TestSystem, admin: &str, admin_id: Uuid, order: Uuid) -> Uuid {
    let job_id = Uuid::now_v7();
    sqlx::query(
        "insert into jobs (id, kind, order_id, actor_id, actor_role, payload, status)
         values ($1, 'change_status', $2, $3, 'admin', '{\"action\": \"teleport\"}'::jsonb, 'queued')",
    )
    .bind(job_id)
    .bind(order)
    .bind(admin_id)
    .execute(sys.db())
    .await
    .expect("inserting an unreadable job");
    sys.broker().publish_job_message(job_id).await;
    let job = sys.wait_job(admin, job_id).await;
    assert_eq!(job["status"], "dead", "the poison job is dead: {job}");
    job_id
}

/// Build a bulk `mark_paid` over `customer`'s pending orders in the form, preview it
/// (expecting `expected` matches) and apply it; returns the bulk id from the page's route.
async fn run_bulk_from_form(
    page: &Page,
    sys: &TestSystem,
    customer: Uuid,
    expected: usize,
) -> Uuid {
    open(page, sys, "#/bulk", "bulk").await;
    page.wait_for(
        "the bulk form with the state machine's actions",
        UI_DEADLINE,
        "return document.querySelectorAll('#bulk-action option').length > 0",
    )
    .await;
    page.type_into("#bulk-customer", &customer.to_string())
        .await;
    page.eval("document.querySelectorAll('#bulk-form input[name=status]').forEach(i => i.checked = i.value === 'pending')")
        .await;
    page.select("#bulk-action", "mark_paid").await;
    page.type_into("#bulk-reason", "console test: paid by bank transfer")
        .await;
    page.click("#bulk-preview").await;
    let matched = page
        .wait_text(
            "the preview's matched count",
            "#preview-matched",
            &format!("t.replace(/\\D/g, '') === '{expected}'"),
        )
        .await;
    assert_eq!(
        matched.replace(|c: char| !c.is_ascii_digit(), ""),
        expected.to_string()
    );
    page.wait_text(
        "would-apply count",
        "#preview-apply",
        &format!("t.replace(/\\D/g, '') === '{expected}'"),
    )
    .await;
    page.click("#bulk-apply").await;
    let id = page
        .wait_for(
            "the bulk's own page after apply",
            UI_DEADLINE,
            "const m = location.hash.match(/^#\\/bulk\\/([0-9a-f-]{36})$/); return m && document.querySelector('#bulk-progress') ? m[1] : null",
        )
        .await;
    id.as_str()
        .and_then(|s| s.parse().ok())
        .expect("a bulk id in the route")
}

fn count_of(page_text: &str) -> i64 {
    page_text
        .replace(|c: char| !c.is_ascii_digit(), "")
        .parse()
        .unwrap_or(-1)
}

/// The system, the tokens and the two operators' browsers of the scenario.
struct Console {
    sys: TestSystem,
    shots: std::path::PathBuf,
    admin_id: Uuid,
    admin_token: String,
    support_token: String,
    customer_token: String,
    driver: Driver,
    admin: Page,
    support: Page,
}

impl Console {
    async fn start() -> Self {
        let sys = TestSystem::start_with_env(&[
            ("RATE_PER_ACTOR", "0"),
            ("RATE_PER_IP", "0"),
            // Small chunks and a bulk rate limit make a bulk of thousands take seconds, so
            // that progress moves visibly and a cancel lands midway.
            ("BULK_CHUNK_SIZE", "200"),
            ("WORKER_RATE_BULK", "1000"),
        ])
        .await;
        let shots = screenshot_dir("console-screenshots");
        let _ = std::fs::remove_dir_all(&shots);
        let admin_id = Uuid::new_v4();
        let admin_token = sys.token("admin", admin_id);
        let support_token = sys.token("support", Uuid::new_v4());
        let customer_id = Uuid::new_v4();
        let customer_token = sys.token("customer", customer_id);

        let driver = Driver::start().await;
        let admin = driver.page(DESKTOP.0, DESKTOP.1).await;
        let support = driver.page(DESKTOP.0, DESKTOP.1).await;
        let _ = customer_id;
        Console {
            sys,
            shots,
            admin_id,
            admin_token,
            support_token,
            customer_token,
            driver,
            admin,
            support,
        }
    }

    async fn stop(self) {
        self.admin.close().await;
        self.support.close().await;
        drop(self.driver);
        self.sys.stop().await;
    }
}

/// A customer's token is refused; the admin signs in and the overview goes live.
async fn customer_refused_admin_signs_in(c: &Console) {
    let Console {
        sys,
        shots,
        admin_token,
        customer_token,
        admin,
        ..
    } = c;
    // A customer's token is refused at the door, before any request.
    admin.goto(&sys.url("/console")).await;
    admin.wait_css("the sign-in form", "#token").await;
    admin.full_screenshot(shots, "01-sign-in").await;
    admin
        .eval_with(
            "document.querySelector('#token').value = arguments[0]",
            vec![json!(customer_token)],
        )
        .await;
    admin.click("form.signin button[type=submit]").await;
    admin
        .wait_text(
            "the customer refusal",
            "#signin-error",
            "t.includes('customer')",
        )
        .await;

    // 1. Sign in as admin: the overview loads, live.
    sign_in(admin, sys, admin_token).await;
    admin
        .wait_for(
            "the live stream to connect",
            UI_DEADLINE,
            "return document.querySelector('.live-dot').dataset.state === 'live'",
        )
        .await;
    admin
        .wait_css("the 15-minute chart", "#chart svg rect.bar")
        .await;
    checked(admin, shots, "02-overview").await;
}

/// Orders created through the API appear in the list live.
async fn orders_appear_live(c: &Console) -> Vec<Uuid> {
    let Console {
        sys,
        shots,
        customer_token,
        admin,
        ..
    } = c;
    // 2. Orders created through the API appear in the list live.
    open(admin, sys, "#/orders", "orders").await;
    admin
        .wait_text(
            "the orders list",
            "#orders-status",
            "t.startsWith('Latest orders')",
        )
        .await;
    let mut created = Vec::new();
    for _ in 0..3 {
        created.push(sys.create_simple_order(customer_token).await);
    }
    for id in &created {
        admin
            .wait_css(
                &format!("order {id} to appear live"),
                &format!("#orders-list tr[data-order-id='{id}']"),
            )
            .await;
    }
    checked(admin, shots, "03-orders").await;

    created
}

/// The admin opens an order and clicks mark_paid, then confirm; support watches it.
async fn admin_moves_an_order(c: &Console, order: Uuid) {
    let Console {
        sys,
        shots,
        support_token,
        admin,
        support,
        ..
    } = c;
    // 3. Open one; mark_paid then confirm; the timeline and valid actions follow.
    admin
        .click(&format!("#orders-list tr[data-order-id='{order}'] a"))
        .await;
    admin
        .wait_text("the order page", "#order-status", "t === 'pending'")
        .await;
    admin
        .wait_for("mark_paid offered", UI_DEADLINE, "const b = document.querySelector('#order-actions button[data-action=mark_paid]'); return b && !b.disabled")
        .await;
    admin
        .wait_text(
            "confirm blocked until paid",
            "#order-actions li[data-action=confirm]",
            "t.includes('payment_required')",
        )
        .await;

    // Support, in its own browser, watches the same order.
    sign_in(support, sys, support_token).await;
    open(support, sys, &format!("#/orders/{order}"), "order").await;
    support
        .wait_text("support's order page", "#order-status", "t === 'pending'")
        .await;

    admin
        .click("#order-actions button[data-action=mark_paid]")
        .await;
    admin
        .wait_text("payment to show paid", "#order-payment", "t === 'paid'")
        .await;
    admin
        .wait_css(
            "mark_paid in the timeline",
            "#timeline li[data-action=mark_paid]",
        )
        .await;
    admin
        .wait_for("confirm to become allowed", UI_DEADLINE, "const b = document.querySelector('#order-actions button[data-action=confirm]'); return b && !b.disabled")
        .await;
    admin
        .click("#order-actions button[data-action=confirm]")
        .await;
    admin
        .wait_text(
            "status to show confirmed",
            "#order-status",
            "t === 'confirmed'",
        )
        .await;
    admin
        .wait_css(
            "confirm in the timeline",
            "#timeline li[data-action=confirm]",
        )
        .await;
    admin
        .wait_for("start_processing offered next", UI_DEADLINE, "const b = document.querySelector('#order-actions button[data-action=start_processing]'); return b && !b.disabled")
        .await;
    assert_eq!(
        admin.eval("return location.hash").await,
        json!(format!("#/orders/{order}")),
        "the order page updated in place"
    );
    checked(admin, shots, "04-order-admin").await;
}

/// Support saw both changes live and has no action buttons.
async fn support_saw_it_live(c: &Console, order: Uuid) {
    let Console {
        sys,
        shots,
        admin_token,
        support,
        ..
    } = c;
    // Support saw both changes live and has no buttons.
    support
        .wait_text(
            "support sees confirmed live",
            "#order-status",
            "t === 'confirmed'",
        )
        .await;
    support
        .wait_css(
            "support sees confirm in the timeline",
            "#timeline li[data-action=confirm]",
        )
        .await;
    assert_eq!(support.text("#order-payment").await.trim(), "paid");
    assert_eq!(
        support
            .count("#order-actions button, #main button[data-action]")
            .await,
        0,
        "support gets no action buttons"
    );
    checked(support, shots, "05-order-support").await;
    let history = sys.history(admin_token, order).await;
    assert_eq!(
        history
            .iter()
            .map(|h| h["action"].as_str().unwrap_or_default())
            .collect::<Vec<_>>(),
        ["create", "mark_paid", "confirm"],
        "exactly the clicked actions were applied"
    );
}

/// A dead job (a poison message) is listed and redriven from the dead-letter view.
async fn dead_job_redriven(c: &Console, poisoned: Uuid) {
    let Console {
        sys,
        shots,
        admin_id,
        admin_token,
        admin,
        support,
        ..
    } = c;
    // 4. A dead job (a poison message) is listed and redriven from the dead-letter view.
    let job = dead_job(sys, admin_token, *admin_id, poisoned).await;
    open(admin, sys, "#/jobs?status=dead", "jobs").await;
    admin
        .wait_css(
            "the dead job listed",
            &format!("#jobs-list tr[data-job-id='{job}']"),
        )
        .await;
    let listed = admin
        .text(&format!("#jobs-list tr[data-job-id='{job}']"))
        .await;
    assert!(
        listed.contains("invalid_job"),
        "the dead job shows its error code: {listed}"
    );
    checked(admin, shots, "06-dead-letters").await;
    // Support sees the same dead job, and neither retry nor discard; previews, no apply.
    open(support, sys, "#/jobs?status=dead", "jobs").await;
    support
        .wait_css(
            "support sees the dead job",
            &format!("#jobs-list tr[data-job-id='{job}']"),
        )
        .await;
    assert_eq!(
        support
            .count("[data-retry], [data-discard], #retry-all:not([hidden])")
            .await,
        0,
        "support gets no retry or discard buttons"
    );
    open(support, sys, "#/bulk", "bulk").await;
    support
        .wait_css("support's bulk form", "#bulk-preview")
        .await;
    assert_eq!(
        support.count("#bulk-apply").await,
        0,
        "support previews but cannot apply"
    );
    support
        .assert_no_console_errors("support's jobs and bulk pages")
        .await;
    // The operator fixed what made it unreadable; now the retry can succeed.
    sqlx::query(r#"update jobs set payload = '{"action": "mark_paid"}'::jsonb where id = $1"#)
        .bind(job)
        .execute(sys.db())
        .await
        .expect("fixing the payload");
    admin.click(&format!("button[data-retry='{job}']")).await;
    // The click's request is in flight until the page says so: only then is `dead` stale.
    admin
        .wait_text(
            "the retry to be confirmed",
            "#toasts",
            "t.includes('queued again')",
        )
        .await;
    admin
        .wait_for(
            "the retried job to leave the dead list",
            UI_DEADLINE,
            &format!("return !document.querySelector(\"#jobs-list tr[data-job-id='{job}']\")"),
        )
        .await;
    let redriven = sys.wait_job(admin_token, job).await;
    assert_eq!(
        redriven["status"], "succeeded",
        "the retried job applied: {redriven}"
    );
    assert_eq!(
        sys.order(admin_token, poisoned).await["payment_status"],
        "paid"
    );
}

/// A bulk over 2,000 orders from the filter form: progress to 100 %, then the CSV.
async fn bulk_from_the_filter_form(c: &Console) -> Uuid {
    let Console {
        sys,
        shots,
        admin_token,
        admin,
        ..
    } = c;
    // 5. A bulk over 2,000 orders from the filter form: progress to 100 %, then CSV.
    let bulk_customer = Uuid::new_v4();
    create_orders(sys, admin_token, bulk_customer, 2_000).await;
    let bulk = run_bulk_from_form(admin, sys, bulk_customer, 2_000).await;
    admin
        .wait_for("the progress bar to reach 100 %", Duration::from_secs(60), "return document.querySelector('#bulk-pct')?.textContent === '100 %' && document.querySelector('#bulk-progress').value === 100")
        .await;
    admin
        .wait_text(
            "the bulk to complete",
            "#bulk-status",
            "t.startsWith('completed')",
        )
        .await;
    assert_eq!(count_of(&admin.text("#bulk-applied").await), 2_000);
    admin.click("#bulk-csv").await;
    let rows = admin
        .wait_text("the CSV download", "#bulk-csv-rows", "t.length > 0")
        .await;
    assert_eq!(rows, "2000", "the CSV has one row per order");
    checked(admin, shots, "07-bulk-completed").await;
    let file = admin.downloads.join(format!("bulk-{bulk}.csv"));
    poll_until(UI_DEADLINE, || file.exists().then_some(())).await;
    let csv = std::fs::read_to_string(&file)
        .unwrap_or_else(|e| panic!("the CSV was downloaded to {}: {e}", file.display()));
    assert_eq!(csv.lines().count(), 2_001, "header and 2,000 rows");
    assert!(
        csv.starts_with("order_id,outcome,code,from,to"),
        "{}",
        &csv[..80.min(csv.len())]
    );
    bulk
}

/// A larger bulk, cancelled midway: the page's counts agree with the API.
async fn bulk_cancelled_midway(c: &Console) {
    let Console {
        sys,
        shots,
        admin_token,
        admin,
        ..
    } = c;
    // 6. A larger bulk, cancelled midway: the page's counts agree with the API.
    let big_customer = Uuid::new_v4();
    create_orders(sys, admin_token, big_customer, 5_000).await;
    let big = run_bulk_from_form(admin, sys, big_customer, 5_000).await;
    admin
        .wait_for("the large bulk to make progress", Duration::from_secs(30), "const n = Number((document.querySelector('#bulk-applied')?.textContent ?? '0').replace(/\\D/g, '')); return n > 0")
        .await;
    admin.click("#bulk-cancel").await;
    admin
        .wait_text(
            "the bulk to stop as cancelled",
            "#bulk-status",
            "t.startsWith('cancelled')",
        )
        .await;
    let api = sys
        .get(&format!("/orders/bulk/{big}"), Some(admin_token))
        .await
        .expect_status(200, "GET /orders/bulk/{id}")
        .body;
    // The page may still show the event before the final poll: wait for agreement.
    let expect: Vec<(String, i64)> = ["total", "applied", "rejected", "failed", "skipped"]
        .iter()
        .map(|k| ((*k).to_owned(), api[*k].as_i64().unwrap_or(-1)))
        .collect();
    let agree = expect
        .iter()
        .map(|(k, v)| format!("Number(document.querySelector('#bulk-{k}').textContent.replace(/\\D/g, '')) === {v}"))
        .collect::<Vec<_>>()
        .join(" && ");
    admin
        .wait_for(
            &format!("the page's counts to agree with {api}"),
            UI_DEADLINE,
            &format!("return {agree}"),
        )
        .await;
    let applied = api["applied"].as_i64().unwrap_or(0);
    assert!(
        applied > 0 && applied < 5_000 && api["skipped"].as_i64().unwrap_or(0) > 0,
        "the cancel landed midway: {api}"
    );
    checked(admin, shots, "08-bulk-cancelled").await;
}

/// The state machine page, then the overview after all that activity.
async fn state_machine_and_overview(c: &Console) {
    let Console {
        sys, shots, admin, ..
    } = c;
    // 7. The state machine page: the table and the diagram, from the same JSON.
    open(admin, sys, "#/machine", "machine").await;
    admin
        .wait_css("the diagram", "#machine-diagram svg .node")
        .await;
    assert_eq!(
        admin.count("#machine-diagram svg .node").await,
        7,
        "one node per status"
    );
    checked(admin, shots, "09-state-machine").await;

    // The overview after all that: the chart and the counters show the activity.
    open(admin, sys, "#/", "overview").await;
    admin
        .wait_for("the chart to show the bulks", UI_DEADLINE, "return [...document.querySelectorAll('#chart rect.bar')].some(r => Number(r.getAttribute('height')) > 0)")
        .await;
    admin
        .wait_text("jobs counted", "#jobs-by-state", "t.includes('succeeded')")
        .await;
    checked(admin, shots, "10-overview-busy").await;
}

/// Every page on a phone: no sideways scrolling, no errors.
async fn every_page_on_a_phone(c: &Console, order: Uuid, bulk: Uuid) {
    let Console {
        sys, shots, admin, ..
    } = c;
    // 8. Every page on a phone: no sideways scrolling, no errors.
    admin.resize(PHONE.0, PHONE.1).await;
    for (route, name, ready) in [
        ("#/", "overview", "#chart svg"),
        (
            "#/orders",
            "orders",
            "#orders-list table, #orders-list .empty",
        ),
        (&*format!("#/orders/{order}"), "order", "#timeline li"),
        (
            "#/jobs?status=dead",
            "jobs",
            "#jobs-list table, #jobs-list .empty",
        ),
        ("#/bulk", "bulk", "#bulk-form #bulk-action option"),
        (&*format!("#/bulk/{bulk}"), "bulk", "#bulk-counts dd"),
        ("#/machine", "machine", "#machine-diagram svg"),
    ] {
        open(admin, sys, route, name).await;
        admin
            .wait_for(
                &format!("{route} on a phone"),
                UI_DEADLINE,
                &format!("return !!document.querySelector({})", json!(ready)),
            )
            .await;
        let shot = format!(
            "phone-{}",
            route
                .trim_start_matches("#/")
                .split(['/', '?'])
                .next()
                .filter(|s| !s.is_empty())
                .unwrap_or("overview")
        );
        let shot = if route.matches('/').count() > 1 {
            format!("{shot}-detail")
        } else {
            shot
        };
        checked(admin, shots, &shot).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn operator_console_end_to_end_in_chromium() {
    let c = Console::start().await;
    customer_refused_admin_signs_in(&c).await;
    let created = orders_appear_live(&c).await;
    admin_moves_an_order(&c, created[0]).await;
    support_saw_it_live(&c, created[0]).await;
    dead_job_redriven(&c, created[1]).await;
    let bulk = bulk_from_the_filter_form(&c).await;
    bulk_cancelled_midway(&c).await;
    state_machine_and_overview(&c).await;
    every_page_on_a_phone(&c, created[0], bulk).await;
    c.stop().await;
}
