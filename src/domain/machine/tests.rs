//! Every role × status × action cell (× payment, ownership, stock, tracking number and
//! version) against an oracle written independently from DESIGN.md's table.

use super::*;

const OWNER: Uuid = Uuid::from_u128(1);
const STRANGER: Uuid = Uuid::from_u128(2);

#[derive(Clone, Copy, Debug)]
enum Stock {
    Enough,
    Short,
    Untracked,
}

fn lines(stock: Stock) -> Vec<StockLine> {
    let available = match stock {
        Stock::Enough => Some(5),
        Stock::Short => Some(2),
        Stock::Untracked => None,
    };
    // Two lines of the same sku: 3 wanted in total, so "short" only shows when summed.
    vec![
        StockLine {
            sku: "tea".into(),
            quantity: 2,
            available,
        },
        StockLine {
            sku: "tea".into(),
            quantity: 1,
            available,
        },
    ]
}

/// DESIGN.md's table, transcribed as plainly as possible: Ok(to status) or the code.
#[allow(clippy::too_many_arguments)] // one argument per dimension of the cell
fn oracle(
    role: Role,
    own: bool,
    status: OrderStatus,
    payment: PaymentStatus,
    action: Action,
    stock: Stock,
    tracking: bool,
    version_ok: bool,
) -> Result<OrderStatus, RejectCode> {
    use OrderStatus::{Cancelled, Confirmed, Delivered, Pending, Processing, Refunded, Shipped};
    use PaymentStatus::{Paid, Unpaid};
    use RejectCode::*;
    let roles: &[Role] = match action {
        Action::MarkPaid | Action::Confirm | Action::Deliver | Action::Refund => {
            &[Role::Admin, Role::System]
        }
        Action::StartProcessing | Action::Ship => &[Role::Admin, Role::Support, Role::System],
        Action::Cancel => &[Role::Customer, Role::Admin, Role::Support],
    };
    if !roles.contains(&role) {
        return Err(ForbiddenRole);
    }
    if role == Role::Customer && !own {
        return Err(NotOwner);
    }
    if !version_ok {
        return Err(VersionConflict);
    }
    let (from, to): (&[OrderStatus], OrderStatus) = match action {
        Action::MarkPaid => (&[Pending, Confirmed], status),
        Action::Confirm => (&[Pending], Confirmed),
        Action::StartProcessing => (&[Confirmed], Processing),
        Action::Ship => (&[Processing], Shipped),
        Action::Deliver => (&[Shipped], Delivered),
        Action::Cancel => (&[Pending, Confirmed], Cancelled),
        Action::Refund => (&[Cancelled, Delivered], Refunded),
    };
    if !from.contains(&status) {
        return Err(InvalidTransition);
    }
    if role == Role::Customer && status != Pending {
        return Err(NotOwner);
    }
    match action {
        Action::MarkPaid if payment != Unpaid => Err(InvalidTransition),
        Action::Confirm if payment != Paid => Err(PaymentRequired),
        Action::Confirm if matches!(stock, Stock::Short) => Err(OutOfStock),
        Action::Ship if !tracking => Err(MissingField),
        Action::Refund if payment != Paid => Err(PaymentRequired),
        _ => Ok(to),
    }
}

#[test]
fn every_cell_matches_the_design_table() {
    let mut cells = 0;
    for role in Role::ALL {
        for own in [true, false] {
            for status in OrderStatus::ALL {
                for payment in PaymentStatus::ALL {
                    for action in Action::ALL {
                        for stock in [Stock::Enough, Stock::Short, Stock::Untracked] {
                            for tracking in [true, false] {
                                for version_ok in [true, false] {
                                    let stock_lines = lines(stock);
                                    let ctx = OrderContext {
                                        customer_id: OWNER,
                                        status,
                                        payment_status: payment,
                                        version: 7,
                                        stock: &stock_lines,
                                    };
                                    let actor = Actor {
                                        id: if own { OWNER } else { STRANGER },
                                        role,
                                    };
                                    let req = ChangeRequest {
                                        expected_version: Some(if version_ok { 7 } else { 6 }),
                                        tracking_number: tracking.then_some("1Z999"),
                                    };
                                    let got = decide(&ctx, &actor, action, &req)
                                        .map(|d| d.to)
                                        .map_err(|r| r.code);
                                    let want = oracle(
                                        role, own, status, payment, action, stock, tracking,
                                        version_ok,
                                    );
                                    assert_eq!(
                                        got, want,
                                        "{role} own={own} {status}/{payment} {action} {stock:?} tracking={tracking} version_ok={version_ok}"
                                    );
                                    cells += 1;
                                }
                            }
                        }
                    }
                }
            }
        }
    }
    assert_eq!(cells, 4 * 2 * 7 * 3 * 7 * 3 * 2 * 2);
}

fn ctx(status: OrderStatus, payment: PaymentStatus, stock: &[StockLine]) -> OrderContext<'_> {
    OrderContext {
        customer_id: OWNER,
        status,
        payment_status: payment,
        version: 1,
        stock,
    }
}

const ADMIN: Actor = Actor {
    id: STRANGER,
    role: Role::Admin,
};

#[test]
fn effects_follow_the_table() {
    use OrderStatus::{Confirmed, Delivered, Pending, Processing, Refunded};
    use PaymentStatus::{Paid, Unpaid};
    let stock = lines(Stock::Enough);
    let req = ChangeRequest {
        expected_version: None,
        tracking_number: Some("T"),
    };
    let d = |s, p, a| decide(&ctx(s, p, &stock), &ADMIN, a, &req).unwrap();

    let paid = d(Pending, Unpaid, Action::MarkPaid);
    assert_eq!(
        (paid.to, paid.payment_status, paid.stock),
        (Pending, Paid, StockEffect::None)
    );
    assert_eq!(
        d(Pending, Paid, Action::Confirm).stock,
        StockEffect::Reserve
    );
    assert_eq!(
        d(Processing, Paid, Action::Ship).stock,
        StockEffect::Consume
    );
    // Cancelling releases only what confirm reserved.
    assert_eq!(
        d(Confirmed, Paid, Action::Cancel).stock,
        StockEffect::Release
    );
    assert_eq!(d(Pending, Unpaid, Action::Cancel).stock, StockEffect::None);
    let refund = d(Delivered, Paid, Action::Refund);
    assert_eq!(
        (refund.to, refund.payment_status),
        (Refunded, PaymentStatus::Refunded)
    );
}

#[test]
fn target_status_resolves_to_the_one_action_leading_there() {
    use OrderStatus::*;
    assert_eq!(action_for_target(Pending, Confirmed), Ok(Action::Confirm));
    assert_eq!(action_for_target(Confirmed, Cancelled), Ok(Action::Cancel));
    assert_eq!(action_for_target(Delivered, Refunded), Ok(Action::Refund));
    assert_eq!(
        action_for_target(Pending, Shipped).unwrap_err().code,
        RejectCode::InvalidTransition
    );
    // Every (from, to) pair reachable in the table resolves, and to an action whose row has it.
    for t in TRANSITIONS {
        if let Some(to) = t.to {
            for from in t.from {
                assert_eq!(action_for_target(*from, to), Ok(t.action));
            }
        }
    }
}

#[test]
fn valid_actions_name_the_blocker_and_agree_with_decide() {
    let stock = lines(Stock::Enough);
    let c = ctx(OrderStatus::Pending, PaymentStatus::Unpaid, &stock);
    let actions = valid_actions(&c, &ADMIN);
    assert_eq!(actions.len(), Action::ALL.len());
    let confirm = actions
        .iter()
        .find(|a| a.action == Action::Confirm)
        .unwrap();
    assert_eq!(
        (confirm.allowed, confirm.blocked_by),
        (false, Some(RejectCode::PaymentRequired))
    );
    let mark_paid = actions
        .iter()
        .find(|a| a.action == Action::MarkPaid)
        .unwrap();
    assert!(mark_paid.allowed);
    let ship = actions.iter().find(|a| a.action == Action::Ship).unwrap();
    assert_eq!(ship.requires, vec!["tracking_number"]);
    for role in Role::ALL {
        for status in OrderStatus::ALL {
            let c = ctx(status, PaymentStatus::Paid, &stock);
            let actor = Actor { id: OWNER, role };
            for a in valid_actions(&c, &actor) {
                let req = ChangeRequest {
                    expected_version: None,
                    tracking_number: Some("T"),
                };
                assert_eq!(a.allowed, decide(&c, &actor, a.action, &req).is_ok());
            }
        }
    }
}

#[test]
fn mermaid_has_an_edge_for_every_row_and_source() {
    let m = mermaid();
    assert!(m.starts_with("stateDiagram-v2\n"));
    let edges: usize = TRANSITIONS.iter().map(|t| t.from.len()).sum();
    assert_eq!(
        m.lines()
            .filter(|l| l.contains(" --> ") && l.contains(':'))
            .count(),
        edges
    );
}
