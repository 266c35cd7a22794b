//! Parsing and formatting of Kubernetes resource quantities ("512Mi", "2Gi", "64").
//!
//! k8s-openapi's `Quantity` is only a string; capacity arithmetic needs numbers.

use k8s_openapi::apimachinery::pkg::api::resource::Quantity;

/// Why a quantity string was rejected.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum QuantityError {
    #[error("quantities must match the regular expression '^([+-]?[0-9.]+)([eEinumkKMGTP]*[-+]?[0-9]*)$'")]
    Syntax,
    #[error("quantity is negative")]
    Negative,
    #[error("quantity is too large")]
    Overflow,
}

const SUFFIXES: &[(&str, u128)] = &[
    ("Ki", 1 << 10),
    ("Mi", 1 << 20),
    ("Gi", 1 << 30),
    ("Ti", 1 << 40),
    ("Pi", 1 << 50),
    ("Ei", 1 << 60),
    ("k", 1_000),
    ("M", 1_000_000),
    ("G", 1_000_000_000),
    ("T", 1_000_000_000_000),
    ("P", 1_000_000_000_000_000),
    ("E", 1_000_000_000_000_000_000),
    ("", 1),
];

/// Parses a quantity into whole units (bytes for memory), rounding fractions up as Kubernetes does.
pub fn parse(q: &str) -> Result<u64, QuantityError> {
    let q = q.trim();
    if q.starts_with('-') {
        return Err(QuantityError::Negative);
    }
    let q = q.strip_prefix('+').unwrap_or(q);
    let split = q
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(q.len());
    let (number, suffix) = q.split_at(split);
    let multiplier = SUFFIXES
        .iter()
        .find(|(s, _)| *s == suffix)
        .map(|(_, m)| *m)
        .ok_or(QuantityError::Syntax)?;
    let (whole, frac) = number.split_once('.').unwrap_or((number, ""));
    if whole.is_empty() && frac.is_empty() {
        return Err(QuantityError::Syntax);
    }
    if !whole
        .chars()
        .chain(frac.chars())
        .all(|c| c.is_ascii_digit())
        || frac.len() > 18
    {
        return Err(QuantityError::Syntax);
    }
    let whole: u128 = if whole.is_empty() {
        0
    } else {
        whole.parse().map_err(|_| QuantityError::Overflow)?
    };
    let frac_scale = 10u128.pow(frac.len() as u32);
    let frac_num: u128 = if frac.is_empty() {
        0
    } else {
        frac.parse().map_err(|_| QuantityError::Syntax)?
    };
    let total = whole
        .checked_mul(multiplier)
        .and_then(|w| w.checked_add((frac_num * multiplier).div_ceil(frac_scale)))
        .ok_or(QuantityError::Overflow)?;
    u64::try_from(total).map_err(|_| QuantityError::Overflow)
}

/// Parses a `Quantity` (see [`parse`]).
pub fn parse_quantity(q: &Quantity) -> Result<u64, QuantityError> {
    parse(&q.0)
}

/// Formats a byte count with the largest binary suffix that represents it exactly.
pub fn format_bytes(bytes: u64) -> Quantity {
    const BINARY: &[(&str, u64)] = &[
        ("Ei", 1 << 60),
        ("Pi", 1 << 50),
        ("Ti", 1 << 40),
        ("Gi", 1 << 30),
        ("Mi", 1 << 20),
        ("Ki", 1 << 10),
    ];
    let text = BINARY
        .iter()
        .find(|(_, m)| bytes != 0 && bytes.is_multiple_of(*m))
        .map(|(s, m)| format!("{}{s}", bytes / m))
        .unwrap_or_else(|| bytes.to_string());
    Quantity(text)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_binary_decimal_and_fractional_quantities() {
        assert_eq!(parse("512Mi"), Ok(512 << 20));
        assert_eq!(parse("2Gi"), Ok(2 << 30));
        assert_eq!(parse("1G"), Ok(1_000_000_000));
        assert_eq!(parse("64"), Ok(64));
        assert_eq!(parse("1.5Gi"), Ok(3 << 29));
        assert_eq!(parse("0.1"), Ok(1));
    }

    #[test]
    fn rejects_garbage_and_negatives() {
        assert_eq!(parse("lots"), Err(QuantityError::Syntax));
        assert_eq!(parse("1Xi"), Err(QuantityError::Syntax));
        assert_eq!(parse(""), Err(QuantityError::Syntax));
        assert_eq!(parse("-1Gi"), Err(QuantityError::Negative));
        assert_eq!(parse("99999999Ei"), Err(QuantityError::Overflow));
    }

    #[test]
    fn formats_with_the_largest_exact_suffix() {
        assert_eq!(format_bytes(256 << 30).0, "256Gi");
        assert_eq!(format_bytes(1536 << 20).0, "1536Mi");
        assert_eq!(format_bytes(1000).0, "1000");
        assert_eq!(format_bytes(0).0, "0");
    }
}
