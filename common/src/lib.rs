//! Shared core of era5-mirror: the ERA5 catalog (products, variables, key layout, the
//! selection rule), safe key-to-path mapping, and the S3 source with its bounded connection
//! pool. Every role (the `era5 sync` command, cluster workers, the coordinator) builds on it.

pub mod catalog;
pub mod dates;
pub mod error;
pub mod paths;
pub mod redact;
pub mod selection;
pub mod source;
pub mod units;

pub use catalog::{Cadence, ObjectKey, Product, VARIABLES, Variable};
pub use dates::{DayRange, HourStamp, YearMonth};
pub use error::InputError;
pub use selection::Selection;
