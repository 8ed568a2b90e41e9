//! What a user may type for `--var`, and the table entries it means.
//!
//! Accepted, in this order of precedence, within the requested products:
//! - the short name in the keys (`2t`, `sstk`, `mtpr`);
//! - an ECMWF or CF short name where NCAR's differs (`t2m` → `2t`, `sst` → `sstk`,
//!   `u100` → `100u`);
//! - the CDS long name (`2m_temperature`, `mean_total_precipitation_rate`), case-insensitive;
//! - a parameter id: ECMWF's number (`167`, `228246`, `235055`), `TTT.PPP` as in the keys
//!   (`128.167`), ECMWF's `PPP.TTT` (`167.128`) or the key's own `TTT_PPP` (`128_167`).
//!
//! Every form resolves to the canonical short name, which is what plans and manifests show.

use super::{Product, VARIABLES, Variable};

/// The table entries `token` names among `products` (several when a variable comes on several
/// grids, or in several products under one name). Empty when it names none of them.
pub fn resolve(token: &str, products: &[Product]) -> Vec<&'static Variable> {
    let candidates = || VARIABLES.iter().filter(|v| products.contains(&v.product));
    let by = |matches: &dyn Fn(&Variable) -> bool| -> Vec<&'static Variable> {
        candidates().filter(|v| matches(v)).collect()
    };
    let exact = by(&|v| v.short == token);
    if !exact.is_empty() {
        return exact;
    }
    let alias = by(&|v| v.aliases.contains(&token));
    if !alias.is_empty() {
        return alias;
    }
    let lower = token.to_ascii_lowercase();
    let long = by(&|v| v.long_name == lower);
    if !long.is_empty() {
        return long;
    }
    match parse_param_id(token) {
        Some(codes) => by(&|v| codes.contains(&v.table_and_param())),
        None => Vec::new(),
    }
}

/// The (table, parameter) pairs a parameter-id token may mean: one for unambiguous forms, two
/// for `A.B`, which is `TTT.PPP` or `PPP.TTT`.
fn parse_param_id(token: &str) -> Option<Vec<(u16, u16)>> {
    let number = |s: &str| -> Option<u16> {
        (!s.is_empty() && s.len() <= 3 && s.bytes().all(|b| b.is_ascii_digit()))
            .then(|| s.parse().ok())
            .flatten()
    };
    if let Some((a, b)) = token.split_once('.') {
        let (a, b) = (number(a)?, number(b)?);
        return Some(vec![(a, b), (b, a)]);
    }
    if let Some((a, b)) = token.split_once('_') {
        return Some(vec![(number(a)?, number(b)?)]);
    }
    if !token.bytes().all(|b| b.is_ascii_digit()) || token.is_empty() {
        return None;
    }
    let id: u32 = token.parse().ok()?;
    match id {
        // ECMWF numbers table-128 parameters by the parameter alone, the others as
        // table × 1000 + parameter.
        0..=999 => Some(vec![(128, id as u16)]),
        1_000..=999_999 => Some(vec![((id / 1000) as u16, (id % 1000) as u16)]),
        _ => None,
    }
}

/// Every name a user may type for the variables of `products`, for typo suggestions.
pub fn names(products: &[Product]) -> impl Iterator<Item = &'static str> + '_ {
    VARIABLES
        .iter()
        .filter(|v| products.contains(&v.product))
        .flat_map(|v| {
            std::iter::once(v.short)
                .chain(v.aliases.iter().copied())
                .chain(std::iter::once(v.long_name))
        })
}

/// The products other than `requested` that have a variable `token` names, for the hint in an
/// "unknown variable" error.
pub fn products_having(token: &str, requested: &[Product]) -> Vec<Product> {
    Product::ALL
        .into_iter()
        .filter(|p| !requested.contains(p) && !resolve(token, &[*p]).is_empty())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use Product::*;

    fn canonical(token: &str, products: &[Product]) -> Vec<&'static str> {
        let mut names: Vec<_> = resolve(token, products).iter().map(|v| v.short).collect();
        names.dedup();
        names
    }

    #[test]
    fn every_alias_form_resolves_to_the_canonical_short_name() {
        let sfc = [AnSfc];
        for token in [
            "2t",
            "t2m",
            "2m_temperature",
            "2M_TEMPERATURE",
            "167",
            "128.167",
            "167.128",
            "128_167",
            "128167",
        ] {
            assert_eq!(canonical(token, &sfc), ["2t"], "{token}");
        }
        assert_eq!(canonical("sst", &sfc), ["sstk"]);
        assert_eq!(canonical("sea_surface_temperature", &sfc), ["sstk"]);
        assert_eq!(canonical("u100", &sfc), ["100u"]);
        assert_eq!(canonical("228246", &sfc), ["100u"]);
        assert_eq!(canonical("228.246", &sfc), ["100u"]);
        let meanflux = [FcSfcMeanflux];
        for token in [
            "mtpr",
            "mean_total_precipitation_rate",
            "235055",
            "235.055",
            "55.235",
            "235_055",
        ] {
            assert_eq!(canonical(token, &meanflux), ["mtpr"], "{token}");
        }
        assert_eq!(canonical("msdrswrf", &meanflux), ["msdrswrf"]);
        assert_eq!(canonical("fg10", &[FcSfcMinmax]), ["10fg"]);
        assert_eq!(canonical("162071", &[AnVinteg]), ["viwve"]);
    }

    #[test]
    fn names_outside_the_requested_products_do_not_resolve() {
        assert!(resolve("2t", &[AnPl]).is_empty());
        assert!(
            resolve("mgws", &[FcSfcMeanflux]).is_empty(),
            "not a meanflux variable"
        );
        assert!(resolve("mpr", &[FcSfcMeanflux]).is_empty());
        assert!(resolve("sund", &[FcSfcAccumu]).is_empty());
        assert!(resolve("lmlt", &[AnSfc]).is_empty());
        assert!(resolve("999", &[AnSfc]).is_empty());
        assert!(resolve("1.2.3", &[AnSfc]).is_empty());
        assert!(resolve("", &[AnSfc]).is_empty());
        assert_eq!(products_having("2t", &[AnPl]), [AnSfc]);
    }

    #[test]
    fn a_variable_on_two_grids_resolves_to_both() {
        let grids: Vec<_> = resolve("geopotential", &[Invariant])
            .iter()
            .map(|v| v.grid)
            .collect();
        assert_eq!(grids, ["ll025sc", "regn320sc"]);
        // The same id names z in both products when both are requested.
        let products: Vec<_> = resolve("129", &[AnPl, Invariant])
            .iter()
            .map(|v| v.product)
            .collect();
        assert_eq!(products, [AnPl, Invariant, Invariant]);
    }
}
