//! Who acts: the role decides which actions are possible at all, the id decides ownership.

use super::status::{UnknownName, wire_name};
use serde::{Deserialize, Serialize};
use std::fmt;
use std::str::FromStr;
use uuid::Uuid;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    /// A shopper: acts only on its own orders.
    Customer,
    /// The order desk: moves orders through fulfilment, may cancel.
    Support,
    /// Full rights, including payment and refunds.
    Admin,
    /// Internal services (payment provider callbacks, warehouse systems).
    System,
}

impl Role {
    pub const ALL: [Role; 4] = [Role::Customer, Role::Support, Role::Admin, Role::System];

    pub fn as_str(self) -> &'static str {
        match self {
            Role::Customer => "customer",
            Role::Support => "support",
            Role::Admin => "admin",
            Role::System => "system",
        }
    }

    /// Staff roles see every order; customers see only their own.
    pub fn sees_all_orders(self) -> bool {
        !matches!(self, Role::Customer)
    }
}

wire_name!(Role, "role");

/// The authenticated caller of a request, or the submitter of a job.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Actor {
    pub id: Uuid,
    pub role: Role,
}

impl Actor {
    /// May this actor read the order of `customer_id`?
    pub fn may_see(&self, customer_id: Uuid) -> bool {
        self.role.sees_all_orders() || self.id == customer_id
    }
}
