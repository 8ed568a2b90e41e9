//! What a user asked for (products, variables, days) and the exact rule that decides whether an
//! object belongs to it. Scripts depend on this rule:
//!
//! - an object is selected when its product was requested, its short name is among the
//!   requested variables (or none were requested), its grid is among the requested grids (or
//!   none were requested), and its window `[first hour, last hour]` overlaps the requested days
//!   `[start 00:00, end 23:00]`;
//! - invariant objects are selected whenever their product is requested;
//! - with several products, a variable is valid when at least one requested product has it;
//!   it may be named by any form [`crate::catalog::resolve`] accepts, and is kept by its
//!   canonical short name;
//! - keys of the layout that the catalog does not know are selected like any other when no
//!   variable is requested.

use jiff::civil::Date;

use crate::catalog::{self, Cadence, ObjectKey, Product};
use crate::dates::{DayRange, RangeEnd, YearMonth, parse_date_arg};
use crate::error::{InputError, closest_variable};

/// A validated request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Selection {
    /// Requested products, without duplicates, in catalog order.
    pub products: Vec<Product>,
    /// Requested variables by canonical short name; empty means all.
    pub variables: Vec<String>,
    /// Requested grid tokens; empty means all.
    pub grids: Vec<String>,
    /// Requested days.
    pub range: DayRange,
    /// `(as typed, canonical)` for each variable requested by another name than its short
    /// name, so messages can use the user's words.
    pub typed_as: Vec<(String, String)>,
}

impl Selection {
    /// Validates raw flag values. `today` bounds the archive's end.
    pub fn parse(
        products: &[String],
        variables: &[String],
        grids: &[String],
        start: &str,
        end: &str,
        today: Date,
    ) -> Result<Self, InputError> {
        let mut parsed_products = Vec::new();
        for name in products.iter().map(|p| p.trim()).filter(|p| !p.is_empty()) {
            let product: Product = name.parse()?;
            if !parsed_products.contains(&product) {
                parsed_products.push(product);
            }
        }
        if parsed_products.is_empty() {
            return Err(InputError::Empty { flag: "--product" });
        }
        parsed_products.sort();
        let product_list = || {
            parsed_products
                .iter()
                .map(|p| p.name())
                .collect::<Vec<_>>()
                .join(",")
        };

        let mut parsed_variables: Vec<String> = Vec::new();
        let mut typed_as = Vec::new();
        for typed in variables.iter().map(|v| v.trim()).filter(|v| !v.is_empty()) {
            let matches = catalog::resolve(typed, &parsed_products);
            let Some(first) = matches.first() else {
                let elsewhere = catalog::products_having(typed, &parsed_products);
                return Err(InputError::UnknownVariable {
                    value: typed.to_string(),
                    products: product_list(),
                    closest: closest_variable(typed, catalog::variable_names(&parsed_products)),
                    elsewhere: elsewhere.iter().map(|p| p.name().to_string()).collect(),
                });
            };
            let canonical = first.short.to_string();
            if canonical != typed {
                typed_as.push((typed.to_string(), canonical.clone()));
            }
            if !parsed_variables.contains(&canonical) {
                parsed_variables.push(canonical);
            }
        }

        let known_grids = catalog::grids_of(&parsed_products);
        let mut parsed_grids: Vec<String> = Vec::new();
        for grid in grids.iter().map(|g| g.trim()).filter(|g| !g.is_empty()) {
            if !known_grids.contains(&grid) {
                return Err(InputError::UnknownGrid {
                    value: grid.to_string(),
                    products: product_list(),
                    known: known_grids.join(", "),
                });
            }
            if !parsed_grids.iter().any(|g| g == grid) {
                parsed_grids.push(grid.to_string());
            }
        }

        let start = parse_date_arg(start.trim(), RangeEnd::Start, today)?;
        let end = parse_date_arg(end.trim(), RangeEnd::End, today)?;
        Ok(Self {
            products: parsed_products,
            variables: parsed_variables,
            grids: parsed_grids,
            range: DayRange::new(start, end)?,
            typed_as,
        })
    }

    /// How to name a requested variable in messages: `mtpr`, or
    /// `mean_total_precipitation_rate (mtpr)` when the user typed the long name.
    pub fn label(&self, canonical: &str) -> String {
        let typed: Vec<&str> = self
            .typed_as
            .iter()
            .filter(|(_, c)| c == canonical)
            .map(|(typed, _)| typed.as_str())
            .collect();
        if typed.is_empty() {
            canonical.to_string()
        } else {
            format!("{} ({canonical})", typed.join(", "))
        }
    }

    /// The requested variables and grids that no key in `keys` has, to warn about; each
    /// requested name matching nothing is a request the user would otherwise think satisfied.
    pub fn unmatched<'a>(&self, keys: impl IntoIterator<Item = &'a ObjectKey>) -> Unmatched {
        let keys: Vec<&ObjectKey> = keys.into_iter().collect();
        Unmatched {
            variables: self
                .variables
                .iter()
                .filter(|v| !keys.iter().any(|k| &k.short == *v))
                .cloned()
                .collect(),
            grids: self
                .grids
                .iter()
                .filter(|g| !keys.iter().any(|k| &k.grid == *g))
                .cloned()
                .collect(),
        }
    }

    /// The selection's days, for messages: `2024-01-01..2024-01-31`.
    pub fn describe_range(&self) -> String {
        format!("{}..{}", self.range.start, self.range.end)
    }

    /// Whether the object named by `key` belongs to this selection.
    pub fn selects(&self, key: &ObjectKey) -> bool {
        if !self.products.contains(&key.product) {
            return false;
        }
        if !self.variables.is_empty() && !self.variables.contains(&key.short) {
            return false;
        }
        if !self.grids.is_empty() && !self.grids.contains(&key.grid) {
            return false;
        }
        key.product.cadence() == Cadence::Invariant || self.range.overlaps(key.first, key.last)
    }

    /// Every key the catalog says should exist for this selection: for each requested product,
    /// its requested variables (all it is known to have when none are requested; an
    /// unconfirmed variable only when requested by name), on the requested grids, over every
    /// window of its cadence that overlaps the range. Months after `latest(product)` (the
    /// bucket's latest month, when known) are not expected yet; nor are months before the
    /// product's first.
    pub fn expected_keys(&self, latest: impl Fn(Product) -> Option<YearMonth>) -> Vec<String> {
        let mut keys = Vec::new();
        for product in &self.products {
            let months: Vec<YearMonth> = months_to_list(*product, self.range)
                .into_iter()
                .filter(|m| *m >= product.first_month())
                .filter(|m| latest(*product).is_none_or(|latest| *m <= latest))
                .collect();
            let variables = product.variables().filter(|v| {
                let requested = if self.variables.is_empty() {
                    v.evidence == catalog::Evidence::Seen
                } else {
                    self.variables.iter().any(|r| r == v.short)
                };
                requested && (self.grids.is_empty() || self.grids.iter().any(|g| g == v.grid))
            });
            for variable in variables {
                for month in &months {
                    for (first, last) in product.windows_in_month(*month) {
                        if product.cadence() == Cadence::Invariant
                            || self.range.overlaps(first, last)
                        {
                            keys.push(variable.key(first, last));
                        }
                    }
                }
            }
        }
        keys.sort();
        keys
    }

    /// The month folders to list, `{product}/{YYYYMM}/`, and nothing more: listing is the slow
    /// part of planning a long range. A half-month product also needs the previous month when
    /// the range starts on the 1st, because that month's second half ends on the 1st at 06:00.
    pub fn list_prefixes(&self) -> Vec<String> {
        let mut prefixes = Vec::new();
        for product in &self.products {
            for month in months_to_list(*product, self.range) {
                prefixes.push(format!("{}/{}/", product.name(), month.compact()));
            }
        }
        prefixes
    }
}

/// Requested names that matched no object ([`Selection::unmatched`]).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Unmatched {
    /// Canonical short names.
    pub variables: Vec<String>,
    /// Grid tokens.
    pub grids: Vec<String>,
}

fn months_to_list(product: Product, range: DayRange) -> Vec<YearMonth> {
    let first = YearMonth::of(range.start);
    let last = YearMonth::of(range.end);
    match product.cadence() {
        Cadence::Invariant => vec![Product::invariant_month()],
        // A half-month file starting on the 1st began in the previous month's folder.
        Cadence::HalfMonth if range.start.day() == 1 => first.previous().through(last).collect(),
        Cadence::Daily | Cadence::Monthly | Cadence::HalfMonth => first.through(last).collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::catalog::VARIABLES;
    use crate::dates::HourStamp;
    use jiff::civil::date;
    use proptest::prelude::*;

    const TODAY: Date = date(2026, 11, 24);

    fn selection(products: &[&str], variables: &[&str], start: &str, end: &str) -> Selection {
        let owned = |xs: &[&str]| {
            xs.iter()
                .map(std::string::ToString::to_string)
                .collect::<Vec<_>>()
        };
        Selection::parse(&owned(products), &owned(variables), &[], start, end, TODAY).unwrap()
    }

    fn key(text: &str) -> ObjectKey {
        ObjectKey::parse(text).unwrap()
    }

    #[test]
    fn december_second_half_is_selected_by_a_january_request() {
        let sel = selection(
            &["e5.oper.fc.sfc.accumu"],
            &["cp"],
            "2022-01-01",
            "2022-01-01",
        );
        assert!(sel.selects(&key(
            "e5.oper.fc.sfc.accumu/202112/e5.oper.fc.sfc.accumu.128_143_cp.ll025sc.2021121606_2022010106.nc"
        )));
        assert!(!sel.selects(&key(
            "e5.oper.fc.sfc.accumu/202112/e5.oper.fc.sfc.accumu.128_143_cp.ll025sc.2021120106_2021121606.nc"
        )));
        assert_eq!(
            sel.list_prefixes(),
            [
                "e5.oper.fc.sfc.accumu/202112/",
                "e5.oper.fc.sfc.accumu/202201/"
            ]
        );
        // From the 2nd on, December's second half (ending 1 January 06:00) no longer overlaps.
        let later = selection(&["e5.oper.fc.sfc.accumu"], &[], "2022-01-02", "2022-01-31");
        assert_eq!(later.list_prefixes(), ["e5.oper.fc.sfc.accumu/202201/"]);
    }

    #[test]
    fn the_window_edges_are_inclusive() {
        let sel = selection(&["e5.oper.fc.sfc.accumu"], &[], "2022-01-16", "2022-01-16");
        // [0106, 1606] ends at 06:00 on the 16th: overlaps.
        assert!(sel.selects(&key(
            "e5.oper.fc.sfc.accumu/202201/e5.oper.fc.sfc.accumu.128_143_cp.ll025sc.2022010106_2022011606.nc"
        )));
        let sel = selection(&["e5.oper.an.pl"], &[], "2022-01-02", "2022-01-02");
        assert!(!sel.selects(&key(
            "e5.oper.an.pl/202201/e5.oper.an.pl.128_130_t.ll025sc.2022010100_2022010123.nc"
        )));
        assert!(sel.selects(&key(
            "e5.oper.an.pl/202201/e5.oper.an.pl.128_130_t.ll025sc.2022010200_2022010223.nc"
        )));
    }

    #[test]
    fn invariant_objects_are_selected_whenever_their_product_is() {
        let sel = selection(
            &["e5.oper.invariant", "e5.oper.an.sfc"],
            &["lsm", "2t"],
            "2022-01",
            "2022-01",
        );
        assert!(sel.selects(&key(
            "e5.oper.invariant/197901/e5.oper.invariant.128_172_lsm.ll025sc.1979010100_1979010100.nc"
        )));
        assert_eq!(
            sel.list_prefixes(),
            ["e5.oper.an.sfc/202201/", "e5.oper.invariant/197901/"]
        );
    }

    #[test]
    fn a_variable_is_valid_when_one_requested_product_has_it() {
        let sel = selection(
            &["e5.oper.an.sfc", "e5.oper.an.pl"],
            &["2t", "u"],
            "2022-01",
            "2022-01",
        );
        assert_eq!(sel.variables, ["2t", "u"]);
        let err = Selection::parse(
            &["e5.oper.an.sfc".into()],
            &["u".into()],
            &[],
            "2022-01",
            "2022-01",
            TODAY,
        )
        .unwrap_err();
        assert!(
            err.to_string()
                .starts_with("unknown variable `u` for e5.oper.an.sfc"),
            "{err}"
        );
        let err = Selection::parse(
            &["e5.oper.an.sfc".into()],
            &["2tt".into()],
            &[],
            "2022-01",
            "2022-01",
            TODAY,
        )
        .unwrap_err();
        assert!(err.to_string().ends_with("did you mean `2t`?"), "{err}");
    }

    #[test]
    fn aliases_resolve_to_canonical_names_and_messages_keep_the_users_words() {
        let sel = selection(
            &["e5.oper.fc.sfc.meanflux", "e5.oper.an.sfc"],
            &["mean_total_precipitation_rate", "t2m", "2t", "235058"],
            "2022-01",
            "2022-01",
        );
        assert_eq!(sel.variables, ["mtpr", "2t", "msdrswrf"]);
        assert_eq!(sel.label("mtpr"), "mean_total_precipitation_rate (mtpr)");
        assert_eq!(sel.label("2t"), "t2m (2t)");
        assert_eq!(sel.label("msdrswrf"), "235058 (msdrswrf)");
        let err = Selection::parse(
            &["e5.oper.an.pl".into()],
            &["2t".into()],
            &[],
            "2022-01",
            "2022-01",
            TODAY,
        )
        .unwrap_err();
        assert_eq!(
            err.to_string(),
            "unknown variable `2t` for e5.oper.an.pl; it is a variable of e5.oper.an.sfc"
        );
        let err = Selection::parse(
            &["e5.oper.fc.sfc.meanflux".into()],
            &["mgws".into()],
            &[],
            "2022-01",
            "2022-01",
            TODAY,
        )
        .unwrap_err();
        assert!(
            err.to_string()
                .contains("it is a variable of e5.oper.fc.sfc.accumu"),
            "{err}"
        );
    }

    #[test]
    fn grids_filter_objects_and_unknown_grids_are_refused() {
        let owned = |xs: &[&str]| {
            xs.iter()
                .map(std::string::ToString::to_string)
                .collect::<Vec<_>>()
        };
        let sel = Selection::parse(
            &owned(&["e5.oper.an.pl"]),
            &[],
            &owned(&["ll025uv"]),
            "2022-01-01",
            "2022-01-01",
            TODAY,
        )
        .unwrap();
        assert!(sel.selects(&key(
            "e5.oper.an.pl/202201/e5.oper.an.pl.128_131_u.ll025uv.2022010100_2022010123.nc"
        )));
        assert!(!sel.selects(&key(
            "e5.oper.an.pl/202201/e5.oper.an.pl.128_130_t.ll025sc.2022010100_2022010123.nc"
        )));
        let err = Selection::parse(
            &owned(&["e5.oper.an.sfc"]),
            &[],
            &owned(&["ll025uv"]),
            "2022-01",
            "2022-01",
            TODAY,
        )
        .unwrap_err();
        assert_eq!(
            err.to_string(),
            "unknown grid `ll025uv` for e5.oper.an.sfc; known: ll025sc"
        );
    }

    #[test]
    fn unmatched_names_the_requests_no_key_satisfies() {
        let sel = selection(&["e5.oper.an.sfc"], &["2t", "sp"], "2022-01", "2022-01");
        let keys = [key(
            "e5.oper.an.sfc/202201/e5.oper.an.sfc.128_167_2t.ll025sc.2022010100_2022013123.nc",
        )];
        assert_eq!(sel.unmatched(&keys).variables, ["sp"]);
        assert_eq!(sel.unmatched(&[]).variables, ["2t", "sp"]);
    }

    #[test]
    fn expected_keys_follow_the_cadence_and_stop_at_the_latest_month() {
        let sel = selection(
            &["e5.oper.an.sfc", "e5.oper.fc.sfc.accumu"],
            &["2t", "cp"],
            "2024-01",
            "2024-03",
        );
        let latest = |p: Product| {
            (p == Product::AnSfc).then_some(YearMonth {
                year: 2024,
                month: 2,
            })
        };
        let keys = sel.expected_keys(latest);
        let sfc: Vec<_> = keys.iter().filter(|k| k.contains("an.sfc")).collect();
        assert_eq!(sfc.len(), 2, "March is after the latest month: {sfc:?}");
        // Half months: December's second half reaches 1 January 06:00, then six of 2024.
        let cp: Vec<_> = keys.iter().filter(|k| k.contains("_cp.")).collect();
        assert_eq!(cp.len(), 7, "{cp:?}");
        assert!(cp[0].ends_with("2023121606_2024010106.nc"));
        // Without --var: every variable the bucket is known to hold, none unconfirmed.
        let all = selection(&["e5.oper.fc.sfc.instan"], &[], "2024-01-02", "2024-01-02");
        let keys = all.expected_keys(|_| None);
        assert_eq!(keys.len(), Product::FcSfcInstan.variables().count() - 4);
        assert!(!keys.iter().any(|k| k.contains("_deg0l.")));
    }

    #[test]
    fn leap_february_month_request_covers_the_29th() {
        let sel = selection(&["e5.oper.an.pl"], &["t"], "2024-02", "2024-02");
        assert_eq!(sel.range.end, date(2024, 2, 29));
        assert!(sel.selects(&key(
            "e5.oper.an.pl/202402/e5.oper.an.pl.128_130_t.ll025sc.2024022900_2024022923.nc"
        )));
        assert!(!sel.selects(&key(
            "e5.oper.an.pl/202403/e5.oper.an.pl.128_130_t.ll025sc.2024030100_2024030123.nc"
        )));
    }

    /// Every key the catalog generates for the months around a range, to compare the rule and
    /// the listing plan against brute force.
    fn keys_around(sel: &Selection) -> Vec<ObjectKey> {
        let first = YearMonth::of(sel.range.start).previous();
        let last = YearMonth::of(sel.range.end).next();
        let mut keys = Vec::new();
        for v in VARIABLES
            .iter()
            .filter(|v| sel.products.contains(&v.product))
        {
            let months: Vec<YearMonth> = if v.product.cadence() == Cadence::Invariant {
                vec![Product::invariant_month()]
            } else {
                first.through(last).collect()
            };
            for month in months {
                for (a, b) in v.product.windows_in_month(month) {
                    keys.push(ObjectKey::parse(&v.key(a, b)).unwrap());
                }
            }
        }
        keys
    }

    fn arb_range() -> impl Strategy<Value = (Date, Date)> {
        (0i32..(365 * 80), 0i32..70).prop_map(|(offset, len)| {
            let start = date(1941, 1, 1)
                .checked_add(jiff::Span::new().days(offset))
                .unwrap();
            let end = start.checked_add(jiff::Span::new().days(len)).unwrap();
            (start, end.min(TODAY))
        })
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]

        /// The selection rule equals the overlap computed from scratch, and every selected object
        /// lives under a listed prefix (listing never misses an object).
        #[test]
        fn selection_matches_brute_force_and_prefixes_cover_it(
            (start, end) in arb_range(),
            product_index in 0usize..Product::ALL.len(),
        ) {
            let product = Product::ALL[product_index];
            let sel = Selection { products: vec![product], variables: vec![], grids: vec![], range: DayRange::new(start, end).unwrap(), typed_as: vec![] };
            let prefixes = sel.list_prefixes();
            for key in keys_around(&sel) {
                let first_ok = key.first <= HourStamp::new(end, 23);
                let last_ok = key.last >= HourStamp::new(start, 0);
                let expected = product.cadence() == Cadence::Invariant || (first_ok && last_ok);
                prop_assert_eq!(sel.selects(&key), expected, "{}", key);
                if expected {
                    let text = key.to_string();
                    prop_assert!(prefixes.iter().any(|p| text.starts_with(p.as_str())), "{} not under {:?}", text, prefixes);
                }
            }
        }

        /// Windows of consecutive months tile time: each starts where the previous ended (half
        /// months share their boundary hour) or the hour after, with no gap.
        #[test]
        fn windows_tile_time_without_gaps(month_offset in 0u32..(12 * 80), product_index in 0usize..7) {
            let product = Product::ALL[product_index];
            let mut month = YearMonth { year: 1941, month: 1 };
            for _ in 0..month_offset { month = month.next(); }
            let windows: Vec<_> = [month, month.next()].iter().flat_map(|m| product.windows_in_month(*m)).collect();
            for pair in windows.windows(2) {
                let (prev_last, next_first) = (pair[0].1, pair[1].0);
                let shared = prev_last == next_first;
                let adjacent = prev_last.hour == 23 && next_first.hour == 0
                    && prev_last.date.tomorrow().unwrap() == next_first.date;
                prop_assert!(shared || adjacent, "{:?} then {:?}", pair[0], pair[1]);
            }
        }

        /// Splitting a range covers it exactly, in order, without overlap, and never crosses a
        /// month boundary.
        #[test]
        fn split_covers_the_range_exactly((start, end) in arb_range(), max_days in 1u32..40) {
            let range = DayRange::new(start, end).unwrap();
            let pieces = range.split(max_days);
            prop_assert_eq!(pieces.first().unwrap().start, start);
            prop_assert_eq!(pieces.last().unwrap().end, end);
            for pair in pieces.windows(2) {
                prop_assert_eq!(pair[0].end.tomorrow().unwrap(), pair[1].start);
            }
            for piece in &pieces {
                prop_assert!(piece.start <= piece.end);
                prop_assert!(piece.days() <= i64::from(max_days));
                prop_assert_eq!(YearMonth::of(piece.start), YearMonth::of(piece.end));
            }
            let total: i64 = pieces.iter().map(DayRange::days).sum();
            prop_assert_eq!(total, range.days());
        }

        /// Every generated key parses back to itself.
        #[test]
        fn generated_keys_round_trip(month_offset in 0u32..(12 * 80), var_index in 0usize..VARIABLES.len()) {
            let v = &VARIABLES[var_index];
            let mut month = YearMonth { year: 1941, month: 1 };
            for _ in 0..month_offset { month = month.next(); }
            let month = if v.product.cadence() == Cadence::Invariant { Product::invariant_month() } else { month };
            for (a, b) in v.product.windows_in_month(month) {
                let text = v.key(a, b);
                let parsed = ObjectKey::parse(&text);
                prop_assert!(parsed.is_some(), "{}", text);
                prop_assert_eq!(parsed.unwrap().to_string(), text);
            }
        }
    }
}
