//! The order state machine as one table. `decide` is the only place a change is judged:
//! the worker applies its decisions, bulk previews run it without writing, `valid-actions`
//! asks it about every action, and the documentation endpoint renders the table itself.

use super::{Action, Actor, OrderStatus, PaymentStatus, RejectCode, Rejection, Role};
use serde::Serialize;
use std::collections::BTreeMap;
use uuid::Uuid;

/// A condition on the order's context that must hold for a transition.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Guard {
    /// Payment status must be `unpaid` (paying twice is not a transition).
    PaymentUnpaid,
    /// Payment status must be `paid`.
    PaymentPaid,
    /// Every tracked sku has `on_hand - reserved >= quantity` for this order.
    StockAvailable,
    /// The request carries a non-empty `tracking_number`.
    TrackingNumber,
}

impl Guard {
    fn check(self, ctx: &OrderContext<'_>, req: &ChangeRequest<'_>) -> Result<(), Rejection> {
        match self {
            Guard::PaymentUnpaid if ctx.payment_status != PaymentStatus::Unpaid => {
                Err(Rejection::new(
                    RejectCode::InvalidTransition,
                    format!("payment status is already `{}`", ctx.payment_status),
                ))
            }
            Guard::PaymentPaid if ctx.payment_status != PaymentStatus::Paid => Err(Rejection::new(
                RejectCode::PaymentRequired,
                format!("payment status is `{}`, needs `paid`", ctx.payment_status),
            )),
            Guard::StockAvailable => match ctx.first_short_sku() {
                Some((sku, wanted, available)) => Err(Rejection::new(
                    RejectCode::OutOfStock,
                    format!("sku `{sku}`: {wanted} wanted, {available} available"),
                )),
                None => Ok(()),
            },
            Guard::TrackingNumber if req.tracking_number.is_none_or(|t| t.trim().is_empty()) => {
                Err(Rejection::new(
                    RejectCode::MissingField,
                    "`tracking_number` is required to ship",
                ))
            }
            _ => Ok(()),
        }
    }
}

/// What a transition does besides changing the status.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Effect {
    SetPaymentPaid,
    SetPaymentRefunded,
    /// Reserve every tracked item's quantity (`reserved += quantity`).
    ReserveStock,
    /// Give back what `confirm` reserved, if anything is reserved.
    ReleaseStock,
    /// Stock leaves the warehouse: `on_hand -= quantity`, `reserved -= quantity`.
    ConsumeStock,
}

/// One row of the table.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct Transition {
    pub action: Action,
    pub from: &'static [OrderStatus],
    /// `None`: the status stays as it is (only the context changes).
    pub to: Option<OrderStatus>,
    pub roles: &'static [Role],
    /// The statuses in which a customer may act on its own order, when customers may act.
    #[serde(skip_serializing_if = "<[OrderStatus]>::is_empty")]
    pub customer_from: &'static [OrderStatus],
    pub guards: &'static [Guard],
    pub effects: &'static [Effect],
}

use Action as A;
use OrderStatus as S;
use Role as R;

/// The order lifecycle. Read it top to bottom: this is the whole of the business rules.
pub const TRANSITIONS: &[Transition] = &[
    Transition {
        action: A::MarkPaid,
        from: &[S::Pending, S::Confirmed],
        to: None,
        roles: &[R::Admin, R::System],
        customer_from: &[],
        guards: &[Guard::PaymentUnpaid],
        effects: &[Effect::SetPaymentPaid],
    },
    Transition {
        action: A::Confirm,
        from: &[S::Pending],
        to: Some(S::Confirmed),
        roles: &[R::Admin, R::System],
        customer_from: &[],
        guards: &[Guard::PaymentPaid, Guard::StockAvailable],
        effects: &[Effect::ReserveStock],
    },
    Transition {
        action: A::StartProcessing,
        from: &[S::Confirmed],
        to: Some(S::Processing),
        roles: &[R::Admin, R::Support, R::System],
        customer_from: &[],
        guards: &[],
        effects: &[],
    },
    Transition {
        action: A::Ship,
        from: &[S::Processing],
        to: Some(S::Shipped),
        roles: &[R::Admin, R::Support, R::System],
        customer_from: &[],
        guards: &[Guard::TrackingNumber],
        effects: &[Effect::ConsumeStock],
    },
    Transition {
        action: A::Deliver,
        from: &[S::Shipped],
        to: Some(S::Delivered),
        roles: &[R::Admin, R::System],
        customer_from: &[],
        guards: &[],
        effects: &[],
    },
    Transition {
        action: A::Cancel,
        from: &[S::Pending, S::Confirmed],
        to: Some(S::Cancelled),
        roles: &[R::Customer, R::Admin, R::Support],
        customer_from: &[S::Pending],
        guards: &[],
        effects: &[Effect::ReleaseStock],
    },
    Transition {
        action: A::Refund,
        from: &[S::Cancelled, S::Delivered],
        to: Some(S::Refunded),
        roles: &[R::Admin, R::System],
        customer_from: &[],
        guards: &[Guard::PaymentPaid],
        effects: &[Effect::SetPaymentRefunded],
    },
];

impl Transition {
    pub fn of(action: Action) -> &'static Transition {
        TRANSITIONS
            .iter()
            .find(|t| t.action == action)
            .expect("every action has exactly one row in TRANSITIONS")
    }
}

/// May `role` ever perform `action`, in any state? (Answered before a job is queued.)
pub fn role_may(role: Role, action: Action) -> bool {
    Transition::of(action).roles.contains(&role)
}

/// Does an order in `status` hold a stock reservation made by `confirm`?
fn holds_reservation(status: OrderStatus) -> bool {
    matches!(status, OrderStatus::Confirmed | OrderStatus::Processing)
}

/// One item of the order with the stock it draws on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StockLine {
    pub sku: String,
    pub quantity: i64,
    /// `on_hand - reserved`, or `None` when the sku is not stock-tracked.
    pub available: Option<i64>,
}

/// Everything about an order that a decision may depend on.
#[derive(Debug, Clone)]
pub struct OrderContext<'a> {
    pub customer_id: Uuid,
    pub status: OrderStatus,
    pub payment_status: PaymentStatus,
    pub version: i64,
    pub stock: &'a [StockLine],
}

impl OrderContext<'_> {
    /// The first tracked sku (in sku order) whose availability does not cover this order.
    fn first_short_sku(&self) -> Option<(&str, i64, i64)> {
        let mut wanted: BTreeMap<&str, (i64, Option<i64>)> = BTreeMap::new();
        for line in self.stock {
            let entry = wanted.entry(&line.sku).or_insert((0, line.available));
            entry.0 += line.quantity;
        }
        wanted
            .into_iter()
            .find_map(|(sku, (qty, available))| match available {
                Some(available) if available < qty => Some((sku, qty, available)),
                _ => None,
            })
    }
}

/// What the caller asks for, beyond the action itself.
#[derive(Debug, Clone, Copy, Default)]
pub struct ChangeRequest<'a> {
    pub expected_version: Option<i64>,
    pub tracking_number: Option<&'a str>,
}

/// What happens to stock when a decision is applied.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum StockEffect {
    None,
    Reserve,
    Release,
    Consume,
}

/// An accepted change, ready to be written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Decision {
    pub action: Action,
    pub from: OrderStatus,
    pub to: OrderStatus,
    pub payment_status: PaymentStatus,
    pub stock: StockEffect,
}

/// Judge `action` by `actor` on the order in `ctx`.
///
/// Checks run from the most to the least fundamental, so the code names the real obstacle:
/// role, ownership, version, status, customer limits, then the guards in table order.
pub fn decide(
    ctx: &OrderContext<'_>,
    actor: &Actor,
    action: Action,
    req: &ChangeRequest<'_>,
) -> Result<Decision, Rejection> {
    let t = Transition::of(action);
    if !t.roles.contains(&actor.role) {
        return Err(Rejection::new(
            RejectCode::ForbiddenRole,
            format!("role `{}` may not {}", actor.role, action),
        ));
    }
    if actor.role == Role::Customer && actor.id != ctx.customer_id {
        return Err(Rejection::new(
            RejectCode::NotOwner,
            "customers may act only on their own orders",
        ));
    }
    if let Some(expected) = req.expected_version {
        if expected != ctx.version {
            return Err(Rejection::new(
                RejectCode::VersionConflict,
                format!(
                    "expected version {expected}, order is at version {}",
                    ctx.version
                ),
            ));
        }
    }
    if !t.from.contains(&ctx.status) {
        return Err(Rejection::new(
            RejectCode::InvalidTransition,
            format!("cannot {} an order that is `{}`", action, ctx.status),
        ));
    }
    if actor.role == Role::Customer && !t.customer_from.contains(&ctx.status) {
        return Err(Rejection::new(
            RejectCode::NotOwner,
            format!(
                "customers may {} their orders only while {}",
                action,
                list(t.customer_from)
            ),
        ));
    }
    for guard in t.guards {
        guard.check(ctx, req)?;
    }

    let mut payment_status = ctx.payment_status;
    let mut stock = StockEffect::None;
    for effect in t.effects {
        match effect {
            Effect::SetPaymentPaid => payment_status = PaymentStatus::Paid,
            Effect::SetPaymentRefunded => payment_status = PaymentStatus::Refunded,
            Effect::ReserveStock => stock = StockEffect::Reserve,
            Effect::ReleaseStock if holds_reservation(ctx.status) => stock = StockEffect::Release,
            Effect::ConsumeStock if holds_reservation(ctx.status) => stock = StockEffect::Consume,
            Effect::ReleaseStock | Effect::ConsumeStock => {}
        }
    }
    Ok(Decision {
        action,
        from: ctx.status,
        to: t.to.unwrap_or(ctx.status),
        payment_status,
        stock,
    })
}

/// The action that moves an order from `from` to `to` (for `{"to": status}` requests).
pub fn action_for_target(from: OrderStatus, to: OrderStatus) -> Result<Action, Rejection> {
    TRANSITIONS
        .iter()
        .find(|t| t.to == Some(to) && t.from.contains(&from))
        .map(|t| t.action)
        .ok_or_else(|| {
            Rejection::new(
                RejectCode::InvalidTransition,
                format!("no action leads from `{from}` to `{to}`"),
            )
        })
}

/// One line of `valid-actions`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct ActionAvailability {
    pub action: Action,
    pub to: OrderStatus,
    pub allowed: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub blocked_by: Option<RejectCode>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    /// Request fields the action needs (e.g. `tracking_number`); not a blocker.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub requires: Vec<&'static str>,
}

/// Every action in table order, judged for `actor` on this order as it is now. Request
/// fields are assumed present (they are listed under `requires`), so a blocker is always
/// something about the order or the caller.
pub fn valid_actions(ctx: &OrderContext<'_>, actor: &Actor) -> Vec<ActionAvailability> {
    let assume = ChangeRequest {
        expected_version: None,
        tracking_number: Some("assumed"),
    };
    TRANSITIONS
        .iter()
        .map(|t| {
            let requires = t
                .guards
                .iter()
                .filter(|g| **g == Guard::TrackingNumber)
                .map(|_| "tracking_number")
                .collect();
            match decide(ctx, actor, t.action, &assume) {
                Ok(d) => ActionAvailability {
                    action: t.action,
                    to: d.to,
                    allowed: true,
                    blocked_by: None,
                    message: None,
                    requires,
                },
                Err(r) => ActionAvailability {
                    action: t.action,
                    to: t.to.unwrap_or(ctx.status),
                    allowed: false,
                    blocked_by: Some(r.code),
                    message: Some(r.message),
                    requires,
                },
            }
        })
        .collect()
}

fn list(statuses: &[OrderStatus]) -> String {
    statuses
        .iter()
        .map(|s| s.as_str())
        .collect::<Vec<_>>()
        .join(" or ")
}

/// The table as a Mermaid `stateDiagram-v2`, for the documentation endpoint.
pub fn mermaid() -> String {
    let mut out = String::from("stateDiagram-v2\n    [*] --> pending\n");
    for t in TRANSITIONS {
        for from in t.from {
            let to = t.to.unwrap_or(*from);
            let roles = t
                .roles
                .iter()
                .map(|r| r.as_str())
                .collect::<Vec<_>>()
                .join(", ");
            out.push_str(&format!("    {from} --> {to}: {} ({roles})\n", t.action));
        }
    }
    // Terminal statuses: no action leads anywhere else from them.
    let terminal = OrderStatus::ALL.into_iter().filter(|s| {
        !TRANSITIONS
            .iter()
            .any(|t| t.from.contains(s) && t.to.is_some_and(|to| to != *s))
    });
    for s in terminal {
        out.push_str(&format!("    {s} --> [*]\n"));
    }
    out
}

#[cfg(test)]
mod tests;
