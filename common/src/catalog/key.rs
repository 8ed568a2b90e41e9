//! The object key layout of `nsf-ncar-era5`, parsed and generated:
//!
//! ```text
//! {product}/{YYYYMM}/{product}.{code}_{short}.{grid}.{YYYYMMDDHH}_{YYYYMMDDHH}.nc
//! ```
//!
//! `code` is the GRIB table and parameter (`128_167`) in this bucket; NCAR's other ERA5
//! datasets use GRIB2-style codes (`0_5_0_0_0`), so any `\d+(_\d+)+` parses: a key of the layout
//! never vanishes because its code has another shape. Whether a key is in the variable table is
//! a separate question ([`super::lookup`]).

use std::fmt;

use super::Product;
use crate::dates::{HourStamp, YearMonth};

/// A parsed ERA5 object key.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct ObjectKey {
    /// The product folder and file prefix.
    pub product: Product,
    /// The month folder the object sits under (the month of `first`).
    pub month: YearMonth,
    /// Parameter code: digit groups joined by `_` (`128_167`, `0_5_0_0_0`).
    pub code: String,
    /// Variable short name.
    pub short: String,
    /// Grid token.
    pub grid: String,
    /// First hour covered.
    pub first: HourStamp,
    /// Last hour covered (inclusive).
    pub last: HourStamp,
}

impl ObjectKey {
    /// Parses a key of the bucket layout. Anything else (`index.html`, folder markers, stray
    /// files, keys that try to climb out of their folder) gives `None`.
    pub fn parse(key: &str) -> Option<Self> {
        let mut segments = key.split('/');
        let (product_dir, month_dir, file) = (segments.next()?, segments.next()?, segments.next()?);
        if segments.next().is_some() {
            return None;
        }
        let product = Product::ALL.into_iter().find(|p| p.name() == product_dir)?;
        let month = YearMonth::parse_compact(month_dir)?;
        let rest = file
            .strip_prefix(product.name())?
            .strip_prefix('.')?
            .strip_suffix(".nc")?;
        // rest = CODE_short.grid.START_END
        let mut fields = rest.rsplitn(3, '.');
        let (window, grid, head) = (fields.next()?, fields.next()?, fields.next()?);
        let (first, last) = window.split_once('_')?;
        let (first, last) = (
            HourStamp::parse_compact(first)?,
            HourStamp::parse_compact(last)?,
        );
        let (code, short) = split_code(head)?;
        let is_token =
            |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_');
        if !is_token(short) || !is_token(grid) {
            return None;
        }
        if last < first || YearMonth::of(first.date) != month {
            return None;
        }
        Some(Self {
            product,
            month,
            code: code.to_string(),
            short: short.to_string(),
            grid: grid.to_string(),
            first,
            last,
        })
    }
}

/// Splits `128_167_2t` into (`128_167`, `2t`) and `0_5_0_0_0_t` into (`0_5_0_0_0`, `t`): the code
/// is the longest run of all-digit groups (at least two), the short name is the rest. A short
/// name may start with digits (`2t`, `100u`) but is never all digits.
fn split_code(head: &str) -> Option<(&str, &str)> {
    let mut code_end = 0;
    let mut groups = 0;
    for group in head.split('_') {
        if group.is_empty() || !group.bytes().all(|b| b.is_ascii_digit()) {
            break;
        }
        code_end += group.len() + usize::from(groups > 0);
        groups += 1;
    }
    if groups < 2 || code_end + 1 >= head.len() {
        return None;
    }
    Some((&head[..code_end], &head[code_end + 1..]))
}

impl fmt::Display for ObjectKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let product = self.product.name();
        write!(
            f,
            "{product}/{}/{product}.{}_{}.{}.{}_{}.nc",
            self.month.compact(),
            self.code,
            self.short,
            self.grid,
            self.first.compact(),
            self.last.compact()
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn documented_example_keys_parse_and_round_trip() {
        for key in [
            "e5.oper.an.pl/202201/e5.oper.an.pl.128_131_u.ll025uv.2022010100_2022010123.nc",
            "e5.oper.an.sfc/202201/e5.oper.an.sfc.128_167_2t.ll025sc.2022010100_2022013123.nc",
            "e5.oper.an.vinteg/201012/e5.oper.an.vinteg.162_071_viwve.ll025sc.2010120100_2010123123.nc",
            "e5.oper.fc.sfc.accumu/202501/e5.oper.fc.sfc.accumu.128_143_cp.ll025sc.2025010106_2025011606.nc",
            "e5.oper.invariant/197901/e5.oper.invariant.128_172_lsm.ll025sc.1979010100_1979010100.nc",
        ] {
            let parsed = ObjectKey::parse(key).unwrap_or_else(|| panic!("{key} should parse"));
            assert_eq!(parsed.to_string(), key);
        }
    }

    #[test]
    fn codes_of_another_shape_parse_instead_of_vanishing() {
        let key =
            "e5.oper.an.sfc/202201/e5.oper.an.sfc.0_5_0_0_0_t.regn320sc.2022010100_2022013123.nc";
        let parsed = ObjectKey::parse(key).expect("a GRIB2-style code parses");
        assert_eq!(
            (parsed.code.as_str(), parsed.short.as_str()),
            ("0_5_0_0_0", "t")
        );
        assert_eq!(parsed.grid, "regn320sc");
        assert_eq!(parsed.to_string(), key);
        let parsed = ObjectKey::parse(
            "e5.oper.an.sfc/202201/e5.oper.an.sfc.228_246_100u.ll025sc.2022010100_2022013123.nc",
        )
        .unwrap();
        assert_eq!(
            (parsed.code.as_str(), parsed.short.as_str()),
            ("228_246", "100u")
        );
        let parsed = ObjectKey::parse(
            "e5.oper.an.sfc/202201/e5.oper.an.sfc.1_2_3_x_y.ll025sc.2022010100_2022013123.nc",
        )
        .unwrap();
        assert_eq!(
            (parsed.code.as_str(), parsed.short.as_str()),
            ("1_2_3", "x_y")
        );
    }

    #[test]
    fn junk_keys_are_ignored() {
        for key in [
            "index.html",
            "e5.oper.an.sfc/",
            "e5.oper.an.sfc/202201/",
            "e5.oper.an.sfc/202201/README.txt",
            "e5.oper.an.sfc/202201/e5.oper.an.sfc.128_167_2t.ll025sc.2022010100_2022013123.nc.md5",
            "e5.oper.an.sfc/202201/e5.oper.an.pl.128_167_2t.ll025sc.2022010100_2022013123.nc",
            "e5.oper.an.sfc/202202/e5.oper.an.sfc.128_167_2t.ll025sc.2022010100_2022013123.nc",
            "e5.oper.an.sfc/202201/e5.oper.an.sfc.128_167_2t.ll025sc.2022013123_2022010100.nc",
            "e5.oper.an.sfc/202201/../../etc/e5.oper.an.sfc.128_167_2t.ll025sc.2022010100_2022013123.nc",
            "e5.oper.an.sfc/202201/x/e5.oper.an.sfc.128_167_2t.ll025sc.2022010100_2022013123.nc",
            "e5.oper.an.sfc/202201/e5.oper.an.sfc.128_167_2/t.ll025sc.2022010100_2022013123.nc",
            "e5.oper.an.sfc/202213/e5.oper.an.sfc.128_167_2t.ll025sc.2022130100_2022133123.nc",
            // A code needs two digit groups and a short name after it.
            "e5.oper.an.sfc/202201/e5.oper.an.sfc.128_2t.ll025sc.2022010100_2022013123.nc",
            "e5.oper.an.sfc/202201/e5.oper.an.sfc.128_167.ll025sc.2022010100_2022013123.nc",
            "e5.oper.an.sfc/202201/e5.oper.an.sfc.128_167_.ll025sc.2022010100_2022013123.nc",
            "e5.oper.an.sfc/202201/e5.oper.an.sfc.2t.ll025sc.2022010100_2022013123.nc",
            "e5.oper.an.sfc/202201/e5.oper.an.sfc._128_167_2t.ll025sc.2022010100_2022013123.nc",
        ] {
            assert!(ObjectKey::parse(key).is_none(), "{key} should be ignored");
        }
    }
}
