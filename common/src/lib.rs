//! Shared core of era5-mirror: the ERA5 catalog (products, variables, key layout, the
//! selection rule), dates, safe key-to-path mapping, sizes, and the shape of a listed object.
//! Every role builds on it; it knows nothing of S3, leases or the network (the `transport`
//! crate holds the S3 source).

pub mod bwlimit;
pub mod catalog;
pub mod dates;
pub mod error;
pub mod object;
pub mod paths;
pub mod redact;
pub mod selection;
pub mod shard;
pub mod sync;
pub mod units;

pub use catalog::{Cadence, ObjectKey, Product, VARIABLES, Variable};
pub use dates::{DayRange, HourStamp, YearMonth};
pub use error::InputError;
pub use object::RemoteObject;
pub use selection::Selection;
