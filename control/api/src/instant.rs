//! Instants and UTC days as they travel on the wire.
//!
//! The ledger stores instants as integer milliseconds since the Unix epoch; on the wire they are
//! RFC 3339 strings in UTC with exactly three fractional digits, so a dashboard can sort them as
//! text. Days are `YYYY-MM-DD` (UTC). Never floats, never local time.

use std::fmt;

use serde::{Deserialize, Deserializer, Serialize, Serializer, de};
use time::format_description::well_known::Rfc3339;
use time::macros::format_description;
use time::{Date, OffsetDateTime};

const MILLIS_PER_DAY: i64 = 86_400_000;

/// The first instant of year 0000 (UTC), in milliseconds since the Unix epoch: the earliest
/// instant the API takes or shows.
pub const MIN_MILLIS: i64 = -62_167_219_200_000;
/// The last millisecond of year 9999 (UTC): the latest instant the API takes or shows. Four-digit
/// years are what RFC 3339 and `YYYY-MM-DD` can write, and what every client can parse.
pub const MAX_MILLIS: i64 = 253_402_300_799_999;

/// An instant in milliseconds since the Unix epoch, UTC.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Timestamp(i64);

/// Why a string is not an instant or a day.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ParseInstantError(String);

impl fmt::Display for ParseInstantError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for ParseInstantError {}

impl Timestamp {
    pub const fn from_millis(ms: i64) -> Self {
        Self(ms)
    }

    pub const fn as_millis(self) -> i64 {
        self.0
    }

    /// Parses an RFC 3339 instant with any offset; sub-millisecond digits are truncated. The
    /// instant, in UTC, must fall in the years 0000 to 9999 (an offset can move a written
    /// `9999-12-31T23:30:00-01:00` past them).
    pub fn parse(text: &str) -> Result<Self, ParseInstantError> {
        let parsed = OffsetDateTime::parse(text, &Rfc3339).map_err(|_| {
            ParseInstantError(format!(
                "`{text}` is not an RFC 3339 instant such as 2026-11-23T08:00:00Z"
            ))
        })?;
        let ms = parsed.unix_timestamp_nanos().div_euclid(1_000_000);
        i64::try_from(ms)
            .ok()
            .filter(|ms| (MIN_MILLIS..=MAX_MILLIS).contains(ms))
            .map(Self)
            .ok_or_else(|| {
                ParseInstantError(format!("`{text}` is outside the years 0000 to 9999 (UTC)"))
            })
    }

    /// The UTC day this instant falls in.
    pub fn day(self) -> Day {
        Day::from_epoch_days(self.0.div_euclid(MILLIS_PER_DAY))
    }

    fn to_datetime(self) -> Option<OffsetDateTime> {
        OffsetDateTime::from_unix_timestamp_nanos(i128::from(self.0) * 1_000_000).ok()
    }
}

impl fmt::Display for Timestamp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let format = format_description!(
            "[year]-[month]-[day]T[hour]:[minute]:[second].[subsecond digits:3]Z"
        );
        match self.to_datetime().and_then(|dt| dt.format(&format).ok()) {
            Some(text) => f.write_str(&text),
            // Only reachable for instants beyond year 9999, which the ledger never records.
            None => write!(f, "@{}ms", self.0),
        }
    }
}

impl Serialize for Timestamp {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Timestamp {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        Self::parse(&text).map_err(de::Error::custom)
    }
}

/// A UTC calendar day.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Day(Date);

impl Day {
    /// The day `days` after 1970-01-01 (negative: before).
    pub fn from_epoch_days(days: i64) -> Self {
        let start = OffsetDateTime::UNIX_EPOCH.date();
        let date = i32::try_from(days)
            .ok()
            .and_then(|d| start.checked_add(time::Duration::days(i64::from(d))))
            .unwrap_or(if days < 0 { Date::MIN } else { Date::MAX });
        Self(date)
    }

    /// Days since 1970-01-01.
    pub fn epoch_days(self) -> i64 {
        i64::from(self.0.to_julian_day() - OffsetDateTime::UNIX_EPOCH.date().to_julian_day())
    }

    /// The first instant of the day.
    pub fn start(self) -> Timestamp {
        Timestamp(self.epoch_days() * MILLIS_PER_DAY)
    }

    /// The first instant of the next day.
    pub fn end(self) -> Timestamp {
        Timestamp((self.epoch_days() + 1) * MILLIS_PER_DAY)
    }

    #[must_use]
    pub fn next(self) -> Self {
        Self::from_epoch_days(self.epoch_days() + 1)
    }

    /// Parses `YYYY-MM-DD`: a four-digit year (0000 to 9999, no sign), a month and a day.
    pub fn parse(text: &str) -> Result<Self, ParseInstantError> {
        let format = format_description!("[year]-[month]-[day]");
        let shaped = text.len() == 10
            && text.bytes().enumerate().all(|(index, byte)| match index {
                4 | 7 => byte == b'-',
                _ => byte.is_ascii_digit(),
            });
        shaped
            .then(|| Date::parse(text, &format).ok())
            .flatten()
            .map(Self)
            .ok_or_else(|| {
                ParseInstantError(format!(
                    "`{text}` is not a day such as 2026-11-23 (YYYY-MM-DD, years 0000 to 9999)"
                ))
            })
    }
}

impl fmt::Display for Day {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (y, m, d) = (self.0.year(), u8::from(self.0.month()), self.0.day());
        write!(f, "{y:04}-{m:02}-{d:02}")
    }
}

impl Serialize for Day {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Day {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        Self::parse(&text).map_err(de::Error::custom)
    }
}

impl From<Day> for Date {
    fn from(day: Day) -> Self {
        day.0
    }
}

#[cfg(feature = "openapi")]
mod schema {
    use utoipa::openapi::schema::{KnownFormat, ObjectBuilder, SchemaFormat, Type};
    use utoipa::openapi::{RefOr, Schema};

    impl utoipa::PartialSchema for super::Timestamp {
        fn schema() -> RefOr<Schema> {
            ObjectBuilder::new()
                .schema_type(Type::String)
                .format(Some(SchemaFormat::KnownFormat(KnownFormat::DateTime)))
                .description(Some(
                    "RFC 3339 instant: answers are in UTC with millisecond precision; requests \
                     may carry any offset. The instant, in UTC, falls in the years 0000 to 9999.",
                ))
                .examples([serde_json::json!("2026-11-23T08:00:00.000Z")])
                .into()
        }
    }
    impl utoipa::ToSchema for super::Timestamp {}

    impl utoipa::PartialSchema for super::Day {
        fn schema() -> RefOr<Schema> {
            ObjectBuilder::new()
                .schema_type(Type::String)
                .format(Some(SchemaFormat::KnownFormat(KnownFormat::Date)))
                .description(Some(
                    "UTC calendar day, YYYY-MM-DD, a year from 0000 to 9999",
                ))
                .pattern(Some(r"^[0-9]{4}-[0-9]{2}-[0-9]{2}$"))
                .examples([serde_json::json!("2026-11-23")])
                .into()
        }
    }
    impl utoipa::ToSchema for super::Day {}
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamps_print_utc_with_milliseconds_and_parse_any_offset() {
        let t = Timestamp::parse("2026-11-23T09:30:00.5+01:00").unwrap();
        assert_eq!(t.to_string(), "2026-11-23T08:30:00.500Z");
        assert_eq!(Timestamp::parse(&t.to_string()).unwrap(), t);
        assert!(Timestamp::parse("2026-11-23 08:30").is_err());
    }

    #[test]
    fn days_are_utc_and_bound_their_instants() {
        let t = Timestamp::parse("2026-11-23T23:59:59.999Z").unwrap();
        let day = t.day();
        assert_eq!(day.to_string(), "2026-11-23");
        assert!(day.start() <= t && t < day.end());
        assert_eq!(day.next().start(), day.end());
        assert_eq!(Day::parse("2026-11-23").unwrap(), day);
        assert_eq!(Timestamp::from_millis(-1).day().to_string(), "1969-12-31");
        assert!(Day::parse("2026-13-01").is_err());
    }

    #[test]
    fn years_stay_within_0000_and_9999() {
        for good in [
            "0000-01-01T00:00:00Z",
            "9999-12-31T23:59:59.999Z",
            "9999-12-31T23:59:59.999+01:00",
        ] {
            let t = Timestamp::parse(good).unwrap();
            assert_eq!(Timestamp::parse(&t.to_string()).unwrap(), t, "{good}");
        }
        assert_eq!(
            Timestamp::from_millis(MIN_MILLIS).to_string(),
            "0000-01-01T00:00:00.000Z"
        );
        assert_eq!(
            Timestamp::from_millis(MAX_MILLIS).to_string(),
            "9999-12-31T23:59:59.999Z"
        );
        for bad in [
            "0000-01-01T00:00:00+00:01",
            "9999-12-31T23:59:59-00:01",
            "+10000-01-01T00:00:00Z",
            "-0001-01-01T00:00:00Z",
            "10000-01-01T00:00:00Z",
        ] {
            assert!(Timestamp::parse(bad).is_err(), "{bad}");
        }
        for good in ["0000-01-01", "9999-12-31"] {
            assert_eq!(Day::parse(good).unwrap().to_string(), good);
        }
        for bad in [
            "-0001-01-01",
            "+2026-01-01",
            "10000-01-01",
            "+10000-01-01",
            "2026-1-01",
            "２０２６-01-01",
        ] {
            assert!(Day::parse(bad).is_err(), "{bad}");
        }
    }
}
