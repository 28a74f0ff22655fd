//! Hours and money of a closed shift, in exact decimals.
//!
//! `total_hours` is the duration in hours rounded half-up to 0.01; `total_payment` is that rounded
//! figure times the hourly rate, rounded half-up to 0.01 (what payroll shows is what is paid).
//! Everything is `rust_decimal` from microseconds: the Python job went through floats and paid
//! 0.50 where 0.505 should round to 0.51.
//!
//! The columns are NUMERIC(5,2) and NUMERIC(10,2): values that would not fit are reported as a
//! [`PayrollError`] before PostgreSQL sees them, so one odd row is flagged instead of failing a
//! batch.

use chrono::{DateTime, Utc};
use rust_decimal::{Decimal, RoundingStrategy};
use serde::Serialize;

/// The largest `shifts.total_hours` (NUMERIC(5,2)): about 41 days.
pub const MAX_TOTAL_HOURS: Decimal = Decimal::from_parts(99_999, 0, 0, false, 2);
/// The largest NUMERIC(10,2) amount.
pub const MAX_AMOUNT: Decimal = Decimal::from_parts(1_410_065_407, 2, 0, false, 2);

const MICROS_PER_HOUR: i64 = 3_600_000_000;

/// A shift's hours and pay.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Payroll {
    /// Hours, rounded half-up to 0.01.
    pub total_hours: Decimal,
    /// `total_hours x hourly_rate` rounded half-up to 0.01; `None` when there is no rate.
    pub total_payment: Option<Decimal>,
}

/// Why a shift's pay cannot be stored.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PayrollError {
    /// The end is before the start.
    #[error("end {end} is before start {start}")]
    NegativeDuration {
        /// Shift start.
        start: DateTime<Utc>,
        /// Shift end.
        end: DateTime<Utc>,
    },
    /// More hours than NUMERIC(5,2) holds.
    #[error("{0} hours do not fit total_hours NUMERIC(5,2) (max 999.99)")]
    HoursOverflow(Decimal),
    /// More money than NUMERIC(10,2) holds.
    #[error("payment {0} does not fit NUMERIC(10,2)")]
    PaymentOverflow(Decimal),
}

/// Rounds half-up (away from zero at .5) to cents.
pub fn round_cents(value: Decimal) -> Decimal {
    value.round_dp_with_strategy(2, RoundingStrategy::MidpointAwayFromZero)
}

/// Hours and pay for a shift from `start` to `end` at `hourly_rate`.
pub fn payroll(
    start: DateTime<Utc>,
    end: DateTime<Utc>,
    hourly_rate: Option<Decimal>,
) -> Result<Payroll, PayrollError> {
    let micros = (end - start)
        .num_microseconds()
        .ok_or(PayrollError::HoursOverflow(MAX_TOTAL_HOURS))?;
    if micros < 0 {
        return Err(PayrollError::NegativeDuration { start, end });
    }
    // micros / 3.6e9 has at most a few repeating digits; rust_decimal keeps 28 significant
    // digits, so the rounding to cents sees the exact midpoint when there is one.
    let hours = round_cents(Decimal::from(micros) / Decimal::from(MICROS_PER_HOUR));
    if hours > MAX_TOTAL_HOURS {
        return Err(PayrollError::HoursOverflow(hours));
    }
    let total_payment = match hourly_rate {
        None => None,
        Some(rate) => {
            let payment = hours
                .checked_mul(rate)
                .map(round_cents)
                .ok_or(PayrollError::PaymentOverflow(MAX_AMOUNT))?;
            if payment.abs() > MAX_AMOUNT {
                return Err(PayrollError::PaymentOverflow(payment));
            }
            Some(payment)
        }
    };
    Ok(Payroll {
        total_hours: hours,
        total_payment,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::str::FromStr;

    fn d(s: &str) -> Decimal {
        Decimal::from_str(s).expect("test decimal")
    }

    fn at(s: &str) -> DateTime<Utc> {
        s.parse().expect("test timestamp")
    }

    #[test]
    fn constants_are_the_column_maxima() {
        assert_eq!(MAX_TOTAL_HOURS, d("999.99"));
        assert_eq!(MAX_AMOUNT, d("99999999.99"));
    }

    #[test]
    fn rounds_half_up_exactly() {
        // 1 h 0 min 18 s = 1.005 h -> 1.01; 1.01 x 0.50 = 0.505 -> 0.51 (floats give 0.50).
        let p = payroll(
            at("2026-01-01T08:00:00Z"),
            at("2026-01-01T09:00:18Z"),
            Some(d("0.50")),
        )
        .expect("fits");
        assert_eq!(p.total_hours, d("1.01"));
        assert_eq!(p.total_payment, Some(d("0.51")));
        // 20 minutes = 0.3333... -> 0.33
        let p =
            payroll(at("2026-01-01T08:00:00Z"), at("2026-01-01T08:20:00Z"), None).expect("fits");
        assert_eq!(p.total_hours, d("0.33"));
        assert_eq!(p.total_payment, None);
    }

    #[test]
    fn overflow_and_negative_are_errors() {
        let start = at("2026-01-01T00:00:00Z");
        assert!(matches!(
            payroll(start, at("2026-02-12T00:00:00Z"), Some(d("100"))),
            Err(PayrollError::HoursOverflow(_))
        ));
        assert!(matches!(
            payroll(start, at("2025-12-31T00:00:00Z"), None),
            Err(PayrollError::NegativeDuration { .. })
        ));
        assert!(matches!(
            payroll(start, at("2026-01-02T00:00:00Z"), Some(d("99999999.99"))),
            Err(PayrollError::PaymentOverflow(_))
        ));
        assert_eq!(
            payroll(start, at("2026-01-31T00:00:00Z"), None).map(|p| p.total_hours),
            Ok(d("720.00"))
        );
    }
}
