//! The synthetic archive: every object key of the catalog's products and variables over a range
//! of months (1940-01 to 2025-12 by default, about 0.8 M keys), served without storing it.
//!
//! - **Keys** are generated from the catalog (`Product::windows_in_month`, `Variable::key`), one
//!   month folder at a time, so a listing page costs the keys of at most a few folders and a
//!   HEAD or GET costs one key parse. Only variables the bucket is known to hold
//!   ([`Evidence::Seen`]) are included unless `unconfirmed` is set (8 more variables, about
//!   8 k more keys).
//! - **Sizes** are modelled per key from what is known of the real archive (pressure-level days
//!   1.0-1.4 GB, hydrometeors 0.3-0.8 GB; monthly surface and vertical integrals 0.27-1.1 GB;
//!   half-month forecasts 13-670 MB; invariants 1-4 MB), deterministic per key. Bodies are
//!   either tiny (256 B to 2 KiB, for control-plane benchmarks) or the modelled size times a
//!   scale factor.
//! - **Bodies** are the first `size` bytes of a repeating pseudo-random block of [`PART`]
//!   bytes that starts with the HDF5 signature, so any range is served from memory at once.
//! - **ETags** are real: a plain MD5 up to one part, a multipart ETag of [`PART`]-byte parts
//!   above (as `aws s3 cp` uploads). Every full part has the same MD5 (computed once); the last
//!   part's comes from MD5 states saved every [`CHECKPOINT`] bytes of the block, so an ETag
//!   costs at most 64 KiB of hashing however large the object.

use common::catalog::{Cadence, Evidence, ObjectKey, Product, Variable};
use common::dates::YearMonth;
use md5::{Digest, Md5};

/// Upload part size of the modelled multipart objects, and the period of every body.
pub const PART: usize = 8 << 20;
/// Distance between saved MD5 states of the block.
pub const CHECKPOINT: usize = 64 << 10;
/// The HDF5 signature every NetCDF4 file starts with.
const HDF5_MAGIC: &[u8; 8] = b"\x89HDF\r\n\x1a\n";

/// How the archive is shaped.
#[derive(Clone, Debug)]
pub struct ArchiveOptions {
    /// First month folder (products starting later start later).
    pub first: YearMonth,
    /// Last month folder.
    pub last: YearMonth,
    /// Include variables the bucket is not known to hold.
    pub unconfirmed: bool,
    /// `None`: tiny bodies; `Some(f)`: the modelled size times `f`.
    pub scale: Option<f64>,
}

impl Default for ArchiveOptions {
    fn default() -> Self {
        Self {
            first: YearMonth {
                year: 1940,
                month: 1,
            },
            last: YearMonth {
                year: 2025,
                month: 12,
            },
            unconfirmed: false,
            scale: None,
        }
    }
}

/// One product's part of the key space.
struct ProductSpace {
    product: Product,
    /// `{product}/`.
    folder: String,
    variables: Vec<&'static Variable>,
}

/// One entry of a listing page.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Listed {
    /// An object and its size.
    Object { key: String, size: u64 },
    /// A common prefix (a delimiter listing's folder).
    Prefix(String),
}

/// The synthetic archive.
pub struct Archive {
    options: ArchiveOptions,
    /// Sorted by folder name, i.e. in key order.
    products: Vec<ProductSpace>,
    block: Vec<u8>,
    checkpoints: Vec<Md5>,
    part_md5: [u8; 16],
}

/// FNV-1a: stable and dependency-free, spreads sizes.
fn key_hash(key: &str) -> u64 {
    key.bytes().fold(0xcbf2_9ce4_8422_2325u64, |hash, byte| {
        (hash ^ u64::from(byte)).wrapping_mul(0x0100_0000_01b3)
    })
}

/// A value in `[low, high)` picked by `key`.
fn spread(key: &str, low: u64, high: u64) -> u64 {
    low + key_hash(key).rotate_left(23) % (high - low).max(1)
}

impl Archive {
    /// Builds the key space and the body block (8 MiB, hashed once).
    pub fn new(options: ArchiveOptions) -> Self {
        let mut products: Vec<ProductSpace> = Product::ALL
            .into_iter()
            .map(|product| ProductSpace {
                product,
                folder: format!("{}/", product.name()),
                variables: product
                    .variables()
                    .filter(|v| options.unconfirmed || v.evidence == Evidence::Seen)
                    .collect(),
            })
            .filter(|space| !space.variables.is_empty())
            .collect();
        products.sort_by(|a, b| a.folder.cmp(&b.folder));
        let mut block = Vec::with_capacity(PART);
        block.extend_from_slice(HDF5_MAGIC);
        let mut state = 0x2545_f491_4f6c_dd1du64;
        while block.len() < PART {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            block.extend_from_slice(&state.to_le_bytes()[..(PART - block.len()).min(8)]);
        }
        let mut checkpoints = Vec::with_capacity(PART / CHECKPOINT + 1);
        let mut hasher = Md5::new();
        checkpoints.push(hasher.clone());
        for chunk in block.chunks(CHECKPOINT) {
            hasher.update(chunk);
            checkpoints.push(hasher.clone());
        }
        let part_md5 = hasher.finalize().into();
        Self {
            options,
            products,
            block,
            checkpoints,
            part_md5,
        }
    }

    /// The months `space`'s product has objects in, within the archive's range.
    fn months(&self, product: Product) -> Vec<YearMonth> {
        if product.cadence() == Cadence::Invariant {
            let month = Product::invariant_month();
            return if (self.options.first..=self.options.last).contains(&month) {
                vec![month]
            } else {
                Vec::new()
            };
        }
        let first = product.first_month().max(self.options.first);
        if first > self.options.last {
            return Vec::new();
        }
        first.through(self.options.last).collect()
    }

    /// How many keys the archive holds.
    pub fn count(&self) -> u64 {
        self.products
            .iter()
            .map(|space| {
                let windows: usize = self
                    .months(space.product)
                    .into_iter()
                    .map(|m| space.product.windows_in_month(m).len())
                    .sum();
                (windows * space.variables.len()) as u64
            })
            .sum()
    }

    /// Bytes the modelled real archive would hold (every key at its modelled size).
    pub fn modelled_bytes(&self) -> u128 {
        let mut total = 0u128;
        for space in &self.products {
            for month in self.months(space.product) {
                for (key, variable) in Self::folder_keys(space, month) {
                    total += u128::from(modelled_size(&key, variable));
                }
            }
        }
        total
    }

    /// The keys of one month folder of one product, sorted.
    fn folder_keys(space: &ProductSpace, month: YearMonth) -> Vec<(String, &'static Variable)> {
        let windows = space.product.windows_in_month(month);
        let mut keys: Vec<(String, &'static Variable)> = space
            .variables
            .iter()
            .flat_map(|variable| {
                windows
                    .iter()
                    .map(move |(first, last)| (variable.key(*first, *last), *variable))
            })
            .collect();
        keys.sort_unstable_by(|a, b| a.0.cmp(&b.0));
        keys
    }

    /// The size of `key` as served.
    fn size_of(&self, key: &str, variable: &Variable) -> u64 {
        match self.options.scale {
            None => spread(key, 256, 2048),
            Some(scale) => ((modelled_size(key, variable) as f64 * scale).round() as u64).max(1),
        }
    }

    /// The size of `key` if the archive holds it.
    pub fn lookup(&self, key: &str) -> Option<u64> {
        let parsed = ObjectKey::parse(key)?;
        let space = self.products.iter().find(|s| s.product == parsed.product)?;
        let variable = *space
            .variables
            .iter()
            .find(|v| v.code == parsed.code && v.short == parsed.short && v.grid == parsed.grid)?;
        let month_ok = match parsed.product.cadence() {
            Cadence::Invariant => parsed.month == Product::invariant_month(),
            _ => parsed.month >= parsed.product.first_month(),
        };
        if !month_ok || parsed.month < self.options.first || parsed.month > self.options.last {
            return None;
        }
        parsed
            .product
            .windows_in_month(parsed.month)
            .contains(&(parsed.first, parsed.last))
            .then(|| self.size_of(key, variable))
    }

    /// The ETag (unquoted) of a body of `size` bytes.
    pub fn etag(&self, size: u64) -> String {
        let part = PART as u64;
        if size <= part {
            return hex::encode(self.prefix_md5(size as usize));
        }
        let parts = size.div_ceil(part);
        let last = (size - (parts - 1) * part) as usize;
        let mut outer = Md5::new();
        for _ in 1..parts {
            outer.update(self.part_md5);
        }
        outer.update(self.prefix_md5(last));
        format!("{}-{parts}", hex::encode(outer.finalize()))
    }

    /// MD5 of the block's first `len` bytes (`len <= PART`).
    fn prefix_md5(&self, len: usize) -> [u8; 16] {
        if len == PART {
            return self.part_md5;
        }
        let at = len / CHECKPOINT;
        let mut hasher = self.checkpoints[at].clone();
        hasher.update(&self.block[at * CHECKPOINT..len]);
        hasher.finalize().into()
    }

    /// The body bytes from `offset` on that lie in one period of the block, at most `max`.
    pub fn body_chunk(&self, offset: u64, max: usize) -> &[u8] {
        let at = (offset % PART as u64) as usize;
        &self.block[at..(at + max).min(PART)]
    }

    /// One page of a ListObjectsV2: entries under `prefix` strictly after `after`, folded at
    /// `delimiter`, at most `max`; `true` when more follow.
    pub fn list(
        &self,
        prefix: &str,
        after: &str,
        delimiter: Option<&str>,
        max: usize,
    ) -> (Vec<Listed>, bool) {
        let mut page = Vec::new();
        let mut last_prefix: Option<String> = None;
        // Pushes an entry; false once the page is full (and the entry is one too many).
        let push = |entry: Listed, page: &mut Vec<Listed>| {
            if page.len() >= max {
                return false;
            }
            page.push(entry);
            true
        };
        for space in &self.products {
            if !overlaps(&space.folder, prefix) || passed(&space.folder, after) {
                continue;
            }
            for month in self.candidate_months(space, prefix, after) {
                let folder = format!("{}{}/", space.folder, month.compact());
                if !overlaps(&folder, prefix) || passed(&folder, after) {
                    continue;
                }
                // A delimiter at or above the folder: the whole folder is one common prefix.
                if let Some(common) = fold(&folder, prefix, delimiter) {
                    if after.starts_with(common) || last_prefix.as_deref() == Some(common) {
                        continue;
                    }
                    if !push(Listed::Prefix(common.to_string()), &mut page) {
                        return (page, true);
                    }
                    last_prefix = Some(common.to_string());
                    continue;
                }
                for (key, variable) in Self::folder_keys(space, month) {
                    if !key.starts_with(prefix) || key.as_str() <= after {
                        continue;
                    }
                    if let Some(common) = fold(&key, prefix, delimiter) {
                        if after.starts_with(common) || last_prefix.as_deref() == Some(common) {
                            continue;
                        }
                        if !push(Listed::Prefix(common.to_string()), &mut page) {
                            return (page, true);
                        }
                        last_prefix = Some(common.to_string());
                        continue;
                    }
                    let size = self.size_of(&key, variable);
                    if !push(Listed::Object { key, size }, &mut page) {
                        return (page, true);
                    }
                }
            }
        }
        (page, false)
    }

    /// The months of `space` a listing of `prefix` after `after` can reach: one month when the
    /// prefix names it, otherwise every month from the one `after` is in.
    fn candidate_months(&self, space: &ProductSpace, prefix: &str, after: &str) -> Vec<YearMonth> {
        let named = |text: &str| {
            text.strip_prefix(space.folder.as_str())
                .and_then(|rest| rest.get(..6))
                .and_then(YearMonth::parse_compact)
        };
        let months = self.months(space.product);
        match (named(prefix), named(after)) {
            (Some(month), _) => months.into_iter().filter(|m| *m == month).collect(),
            (None, Some(from)) => months.into_iter().filter(|m| *m >= from).collect(),
            (None, None) => months,
        }
    }
}

/// Whether something under `folder` can start with `prefix`.
fn overlaps(folder: &str, prefix: &str) -> bool {
    folder.starts_with(prefix) || prefix.starts_with(folder)
}

/// Whether every key under `folder` sorts at or before `after`.
fn passed(folder: &str, after: &str) -> bool {
    after > folder && !after.starts_with(folder)
}

/// The common prefix `text` folds into: the prefix plus everything up to and including the
/// first delimiter after it.
fn fold<'a>(text: &'a str, prefix: &str, delimiter: Option<&str>) -> Option<&'a str> {
    let delimiter = delimiter?;
    let rest = text.get(prefix.len()..)?;
    if !text.starts_with(prefix) {
        return None;
    }
    let at = rest.find(delimiter)?;
    Some(&text[..prefix.len() + at + delimiter.len()])
}

/// The size the real object of `key` is modelled to have.
fn modelled_size(key: &str, variable: &Variable) -> u64 {
    const MB: u64 = 1_000_000;
    const GB: u64 = 1_000 * MB;
    let (low, high) = match variable.product {
        Product::AnPl if ["crwc", "cswc", "clwc", "ciwc", "cc"].contains(&variable.short) => {
            (300 * MB, 800 * MB)
        }
        Product::AnPl => (GB, 1_400 * MB),
        Product::AnSfc | Product::AnVinteg => (270 * MB, 1_100 * MB),
        Product::Invariant => (MB, 4 * MB),
        _ => (13 * MB, 670 * MB),
    };
    spread(key, low, high)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn small() -> Archive {
        Archive::new(ArchiveOptions {
            first: YearMonth {
                year: 1979,
                month: 1,
            },
            last: YearMonth {
                year: 1979,
                month: 2,
            },
            ..ArchiveOptions::default()
        })
    }

    /// Every key by walking the listing page by page.
    fn walk(archive: &Archive, prefix: &str, delimiter: Option<&str>, max: usize) -> Vec<Listed> {
        let mut all = Vec::new();
        let mut after = String::new();
        loop {
            let (page, more) = archive.list(prefix, &after, delimiter, max);
            assert!(page.len() <= max);
            after = match page.last() {
                Some(Listed::Object { key, .. }) => key.clone(),
                Some(Listed::Prefix(p)) => p.clone(),
                None => String::new(),
            };
            all.extend(page);
            if !more {
                return all;
            }
        }
    }

    #[test]
    fn the_whole_archive_is_about_0_8_m_keys() {
        let seen = Archive::new(ArchiveOptions::default());
        assert_eq!(seen.count(), 798_790);
        let all = Archive::new(ArchiveOptions {
            unconfirmed: true,
            ..ArchiveOptions::default()
        });
        assert_eq!(all.count(), 807_047);
    }

    #[test]
    fn listing_pages_through_every_key_in_order_and_each_one_is_served() {
        let archive = small();
        let listed = walk(&archive, "", None, 997);
        assert_eq!(listed.len() as u64, archive.count());
        let keys: Vec<&str> = listed
            .iter()
            .map(|l| match l {
                Listed::Object { key, .. } => key.as_str(),
                Listed::Prefix(p) => panic!("no delimiter, yet a prefix {p}"),
            })
            .collect();
        assert!(keys.windows(2).all(|w| w[0] < w[1]), "keys out of order");
        for entry in &listed {
            if let Listed::Object { key, size } = entry {
                assert_eq!(archive.lookup(key), Some(*size), "{key}");
                assert!(ObjectKey::parse(key).is_some(), "{key}");
            }
        }
        // Every product's keys are there: a day of pressure levels, a month of surface, two
        // half-month forecasts, one invariant step.
        let count = |prefix: &str| keys.iter().filter(|k| k.starts_with(prefix)).count();
        assert_eq!(count("e5.oper.an.pl/197901/"), 16 * 31);
        assert_eq!(count("e5.oper.an.sfc/197902/"), 62);
        assert_eq!(count("e5.oper.fc.sfc.minmax/197901/"), 5 * 2);
        assert_eq!(count("e5.oper.invariant/"), 14);
    }

    #[test]
    fn a_month_prefix_lists_only_that_folder() {
        let archive = small();
        let listed = walk(&archive, "e5.oper.an.pl/197902/", None, 100);
        assert_eq!(listed.len(), 16 * 28);
        assert!(listed.iter().all(|l| matches!(l,
            Listed::Object { key, .. } if key.starts_with("e5.oper.an.pl/197902/"))));
        assert!(walk(&archive, "e5.oper.an.pl/197903/", None, 100).is_empty());
        assert!(walk(&archive, "nothing/", None, 100).is_empty());
    }

    #[test]
    fn delimiter_listings_fold_products_and_months() {
        let archive = small();
        let products = walk(&archive, "", Some("/"), 3);
        assert_eq!(products.len(), 8);
        assert_eq!(
            products[0],
            Listed::Prefix("e5.oper.an.pl/".into()),
            "{products:?}"
        );
        let months = walk(&archive, "e5.oper.an.sfc/", Some("/"), 1);
        assert_eq!(
            months,
            vec![
                Listed::Prefix("e5.oper.an.sfc/197901/".into()),
                Listed::Prefix("e5.oper.an.sfc/197902/".into())
            ]
        );
    }

    #[test]
    fn lookup_refuses_what_the_archive_does_not_hold() {
        let archive = small();
        let good =
            "e5.oper.an.sfc/197901/e5.oper.an.sfc.128_167_2t.ll025sc.1979010100_1979013123.nc";
        assert!(archive.lookup(good).is_some());
        for bad in [
            // Outside the range of months.
            "e5.oper.an.sfc/197903/e5.oper.an.sfc.128_167_2t.ll025sc.1979030100_1979033123.nc",
            // Not a window of the product's cadence.
            "e5.oper.an.sfc/197901/e5.oper.an.sfc.128_167_2t.ll025sc.1979010100_1979011523.nc",
            // Unknown variable.
            "e5.oper.an.sfc/197901/e5.oper.an.sfc.128_999_xx.ll025sc.1979010100_1979013123.nc",
            "index.html",
            "",
        ] {
            assert_eq!(archive.lookup(bad), None, "{bad}");
        }
    }

    #[test]
    fn etags_are_the_md5_of_the_bytes_served() {
        let archive = Archive::new(ArchiveOptions::default());
        let body = |size: u64| -> Vec<u8> {
            let mut out = Vec::new();
            while (out.len() as u64) < size {
                let chunk = archive.body_chunk(out.len() as u64, (size as usize) - out.len());
                out.extend_from_slice(chunk);
            }
            out
        };
        for size in [1u64, 1000, CHECKPOINT as u64, 3 * CHECKPOINT as u64 + 17] {
            assert_eq!(archive.etag(size), hex::encode(Md5::digest(body(size))));
        }
        assert!(body(8).starts_with(HDF5_MAGIC));
        // Multipart: MD5 of the parts' MD5s, with the part count.
        for size in [PART as u64, 2 * PART as u64, 2 * PART as u64 + 12_345] {
            let bytes = body(size);
            let parts: Vec<_> = bytes.chunks(PART).map(Md5::digest).collect();
            let expected = if parts.len() == 1 {
                hex::encode(parts[0])
            } else {
                let mut outer = Md5::new();
                for part in &parts {
                    outer.update(part);
                }
                format!("{}-{}", hex::encode(outer.finalize()), parts.len())
            };
            assert_eq!(archive.etag(size), expected, "{size}");
        }
    }

    #[test]
    fn scaled_sizes_follow_the_model_and_the_whole_archive_is_near_a_petabyte() {
        let archive = Archive::new(ArchiveOptions {
            scale: Some(1.0),
            ..ArchiveOptions::default()
        });
        let key = "e5.oper.an.pl/202201/e5.oper.an.pl.128_131_u.ll025uv.2022010100_2022010123.nc";
        let size = archive.lookup(key).unwrap();
        assert!((1_000_000_000..1_400_000_000).contains(&size), "{size}");
        let petabytes = archive.modelled_bytes() as f64 / 1e15;
        assert!((0.5..1.0).contains(&petabytes), "{petabytes} PB");
    }
}
