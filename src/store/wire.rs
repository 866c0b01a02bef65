//! The domain's wire-named enums as Postgres `text` columns: each is stored as its one
//! wire name (the same as in JSON), read back through `FromStr`, and bindable as an array
//! (`text[]`) for set-wise statements. Kept here so `domain` stays free of sqlx.

use crate::domain::{
    Action, BulkMode, BulkStatus, ItemOutcome, JobKind, JobStatus, OrderStatus, PaymentStatus, Role,
};
use sqlx::encode::IsNull;
use sqlx::error::BoxDynError;
use sqlx::postgres::{PgArgumentBuffer, PgHasArrayType, PgTypeInfo, PgValueRef};
use sqlx::{Decode, Encode, Postgres, Type};

macro_rules! text_column {
    ($($ty:ty),+ $(,)?) => {$(
        impl Type<Postgres> for $ty {
            fn type_info() -> PgTypeInfo {
                <&str as Type<Postgres>>::type_info()
            }
            fn compatible(ty: &PgTypeInfo) -> bool {
                <&str as Type<Postgres>>::compatible(ty)
            }
        }

        impl PgHasArrayType for $ty {
            fn array_type_info() -> PgTypeInfo {
                <&str as PgHasArrayType>::array_type_info()
            }
        }

        impl Encode<'_, Postgres> for $ty {
            fn encode_by_ref(&self, buf: &mut PgArgumentBuffer) -> Result<IsNull, BoxDynError> {
                <&str as Encode<Postgres>>::encode(self.as_str(), buf)
            }
        }

        impl<'r> Decode<'r, Postgres> for $ty {
            fn decode(value: PgValueRef<'r>) -> Result<Self, BoxDynError> {
                Ok(<&str as Decode<Postgres>>::decode(value)?.parse()?)
            }
        }
    )+};
}

text_column!(
    Action,
    BulkMode,
    BulkStatus,
    ItemOutcome,
    JobKind,
    JobStatus,
    OrderStatus,
    PaymentStatus,
    Role,
);
