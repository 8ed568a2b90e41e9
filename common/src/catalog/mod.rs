//! The ERA5 catalog: products, their cadences and first months, their variables (code, short
//! name, CDS long name, units, grid) and the object key layout of `nsf-ncar-era5`:
//!
//! ```text
//! {product}/{YYYYMM}/{product}.{TTT}_{PPP}_{short}.{grid}.{YYYYMMDDHH}_{YYYYMMDDHH}.nc
//! ```
//!
//! - `variables.rs`: the table, one line per variable, with its sources;
//! - `resolve.rs`: what `--var` accepts (short names, ECMWF/CF aliases, CDS long names,
//!   parameter ids);
//! - `key.rs`: parsing and generating keys; a key of the layout parses whether or not its
//!   variable is in the table, and [`lookup`] says which.

mod key;
mod resolve;
mod variables;

use std::fmt;
use std::str::FromStr;

use crate::dates::{HourStamp, YearMonth};

use crate::error::{InputError, closest_match};
pub use key::ObjectKey;
pub use resolve::{names as variable_names, products_having, resolve};
pub use variables::{GRID_LL025SC, GRID_LL025UV, GRID_REGN320SC, VARIABLES};

/// How much time one object of a product covers.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Cadence {
    /// One object per day, hours `00`..`23`.
    Daily,
    /// One object per month, `01 00`..`{last} 23`.
    Monthly,
    /// Two objects per month by forecast start: `01 06`..`16 06` and `16 06`..`{next month} 01 06`.
    /// The second half sits under the month it starts in, so December's ends in January.
    HalfMonth,
    /// A single time step (`1979010100_1979010100` under `197901/`).
    Invariant,
}

impl Cadence {
    /// Lowercase name, as `era5 catalog` prints it.
    pub fn name(self) -> &'static str {
        match self {
            Cadence::Daily => "daily",
            Cadence::Monthly => "monthly",
            Cadence::HalfMonth => "half-month",
            Cadence::Invariant => "invariant",
        }
    }

    /// What one object covers, in words.
    pub fn describe(self) -> &'static str {
        match self {
            Cadence::Daily => "one object per day, hours 00-23",
            Cadence::Monthly => "one object per month",
            Cadence::HalfMonth => "two objects per month by forecast start (01 06, 16 06)",
            Cadence::Invariant => "one time step, under 197901/",
        }
    }
}

/// An ERA5 product (a top-level folder of the bucket).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Product {
    /// Analysis on pressure levels, daily files.
    AnPl,
    /// Surface analysis, monthly files.
    AnSfc,
    /// Vertical integrals, monthly files.
    AnVinteg,
    /// Accumulated surface forecast fields, half-month files.
    FcSfcAccumu,
    /// Mean-rate surface forecast fields, half-month files.
    FcSfcMeanflux,
    /// Instantaneous surface forecast fields, half-month files.
    FcSfcInstan,
    /// Minimum/maximum surface forecast fields, half-month files.
    FcSfcMinmax,
    /// Time-invariant fields (land-sea mask, orography...).
    Invariant,
}

impl Product {
    /// Every product, in the order `plan` reports them.
    pub const ALL: [Product; 8] = [
        Product::AnPl,
        Product::AnSfc,
        Product::AnVinteg,
        Product::FcSfcAccumu,
        Product::FcSfcMeanflux,
        Product::FcSfcInstan,
        Product::FcSfcMinmax,
        Product::Invariant,
    ];

    /// The product's folder and file-name prefix, e.g. `e5.oper.an.sfc`.
    pub fn name(self) -> &'static str {
        match self {
            Product::AnPl => "e5.oper.an.pl",
            Product::AnSfc => "e5.oper.an.sfc",
            Product::AnVinteg => "e5.oper.an.vinteg",
            Product::FcSfcAccumu => "e5.oper.fc.sfc.accumu",
            Product::FcSfcMeanflux => "e5.oper.fc.sfc.meanflux",
            Product::FcSfcInstan => "e5.oper.fc.sfc.instan",
            Product::FcSfcMinmax => "e5.oper.fc.sfc.minmax",
            Product::Invariant => "e5.oper.invariant",
        }
    }

    /// How much time one object covers.
    pub fn cadence(self) -> Cadence {
        match self {
            Product::AnPl => Cadence::Daily,
            Product::AnSfc | Product::AnVinteg => Cadence::Monthly,
            Product::FcSfcAccumu
            | Product::FcSfcMeanflux
            | Product::FcSfcInstan
            | Product::FcSfcMinmax => Cadence::HalfMonth,
            Product::Invariant => Cadence::Invariant,
        }
    }

    /// The product's variables, from [`VARIABLES`].
    pub fn variables(self) -> impl Iterator<Item = &'static Variable> {
        VARIABLES.iter().filter(move |v| v.product == self)
    }

    /// The variable with this short name, if the product has it (the first grid listed, when
    /// it comes on several).
    pub fn variable(self, short: &str) -> Option<&'static Variable> {
        self.variables().find(|v| v.short == short)
    }

    /// The first month folder of the product in the bucket: the archive starts in January 1940
    /// (the first forecast file is `1940010106_1940011606`); the invariant fields sit under
    /// `197901/`.
    pub fn first_month(self) -> YearMonth {
        match self.cadence() {
            Cadence::Invariant => Self::invariant_month(),
            _ => YearMonth::of(crate::dates::ARCHIVE_START),
        }
    }

    /// The folder that holds the invariant fields, the only one of that product.
    pub fn invariant_month() -> YearMonth {
        YearMonth {
            year: 1979,
            month: 1,
        }
    }

    /// The time windows `[first, last]` of the objects stored under `month/`, in order.
    pub fn windows_in_month(self, month: YearMonth) -> Vec<(HourStamp, HourStamp)> {
        let first_day = month.first_day();
        match self.cadence() {
            Cadence::Daily => std::iter::successors(Some(first_day), |d| d.tomorrow().ok())
                .take_while(|d| YearMonth::of(*d) == month)
                .map(|d| (HourStamp::new(d, 0), HourStamp::new(d, 23)))
                .collect(),
            Cadence::Monthly => vec![(
                HourStamp::new(first_day, 0),
                HourStamp::new(month.last_day(), 23),
            )],
            Cadence::HalfMonth => {
                let mid = jiff::civil::date(month.year, month.month, 16);
                vec![
                    (HourStamp::new(first_day, 6), HourStamp::new(mid, 6)),
                    (
                        HourStamp::new(mid, 6),
                        HourStamp::new(month.next().first_day(), 6),
                    ),
                ]
            }
            Cadence::Invariant if month == Self::invariant_month() => {
                let stamp = HourStamp::new(first_day, 0);
                vec![(stamp, stamp)]
            }
            Cadence::Invariant => Vec::new(),
        }
    }
}

impl fmt::Display for Product {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Product {
    type Err = InputError;

    fn from_str(value: &str) -> Result<Self, Self::Err> {
        Product::ALL
            .into_iter()
            .find(|p| p.name() == value)
            .ok_or_else(|| InputError::UnknownProduct {
                value: value.to_string(),
                closest: closest_match(value, Product::ALL.iter().map(|p| p.name())),
            })
    }
}

/// How sure the table is that the bucket holds a variable.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Evidence {
    /// A real key of it is known (`real_keys.txt`).
    Seen,
    /// An ERA5 parameter of the product, but no public file list confirms the bucket has it.
    Unconfirmed,
}

/// One variable of one product, on one grid.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Variable {
    /// The product whose files carry it.
    pub product: Product,
    /// GRIB table and parameter, `TTT_PPP`, as in the key.
    pub code: &'static str,
    /// Short name, as in the key (`2t`, `sstk`, `u`): the canonical name plans show.
    pub short: &'static str,
    /// Long name in the Copernicus Climate Data Store (`2m_temperature`).
    pub long_name: &'static str,
    /// Units, as ECMWF's parameter database gives them.
    pub units: &'static str,
    /// Grid token in the key (`ll025sc`; `ll025uv` for winds on pressure levels).
    pub grid: &'static str,
    /// ECMWF or CF short names that differ from the key's (`t2m` for `2t`, `sst` for `sstk`).
    pub aliases: &'static [&'static str],
    /// Whether the bucket is known to hold it.
    pub evidence: Evidence,
}

impl Variable {
    /// The object key of this variable for the window `[first, last]`.
    pub fn key(&self, first: HourStamp, last: HourStamp) -> String {
        ObjectKey {
            product: self.product,
            month: YearMonth::of(first.date),
            code: self.code.to_string(),
            short: self.short.to_string(),
            grid: self.grid.to_string(),
            first,
            last,
        }
        .to_string()
    }

    /// GRIB table and parameter as numbers (`128_167` → (128, 167)).
    pub fn table_and_param(&self) -> (u16, u16) {
        let (table, param) = self.code.split_once('_').unwrap_or((self.code, "0"));
        (table.parse().unwrap_or(0), param.parse().unwrap_or(0))
    }

    /// ECMWF's parameter id: the parameter alone in table 128, else table × 1000 + parameter.
    pub fn param_id(&self) -> u32 {
        match self.table_and_param() {
            (128, param) => u32::from(param),
            (table, param) => u32::from(table) * 1000 + u32::from(param),
        }
    }
}

/// The table entry a parsed key belongs to: same product, code, short name and grid. `None`
/// for keys of the layout the table does not know (another code shape, an unknown variable,
/// a known variable on an unknown grid); those are still mirrored when no `--var` is given.
pub fn lookup(key: &ObjectKey) -> Option<&'static Variable> {
    VARIABLES.iter().find(|v| {
        v.product == key.product && v.short == key.short && v.code == key.code && v.grid == key.grid
    })
}

/// Every grid token the table knows for `products`, in table order, without duplicates.
pub fn grids_of(products: &[Product]) -> Vec<&'static str> {
    let mut grids: Vec<&'static str> = Vec::new();
    for variable in VARIABLES.iter().filter(|v| products.contains(&v.product)) {
        if !grids.contains(&variable.grid) {
            grids.push(variable.grid);
        }
    }
    grids
}

#[cfg(test)]
mod tests {
    use super::*;
    use jiff::civil::date;

    #[test]
    fn half_month_windows_cross_into_the_next_month() {
        let windows = Product::FcSfcAccumu.windows_in_month(YearMonth {
            year: 2021,
            month: 12,
        });
        assert_eq!(windows.len(), 2);
        assert_eq!(windows[0].0.compact(), "2021120106");
        assert_eq!(windows[0].1.compact(), "2021121606");
        assert_eq!(windows[1].0.compact(), "2021121606");
        assert_eq!(windows[1].1.compact(), "2022010106");
    }

    #[test]
    fn daily_and_monthly_windows_follow_the_calendar() {
        let feb_leap = YearMonth {
            year: 2024,
            month: 2,
        };
        assert_eq!(Product::AnPl.windows_in_month(feb_leap).len(), 29);
        assert_eq!(
            Product::AnPl
                .windows_in_month(YearMonth {
                    year: 2023,
                    month: 2
                })
                .len(),
            28
        );
        assert_eq!(
            Product::AnPl
                .windows_in_month(YearMonth {
                    year: 2022,
                    month: 4
                })
                .len(),
            30
        );
        let monthly = Product::AnSfc.windows_in_month(feb_leap);
        assert_eq!(
            monthly,
            vec![(
                HourStamp::new(date(2024, 2, 1), 0),
                HourStamp::new(date(2024, 2, 29), 23)
            )]
        );
        assert!(Product::Invariant.windows_in_month(feb_leap).is_empty());
        assert_eq!(
            Product::Invariant
                .windows_in_month(Product::invariant_month())
                .len(),
            1
        );
    }

    #[test]
    fn every_product_has_variables_and_each_name_means_one_variable() {
        for product in Product::ALL {
            let entries: Vec<_> = product.variables().map(|v| (v.short, v.grid)).collect();
            assert!(!entries.is_empty(), "{product} has no variables");
            let mut unique = entries.clone();
            unique.sort_unstable();
            unique.dedup();
            assert_eq!(
                unique.len(),
                entries.len(),
                "{product} repeats a short name and grid"
            );
            // Every alias and long name must name one short name within the product.
            for v in product.variables() {
                for name in v.aliases.iter().chain([&v.long_name]) {
                    let owners: Vec<_> = product
                        .variables()
                        .filter(|o| {
                            o.short == *name || o.aliases.contains(name) || o.long_name == *name
                        })
                        .map(|o| o.short)
                        .collect();
                    assert!(
                        owners.iter().all(|o| *o == v.short),
                        "{product}: `{name}` names {owners:?}"
                    );
                }
                assert!(
                    !v.long_name.is_empty() && !v.units.is_empty(),
                    "{}",
                    v.short
                );
                assert_eq!(v.long_name, v.long_name.to_ascii_lowercase(), "{}", v.short);
            }
        }
        assert_eq!(Product::AnPl.variables().count(), 16);
        assert_eq!(Product::FcSfcMeanflux.variables().count(), 39);
    }

    /// The table against `real_keys.txt`: every real key is in the table with its code, short
    /// name and grid, and every entry marked seen has a real key.
    #[test]
    fn the_table_matches_real_keys_of_every_product() {
        let real: Vec<ObjectKey> = include_str!("real_keys.txt")
            .lines()
            .filter(|line| !line.trim().is_empty() && !line.starts_with('#'))
            .map(|line| ObjectKey::parse(line).unwrap_or_else(|| panic!("{line} does not parse")))
            .collect();
        for key in &real {
            assert!(lookup(key).is_some(), "{key} is not in the table");
        }
        for product in Product::ALL {
            assert!(
                real.iter().any(|k| k.product == product),
                "no real key of {product}"
            );
        }
        for v in VARIABLES.iter().filter(|v| v.evidence == Evidence::Seen) {
            assert!(
                real.iter().any(|k| lookup(k) == Some(v)),
                "{} {} {} is marked seen but has no real key",
                v.product,
                v.code,
                v.short
            );
        }
        // Corrections of issue 11 stay corrected.
        let meanflux = |short: &str| Product::FcSfcMeanflux.variable(short).map(|v| v.code);
        assert_eq!(meanflux("msdrswrf"), Some("235_058"));
        assert_eq!(meanflux("mtdwswrf"), Some("235_053"));
        assert_eq!(meanflux("mgws"), None);
        assert_eq!(meanflux("mpr"), None);
        assert_eq!(
            Product::FcSfcAccumu.variable("uvb").map(|v| v.code),
            Some("128_057")
        );
        assert!(Product::FcSfcAccumu.variable("sund").is_none());
        assert!(Product::AnSfc.variable("lmlt").is_none());
    }

    #[test]
    fn parameter_ids_follow_ecmwf_numbering() {
        assert_eq!(Product::AnSfc.variable("2t").unwrap().param_id(), 167);
        assert_eq!(Product::AnSfc.variable("100u").unwrap().param_id(), 228_246);
        assert_eq!(
            Product::FcSfcMeanflux.variable("mtpr").unwrap().param_id(),
            235_055
        );
    }

    #[test]
    fn unknown_product_suggests_the_closest() {
        let err = "e5.oper.an.sf".parse::<Product>().unwrap_err();
        assert_eq!(
            err.to_string(),
            "unknown product `e5.oper.an.sf`; did you mean `e5.oper.an.sfc`?"
        );
    }
}
