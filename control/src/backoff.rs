//! Waiting before trying again: exponential backoff with jitter, never shorter than what the
//! other side asked for. The job runner waits this long between a job's attempts; the provider
//! HTTP client between the attempts of one call.

use std::time::Duration;

/// A uniform draw from `[0, 1)`.
pub fn jitter() -> f64 {
    let mut bytes = [0_u8; 8];
    if getrandom::fill(&mut bytes).is_err() {
        return 0.5;
    }
    // 53 random bits make every f64 in [0, 1) that steps of 2^-53 can.
    #[allow(clippy::cast_precision_loss)]
    let draw = (u64::from_le_bytes(bytes) >> 11) as f64 / (1_u64 << 53) as f64;
    draw
}

/// The wait before attempt `attempts + 1`: the backoff ceiling `base * 2^(attempts-1)`,
/// capped at `cap`, of which a random half is drawn (`jitter` in `[0, 1)`) so that jobs failing
/// together do not retry together, and never less than what the provider asked for.
pub fn retry_delay(
    base: Duration,
    cap: Duration,
    attempts: i64,
    retry_after: Option<Duration>,
    jitter: f64,
) -> Duration {
    let exponent = u32::try_from(attempts.saturating_sub(1).max(0))
        .unwrap_or(u32::MAX)
        .min(20);
    let ceiling = base.saturating_mul(1 << exponent).min(cap);
    let drawn = ceiling / 2 + ceiling.mul_f64(jitter.clamp(0.0, 1.0) / 2.0);
    drawn.max(retry_after.unwrap_or_default())
}

#[cfg(test)]
mod tests {
    use super::*;

    const BASE: Duration = Duration::from_secs(2);
    const CAP: Duration = Duration::from_mins(5);

    #[test]
    fn the_ceiling_doubles_per_attempt_up_to_the_cap() {
        let top = |attempts| retry_delay(BASE, CAP, attempts, None, 0.999_999);
        let bottom = |attempts| retry_delay(BASE, CAP, attempts, None, 0.0);
        assert_eq!(bottom(1), Duration::from_secs(1));
        assert!(top(1) <= BASE && top(1) > Duration::from_millis(1_999));
        assert_eq!(bottom(2), BASE);
        assert_eq!(bottom(4), Duration::from_secs(8));
        assert_eq!(bottom(30), CAP / 2, "capped, however many attempts");
        assert!(top(30) <= CAP);
        assert_eq!(
            bottom(0),
            Duration::from_secs(1),
            "a first attempt waits the base"
        );
    }

    #[test]
    fn jitter_spreads_retries_and_stays_in_range() {
        let draws: Vec<Duration> = (0..64)
            .map(|_| retry_delay(BASE, CAP, 3, None, jitter()))
            .collect();
        assert!(draws.iter().all(|d| *d >= BASE * 2 && *d <= BASE * 4));
        let distinct: std::collections::BTreeSet<_> = draws.iter().collect();
        assert!(distinct.len() > 8, "jitter draws differ: {distinct:?}");
    }

    #[test]
    fn the_providers_retry_after_is_honoured() {
        let asked = Duration::from_secs(90);
        assert_eq!(retry_delay(BASE, CAP, 1, Some(asked), 0.3), asked);
        // A shorter ask does not make the backoff shorter.
        assert_eq!(
            retry_delay(BASE, CAP, 4, Some(Duration::from_secs(1)), 0.0),
            Duration::from_secs(8)
        );
    }
}
