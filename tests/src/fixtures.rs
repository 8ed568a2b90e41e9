//! A synthetic bucket laid out exactly like `nsf-ncar-era5`, generated from the catalog:
//! monthly, daily, half-month and invariant products; a leap February, 30- and 31-day months,
//! December's second half-month file ending in January; objects stored as multipart uploads
//! (multipart ETags) and as single PUTs; some with an additional checksum (CRC64NVME over the
//! whole object, or a composite CRC32C of the parts of a multipart upload); and junk
//! keys (`index.html`, folder markers, stray files) that discovery must ignore.
//!
//! Contents are deterministic per key (an HDF5 signature, then pseudo-random bytes), so a test
//! can compare downloaded files byte for byte against [`object_bytes`].

use bytes::Bytes;
use common::catalog::Product;
use common::dates::YearMonth;

use crate::s3_server::{ChecksumAlgo, PutOptions, TestS3};

/// The HDF5 signature every NetCDF4 file starts with.
pub const HDF5_MAGIC: &[u8; 8] = b"\x89HDF\r\n\x1a\n";

/// Upload part size of the fixture's multipart objects: not one of the usual sizes, so the
/// verifier's part-size inference is exercised.
pub const FIXTURE_UPLOAD_PART: usize = 1 << 20;

/// One object put into the bucket.
#[derive(Clone, Debug)]
pub struct SeededObject {
    /// Key.
    pub key: String,
    /// Exact contents.
    pub data: Bytes,
    /// Stored as a multipart upload.
    pub multipart: bool,
}

/// How big the objects are.
#[derive(Clone, Copy, Debug)]
pub struct SizeRange {
    /// Smallest object.
    pub min: usize,
    /// Largest object.
    pub max: usize,
}

impl SizeRange {
    /// Small objects for fast tests: 48 KiB to 3 MiB.
    pub const SMALL: SizeRange = SizeRange {
        min: 48 << 10,
        max: 3 << 20,
    };
}

fn key_hash(key: &str) -> u64 {
    // FNV-1a: stable, dependency-free, good enough to spread sizes and seeds.
    key.bytes().fold(0xcbf2_9ce4_8422_2325u64, |hash, byte| {
        (hash ^ u64::from(byte)).wrapping_mul(0x0100_0000_01b3)
    })
}

/// Deterministic contents of `size` bytes for `key`: the HDF5 signature, then xorshift bytes
/// seeded by the key.
pub fn object_bytes(key: &str, size: usize) -> Bytes {
    let mut data = Vec::with_capacity(size);
    data.extend_from_slice(&HDF5_MAGIC[..size.min(HDF5_MAGIC.len())]);
    let mut state = key_hash(key) | 1;
    while data.len() < size {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        let word = state.to_le_bytes();
        let take = (size - data.len()).min(8);
        data.extend_from_slice(&word[..take]);
    }
    Bytes::from(data)
}

/// The size a key gets within `range`.
pub fn object_size(key: &str, range: SizeRange) -> usize {
    let span = (range.max - range.min).max(1) as u64;
    range.min + (key_hash(key).rotate_left(17) % span) as usize
}

/// Every data key of the standard fixture, generated from the catalog.
pub fn standard_keys() -> Vec<String> {
    let mut keys = Vec::new();
    let month = |year, month| YearMonth { year, month };
    let mut add = |product: Product, short: &str, months: &[YearMonth]| {
        let variable = product
            .variable(short)
            .expect("fixture variables exist in the catalog");
        for m in months {
            for (first, last) in product.windows_in_month(*m) {
                keys.push(variable.key(first, last));
            }
        }
    };
    let surface_months = [
        month(2023, 12),
        month(2024, 1),
        month(2024, 2),
        month(2024, 4),
    ];
    add(Product::AnSfc, "2t", &surface_months);
    add(Product::AnSfc, "msl", &surface_months);
    add(Product::AnVinteg, "viwve", &[month(2024, 1)]);
    add(
        Product::FcSfcAccumu,
        "cp",
        &[month(2023, 11), month(2023, 12), month(2024, 1)],
    );
    add(Product::Invariant, "lsm", &[Product::invariant_month()]);
    add(Product::Invariant, "z", &[Product::invariant_month()]);
    // Pressure levels are daily: only the days around the leap day, to keep the bucket small.
    for short in ["t", "u"] {
        let variable = Product::AnPl
            .variable(short)
            .expect("fixture variables exist in the catalog");
        for (first, last) in Product::AnPl
            .windows_in_month(month(2024, 2))
            .into_iter()
            .chain(Product::AnPl.windows_in_month(month(2024, 3)))
            .filter(|(first, _)| {
                let day = first.date;
                day >= jiff::civil::date(2024, 2, 27) && day <= jiff::civil::date(2024, 3, 2)
            })
        {
            keys.push(variable.key(first, last));
        }
    }
    keys.sort();
    keys
}

/// Keys that are not ERA5 objects but sit in the real bucket's kind of layout.
pub const JUNK_KEYS: [&str; 6] = [
    "index.html",
    "e5.oper.an.sfc/",
    "e5.oper.an.sfc/202401/",
    "e5.oper.an.sfc/202401/README.txt",
    "e5.oper.an.sfc/202401/e5.oper.an.sfc.128_167_2t.ll025sc.2024010100_2024013123.nc.md5",
    "e5.oper.fc.sfc.accumu/202401/e5.oper.fc.sfc.accumu.128_143_cp.ll025sc.2024010106_2024011606.nc.tmp",
];

/// Puts the standard fixture into `s3`: every key of [`standard_keys`] (multipart for about
/// half of them; an additional checksum on a third: a composite CRC32C of the parts when
/// multipart, as S3 stores for a multipart upload with CRC32C, otherwise a CRC64NVME), plus
/// [`JUNK_KEYS`].
pub fn seed_standard(s3: &TestS3, sizes: SizeRange) -> Vec<SeededObject> {
    let mut seeded = Vec::new();
    for key in standard_keys() {
        let size = object_size(&key, sizes);
        let data = object_bytes(&key, size);
        let hash = key_hash(&key);
        let multipart = hash.is_multiple_of(2) && size > FIXTURE_UPLOAD_PART;
        let options = PutOptions {
            part_size: multipart.then_some(FIXTURE_UPLOAD_PART),
            checksum: hash.is_multiple_of(3).then_some(if multipart {
                ChecksumAlgo::Crc32c
            } else {
                ChecksumAlgo::Crc64nvme
            }),
            composite: multipart,
            ..PutOptions::default()
        };
        s3.put_object_with(&key, data.clone(), options);
        seeded.push(SeededObject {
            key,
            data,
            multipart,
        });
    }
    for junk in JUNK_KEYS {
        s3.put_object(junk, Bytes::from_static(b"not an era5 object"));
    }
    seeded
}

#[cfg(test)]
mod tests {
    use super::*;
    use common::ObjectKey;

    #[test]
    fn standard_keys_parse_and_cover_the_calendar_edges() {
        let keys = standard_keys();
        assert!(keys.iter().all(|k| ObjectKey::parse(k).is_some()));
        assert!(
            keys.iter().any(|k| k.ends_with("2024020100_2024022923.nc")),
            "leap February"
        );
        assert!(
            keys.iter().any(|k| k.ends_with("2024040100_2024043023.nc")),
            "30-day month"
        );
        assert!(
            keys.iter().any(|k| k.ends_with("2023121606_2024010106.nc")),
            "December into January"
        );
        assert!(
            keys.iter().any(|k| k.contains("2024022900_2024022923")),
            "leap day"
        );
        assert!(JUNK_KEYS.iter().all(|k| ObjectKey::parse(k).is_none()));
    }

    #[test]
    fn contents_are_deterministic_and_start_like_hdf5() {
        let a = object_bytes("k", 1000);
        assert_eq!(a, object_bytes("k", 1000));
        assert_ne!(a, object_bytes("other", 1000));
        assert_eq!(&a[..8], HDF5_MAGIC);
    }
}
