//! Where a job goes when it cannot be applied now: a delay queue for another attempt, or
//! the dead queue with its reason. The copy is confirmed by the broker before the
//! original is acked, so a job is never in neither place.

use super::delivery::{ATTEMPT_HEADER, JobDelivery, REASON_HEADER};
use crate::broker::Names;
use crate::broker::publisher::PublishError;
use lapin::message::Delivery;
use lapin::options::BasicPublishOptions;
use lapin::types::{AMQPValue, LongString};
use lapin::{BasicProperties, Channel, Confirmation};

/// Publish `body` to `queue` with the properties of `delivery` and updated headers, and
/// wait for the confirm.
async fn copy_to(
    channel: &Channel,
    queue: &str,
    delivery: &Delivery,
    body: &[u8],
    attempt: u32,
    reason: &str,
    expiration_ms: Option<u128>,
) -> Result<(), PublishError> {
    let mut headers = delivery.properties.headers().clone().unwrap_or_default();
    headers.insert(ATTEMPT_HEADER.into(), AMQPValue::LongInt(attempt as i32));
    let reason: String = reason.chars().take(1000).collect();
    headers.insert(
        REASON_HEADER.into(),
        AMQPValue::LongString(LongString::from(reason)),
    );
    let mut props: BasicProperties = delivery
        .properties
        .clone()
        .with_headers(headers)
        .with_delivery_mode(2);
    if let Some(ms) = expiration_ms {
        props = props.with_expiration(ms.to_string().into());
    }
    let confirm = channel
        .basic_publish(
            "".into(),
            queue.into(),
            BasicPublishOptions {
                mandatory: true,
                ..Default::default()
            },
            body,
            props,
        )
        .await?
        .await?;
    match confirm {
        Confirmation::Ack(None) => Ok(()),
        Confirmation::Ack(Some(_)) => Err(PublishError::Unroutable(queue.to_owned())),
        Confirmation::Nack(_) => Err(PublishError::Nacked),
        Confirmation::NotRequested => Err(PublishError::Unavailable(
            "control channel not in confirm mode".into(),
        )),
    }
}

/// Where a failed job went.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Disposition {
    /// Waiting in a delay queue for attempt `next_attempt`.
    Retrying { next_attempt: u32 },
    /// Parked in the dead queue.
    Dead,
}

/// Send a job that failed its attempt to its delay queue, or — out of attempts — to the
/// dead queue, alone (the other jobs of its message go their own way). Delays are
/// jittered (75–100% of the step) so that a burst of failures does not come back as a
/// burst.
pub async fn retry_or_park(
    channel: &Channel,
    names: &Names,
    job: &JobDelivery,
    reason: &str,
) -> Result<Disposition, PublishError> {
    let attempt = job.attempt;
    if attempt < names.retry.max_attempts {
        let step = names.retry.delay_after(attempt).as_millis();
        let jittered = step * 3 / 4 + (fastrand::u64(0..=(step as u64 / 4)) as u128);
        copy_to(
            channel,
            &names.jobs_retry(attempt),
            &job.delivery,
            &job.alone(),
            attempt + 1,
            reason,
            Some(jittered),
        )
        .await?;
        ::metrics::counter!(crate::metrics::JOBS_RETRIED).increment(1);
        Ok(Disposition::Retrying {
            next_attempt: attempt + 1,
        })
    } else {
        park(channel, names, job, reason).await?;
        Ok(Disposition::Dead)
    }
}

/// Park a job, alone, in the dead queue with its reason.
pub async fn park(
    channel: &Channel,
    names: &Names,
    job: &JobDelivery,
    reason: &str,
) -> Result<(), PublishError> {
    park_copy(
        channel,
        names,
        &job.delivery,
        &job.alone(),
        job.attempt,
        reason,
    )
    .await
}

/// Park a message that cannot be read as it is, with its reason.
pub async fn park_unreadable(
    channel: &Channel,
    names: &Names,
    delivery: &Delivery,
    reason: &str,
) -> Result<(), PublishError> {
    park_copy(channel, names, delivery, &delivery.data, 1, reason).await
}

async fn park_copy(
    channel: &Channel,
    names: &Names,
    delivery: &Delivery,
    body: &[u8],
    attempt: u32,
    reason: &str,
) -> Result<(), PublishError> {
    copy_to(
        channel,
        &names.jobs_dead,
        delivery,
        body,
        attempt,
        reason,
        None,
    )
    .await?;
    ::metrics::counter!(crate::metrics::JOBS_DEAD).increment(1);
    Ok(())
}
