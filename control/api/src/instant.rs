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

    /// Parses an RFC 3339 instant with any offset; sub-millisecond digits are truncated.
    pub fn parse(text: &str) -> Result<Self, ParseInstantError> {
        let parsed = OffsetDateTime::parse(text, &Rfc3339).map_err(|_| {
            ParseInstantError(format!(
                "`{text}` is not an RFC 3339 instant such as 2026-11-23T08:00:00Z"
            ))
        })?;
        let ms = parsed.unix_timestamp_nanos().div_euclid(1_000_000);
        i64::try_from(ms)
            .map(Self)
            .map_err(|_| ParseInstantError(format!("`{text}` is out of range")))
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

    /// Parses `YYYY-MM-DD`.
    pub fn parse(text: &str) -> Result<Self, ParseInstantError> {
        let format = format_description!("[year]-[month]-[day]");
        Date::parse(text, &format)
            .map(Self)
            .map_err(|_| ParseInstantError(format!("`{text}` is not a day such as 2026-11-23")))
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
                .description(Some("RFC 3339 instant in UTC with millisecond precision"))
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
                .description(Some("UTC calendar day, YYYY-MM-DD"))
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
}
