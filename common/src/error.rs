//! Errors for bad user input. Every message names the bad value and, for a typo, the closest
//! valid one; the CLI prints it on one line and exits 2 before anything is written.

use jiff::civil::Date;
use thiserror::Error;

/// Input that can never succeed: a typo, an impossible date, a range outside the archive.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum InputError {
    /// A product name that is not one of the archive's products.
    #[error("unknown product `{value}`{}", suggestion(.closest.as_ref()))]
    UnknownProduct {
        /// What the user typed.
        value: String,
        /// The closest valid product, when one is close enough to be a typo.
        closest: Option<String>,
    },
    /// A variable (short name, alias, long name or parameter id) that none of the requested
    /// products has.
    #[error("unknown variable `{value}` for {products}{}", variable_hint(.closest.as_ref(), .elsewhere))]
    UnknownVariable {
        /// What the user typed.
        value: String,
        /// The requested products, comma separated.
        products: String,
        /// The closest valid variable of those products.
        closest: Option<String>,
        /// Products that do have it, when the user asked the wrong one.
        elsewhere: Vec<String>,
    },
    /// A grid token no requested product's variables come on.
    #[error("unknown grid `{value}` for {products}; known: {known}")]
    UnknownGrid {
        /// What the user typed.
        value: String,
        /// The requested products, comma separated.
        products: String,
        /// The grids of those products.
        known: String,
    },
    /// A DATE argument that is malformed, impossible or outside the archive.
    #[error("invalid {flag} `{value}`: {reason}")]
    BadDate {
        /// `--start` or `--end`.
        flag: &'static str,
        /// What the user typed.
        value: String,
        /// Why it is not accepted.
        reason: String,
    },
    /// `--end` earlier than `--start`.
    #[error("--end {end} is before --start {start}")]
    EndBeforeStart {
        /// The parsed start.
        start: Date,
        /// The parsed end.
        end: Date,
    },
    /// An empty list where at least one item is needed.
    #[error("{flag} needs at least one value")]
    Empty {
        /// The flag that was empty.
        flag: &'static str,
    },
    /// A size such as `--part-size 8MiB` that does not parse or is out of range.
    #[error("invalid {flag} `{value}`: {reason}")]
    BadValue {
        /// The flag.
        flag: &'static str,
        /// What the user typed.
        value: String,
        /// Why it is not accepted.
        reason: String,
    },
}

fn suggestion(closest: Option<&String>) -> String {
    match closest {
        Some(name) => format!("; did you mean `{name}`?"),
        None => String::new(),
    }
}

fn variable_hint(closest: Option<&String>, elsewhere: &[String]) -> String {
    if elsewhere.is_empty() {
        suggestion(closest)
    } else {
        format!("; it is a variable of {}", elsewhere.join(", "))
    }
}

/// The variables users ask for most, by any of their names: a typo close to one of these
/// (or one they contain) is suggested before rarer names that score a little higher, so that
/// `temperatur` suggests `2m_temperature`, not `temperature_of_snow_layer`. The ERA5 fields
/// behind most analyses: near-surface temperature, dewpoint, winds, pressure, precipitation,
/// sea surface temperature, and temperature, geopotential, winds and humidity on levels.
pub const ASKED_MOST: &[&str] = &[
    "2m_temperature",
    "2t",
    "total_precipitation",
    "tp",
    "mean_sea_level_pressure",
    "msl",
    "10m_u_component_of_wind",
    "10u",
    "10m_v_component_of_wind",
    "10v",
    "2m_dewpoint_temperature",
    "2d",
    "surface_pressure",
    "sp",
    "sea_surface_temperature",
    "sstk",
    "temperature",
    "t",
    "geopotential",
    "z",
    "u_component_of_wind",
    "u",
    "v_component_of_wind",
    "v",
    "specific_humidity",
    "q",
    "relative_humidity",
    "r",
];

/// The variable name to suggest for `value`: among the names close to it (see
/// [`closest_match`]) or containing it, one users ask for most ([`ASKED_MOST`], in its order)
/// comes first; otherwise the closest.
pub fn closest_variable<'a>(
    value: &str,
    candidates: impl IntoIterator<Item = &'a str>,
) -> Option<String> {
    let candidates: Vec<&str> = candidates.into_iter().collect();
    let lower = value.to_ascii_lowercase();
    let near = |candidate: &str| {
        candidate.contains(&lower) || strsim::jaro_winkler(&lower, candidate) >= 0.8
    };
    ASKED_MOST
        .iter()
        .find(|asked| candidates.contains(asked) && near(asked))
        .map(|asked| (*asked).to_string())
        .or_else(|| closest_match(value, candidates))
}

/// The candidate closest to `value`, if it is close enough to be a typo of it.
pub fn closest_match<'a>(
    value: &str,
    candidates: impl IntoIterator<Item = &'a str>,
) -> Option<String> {
    let value_lower = value.to_ascii_lowercase();
    candidates
        .into_iter()
        .map(|candidate| (strsim::jaro_winkler(&value_lower, candidate), candidate))
        .filter(|(score, _)| *score >= 0.7)
        .max_by(|a, b| a.0.total_cmp(&b.0))
        .map(|(_, candidate)| candidate.to_string())
}

/// An error and its sources on one line, each source once (for people; never parsed). tonic's
/// and the SDK's own messages are often just "transport error" or "dispatch failure".
pub fn chain(error: &(dyn std::error::Error + 'static)) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(inner) = source {
        let inner_text = inner.to_string();
        if !text.contains(&inner_text) {
            text.push_str(": ");
            text.push_str(&inner_text);
        }
        source = inner.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn suggestions_pick_the_nearest_name_and_skip_far_ones() {
        let names = ["2t", "2d", "10u", "msl", "sstk"];
        assert_eq!(closest_match("2tt", names).as_deref(), Some("2t"));
        assert_eq!(closest_match("MSL", names).as_deref(), Some("msl"));
        assert_eq!(closest_match("zzzzzz", names), None);
    }

    #[test]
    fn a_variable_users_ask_for_is_suggested_before_a_rarer_closer_one() {
        let names = [
            "temperature_of_snow_layer",
            "2m_temperature",
            "2t",
            "tsn",
            "msl",
        ];
        assert_eq!(
            closest_variable("temperatur", names).as_deref(),
            Some("2m_temperature")
        );
        assert_eq!(closest_variable("2tt", names).as_deref(), Some("2t"));
        assert_eq!(closest_variable("tsnn", names).as_deref(), Some("tsn"));
        assert_eq!(closest_variable("zzzzzz", names), None);
    }

    #[test]
    fn messages_name_the_value_and_the_suggestion() {
        let err = InputError::UnknownProduct {
            value: "e5.oper.an.sf".into(),
            closest: Some("e5.oper.an.sfc".into()),
        };
        assert_eq!(
            err.to_string(),
            "unknown product `e5.oper.an.sf`; did you mean `e5.oper.an.sfc`?"
        );
    }
}
