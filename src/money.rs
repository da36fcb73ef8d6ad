//! Money: credits are `rust_decimal::Decimal` with two decimal places at the
//! edges and integer minor units (hundredths) in Redis and Lua.
//!
//! JSON carries credits as numbers with their exact decimal text (`12.50`),
//! written and read through `RawValue`, so no amount ever passes through a float.

use rust_decimal::Decimal;
use serde::{Deserialize, Deserializer, Serializer};
use serde_json::value::RawValue;

use crate::error::{Error, Result};

/// Decimal places of a credit amount; minor units are 10^-SCALE credits.
pub const SCALE: u32 = 2;
/// Largest balance a tenant may hold, in minor units (10^13 credits): far
/// inside the range where Lua's doubles count integers exactly.
pub const MAX_MINOR: i64 = 1_000_000_000_000_000;

/// Converts credits to minor units, refusing more than two decimals,
/// negative amounts and amounts beyond [`MAX_MINOR`].
pub fn to_minor(field: &str, credits: impl Into<Decimal>) -> Result<i64> {
    let credits: Decimal = credits.into();
    if credits.is_sign_negative() && !credits.is_zero() {
        return Err(Error::invalid(field, "must not be negative"));
    }
    let normalized = credits.normalize();
    if normalized.scale() > SCALE {
        return Err(Error::invalid(
            field,
            format!("at most {SCALE} decimal places ({credits} given)"),
        ));
    }
    let minor = normalized
        .checked_mul(Decimal::from(10i64.pow(SCALE)))
        .ok_or_else(|| Error::invalid(field, "too large"))?;
    let minor: i64 = minor
        .trunc()
        .try_into()
        .map_err(|_| Error::invalid(field, "too large"))?;
    if minor > MAX_MINOR {
        return Err(Error::invalid(field, "too large"));
    }
    Ok(minor)
}

/// Parses an amount exactly as documented (`^-?[0-9]{1,14}(\.[0-9]{1,2})?$`,
/// the API's pattern; a leading `-` parses, for `to_minor` to refuse as
/// negative): nothing is rounded, and no `+`, `_`, exponent or space.
pub fn parse_credits(text: &str) -> std::result::Result<Decimal, String> {
    const EXPECTED: &str =
        "expected an amount of credits: up to 14 digits and at most two decimals, e.g. 12.50";
    let digits = text.strip_prefix('-').unwrap_or(text);
    let (whole, fraction) = match digits.split_once('.') {
        Some((w, f)) => (w, Some(f)),
        None => (digits, None),
    };
    let all_digits = |s: &str| s.bytes().all(|b| b.is_ascii_digit());
    // 14 digits hold the largest balance (MAX_MINOR); `to_minor` refuses more.
    let well_formed = (1..=14).contains(&whole.len())
        && all_digits(whole)
        && fraction.is_none_or(|f| (1..=SCALE as usize).contains(&f.len()) && all_digits(f));
    if !well_formed {
        let shown: String = text.chars().take(48).collect();
        return Err(format!("{EXPECTED}, got {shown:?}"));
    }
    let mut minor: i64 = 0;
    let fraction = fraction.unwrap_or("");
    for b in whole.bytes().chain(
        fraction
            .bytes()
            .chain(std::iter::repeat(b'0'))
            .take(SCALE as usize),
    ) {
        // At most 15 digits: cannot overflow i64.
        minor = minor * 10 + i64::from(b - b'0');
    }
    Ok(Decimal::new(
        if text.starts_with('-') { -minor } else { minor },
        SCALE,
    ))
}

/// Converts minor units back to credits with two decimal places.
pub fn from_minor(minor: i64) -> Decimal {
    Decimal::new(minor, SCALE)
}

/// An amount of credits: exact (a `Decimal`), written to JSON as a number
/// with two decimals (`12.50`), read from a number or a string by
/// [`parse_credits`] (nothing rounded), documented in OpenAPI as such. Every
/// amount the API or a report shows is one, so none needs a serde attribute.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Credits(Decimal);

impl Credits {
    pub const ZERO: Credits = Credits(Decimal::ZERO);

    pub const fn new(amount: Decimal) -> Self {
        Credits(amount)
    }

    /// Minor units (hundredths) as credits.
    pub fn from_minor(minor: i64) -> Self {
        Credits(from_minor(minor))
    }

    pub fn decimal(self) -> Decimal {
        self.0
    }

    /// The amount in minor units, refused (naming `field`) when it is
    /// negative, has more than two decimals or passes [`MAX_MINOR`].
    pub fn to_minor(self, field: &str) -> Result<i64> {
        to_minor(field, self.0)
    }
}

impl From<Decimal> for Credits {
    fn from(amount: Decimal) -> Self {
        Credits(amount)
    }
}

impl From<Credits> for Decimal {
    fn from(c: Credits) -> Self {
        c.0
    }
}

impl PartialEq<Decimal> for Credits {
    fn eq(&self, other: &Decimal) -> bool {
        self.0 == *other
    }
}

impl PartialEq<Credits> for Decimal {
    fn eq(&self, other: &Credits) -> bool {
        *self == other.0
    }
}

impl PartialOrd<Decimal> for Credits {
    fn partial_cmp(&self, other: &Decimal) -> Option<std::cmp::Ordering> {
        self.0.partial_cmp(other)
    }
}

/// A fixed amount plus credits (e.g. an overhead and a price × count).
impl std::ops::Add<Credits> for Decimal {
    type Output = Credits;
    fn add(self, rhs: Credits) -> Credits {
        Credits(self + rhs.0)
    }
}

impl std::fmt::Display for Credits {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        std::fmt::Display::fmt(&self.0, f)
    }
}

impl std::ops::Add for Credits {
    type Output = Credits;
    fn add(self, rhs: Credits) -> Credits {
        Credits(self.0 + rhs.0)
    }
}

impl std::ops::Sub for Credits {
    type Output = Credits;
    fn sub(self, rhs: Credits) -> Credits {
        Credits(self.0 - rhs.0)
    }
}

impl std::ops::AddAssign for Credits {
    fn add_assign(&mut self, rhs: Credits) {
        self.0 += rhs.0;
    }
}

impl std::ops::SubAssign for Credits {
    fn sub_assign(&mut self, rhs: Credits) {
        self.0 -= rhs.0;
    }
}

/// A price times a count.
impl std::ops::Mul<Decimal> for Credits {
    type Output = Credits;
    fn mul(self, rhs: Decimal) -> Credits {
        Credits(self.0 * rhs)
    }
}

impl std::iter::Sum for Credits {
    fn sum<I: Iterator<Item = Credits>>(iter: I) -> Credits {
        Credits(iter.map(|c| c.0).sum())
    }
}

impl serde::Serialize for Credits {
    fn serialize<S: Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        json::serialize(&self.0, s)
    }
}

impl<'de> Deserialize<'de> for Credits {
    fn deserialize<D: Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        json::deserialize(d).map(Credits)
    }
}

impl schemars::JsonSchema for Credits {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        "Credits".into()
    }

    // Written where it is used, as the document always had it.
    fn inline_schema() -> bool {
        true
    }

    fn json_schema(generator: &mut schemars::SchemaGenerator) -> schemars::Schema {
        json::schema(generator)
    }
}

/// Serde and schema of [`Credits`] in JSON.
mod json {
    use super::*;

    pub fn serialize<S: Serializer>(value: &Decimal, s: S) -> Result<S::Ok, S::Error> {
        let mut v = *value;
        if v.scale() < SCALE {
            v.rescale(SCALE);
        }
        let raw = RawValue::from_string(v.to_string()).map_err(serde::ser::Error::custom)?;
        serde::Serialize::serialize(&raw, s)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Decimal, D::Error> {
        let raw = Box::<RawValue>::deserialize(d)?;
        parse(raw.get()).map_err(serde::de::Error::custom)
    }

    /// The schema of an amount in API documents: a number with at most two
    /// decimals, or the same as a string.
    pub fn schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
        schemars::json_schema!({
            "description": "Credits: at most two decimals, as a number or a string.",
            "anyOf": [
                { "type": "number", "minimum": 0 },
                { "type": "string", "pattern": "^[0-9]{1,14}(\\.[0-9]{1,2})?$" },
            ],
        })
    }

    /// Accepts a JSON number or a JSON string holding an amount
    /// ([`parse_credits`]: exact, never rounded).
    pub(crate) fn parse(text: &str) -> std::result::Result<Decimal, String> {
        let text = text.trim();
        let inner = text
            .strip_prefix('"')
            .and_then(|t| t.strip_suffix('"'))
            .unwrap_or(text);
        parse_credits(inner)
    }
}

/// Serializes any decimal as a JSON number with its exact digits (for
/// aggregates, which are not credits and keep their own scale).
pub mod exact {
    use super::*;

    pub fn serialize<S: Serializer>(value: &Decimal, s: S) -> Result<S::Ok, S::Error> {
        let raw = RawValue::from_string(value.normalize().to_string())
            .map_err(serde::ser::Error::custom)?;
        serde::Serialize::serialize(&raw, s)
    }
}

/// Like [`exact`], for `Option<Decimal>`.
pub mod exact_opt {
    use super::*;

    pub fn serialize<S: Serializer>(value: &Option<Decimal>, s: S) -> Result<S::Ok, S::Error> {
        match value {
            Some(v) => exact::serialize(v, s),
            None => s.serialize_none(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::str::FromStr;

    #[derive(serde::Serialize, serde::Deserialize)]
    struct Amount {
        #[serde(with = "json")]
        value: Decimal,
    }

    #[test]
    fn minor_units_are_exact() {
        assert_eq!(
            to_minor("a", Decimal::from_str("12.34").unwrap()).unwrap(),
            1234
        );
        assert_eq!(
            to_minor("a", Decimal::from_str("0.10").unwrap()).unwrap(),
            10
        );
        assert_eq!(to_minor("a", Decimal::from_str("7").unwrap()).unwrap(), 700);
        assert_eq!(from_minor(1234).to_string(), "12.34");
        assert!(to_minor("a", Decimal::from_str("0.001").unwrap()).is_err());
        assert!(to_minor("a", Decimal::from_str("-1").unwrap()).is_err());
        assert!(to_minor("a", Decimal::from_str("1e20").unwrap_or(Decimal::MAX)).is_err());
    }

    #[test]
    fn amounts_parse_exactly_as_documented_or_not_at_all() {
        for (text, minor) in [
            ("0", 0),
            ("7", 700),
            ("12.5", 1250),
            ("12.50", 1250),
            ("0012.30", 1230),
            ("9999999999999.99", 999_999_999_999_999),
            ("10000000000000", MAX_MINOR),
        ] {
            let d = parse_credits(text).unwrap_or_else(|e| panic!("{text}: {e}"));
            assert_eq!(to_minor("a", d).unwrap(), minor, "{text}");
        }
        for text in [
            "",
            "+5",
            "1_0",
            " 5",
            "5 ",
            "1e2",
            "0x10",
            ".5",
            "5.",
            "1.2.3",
            "--1",
            "NaN",
            "1.000000000000000000000000000001",
            "0.00999999999999999999999999999999",
            "0.001",
            "12.500",
            "79228162514264337593543950335",
            "100000000000000",
            &"9".repeat(100),
        ] {
            assert!(parse_credits(text).is_err(), "{text:?} parsed");
        }
        // Negative parses, and `to_minor` refuses it.
        assert!(to_minor("a", parse_credits("-1").unwrap()).is_err());
        // The largest decimal does not panic on its way to minor units.
        assert!(to_minor("a", Decimal::MAX).is_err());
    }

    #[test]
    fn json_amounts_keep_their_digits() {
        let a: Amount = serde_json::from_str(r#"{"value": 0.1}"#).unwrap();
        assert_eq!(a.value, Decimal::from_str("0.1").unwrap());
        let a: Amount = serde_json::from_str(r#"{"value": "2.50"}"#).unwrap();
        assert_eq!(serde_json::to_string(&a).unwrap(), r#"{"value":2.50}"#);
        let whole = Amount {
            value: Decimal::from(100),
        };
        assert_eq!(
            serde_json::to_string(&whole).unwrap(),
            r#"{"value":100.00}"#
        );
        assert!(serde_json::from_str::<Amount>(r#"{"value": [1]}"#).is_err());
    }
}
