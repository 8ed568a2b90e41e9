//! MD5 for verification, the dominant CPU cost of `--verify etag|full`.
//!
//! The `md-5` crate with its `asm` feature hashes through hand-written x86-64 assembly, as
//! fast as OpenSSL's (514 MB/s each, median of 21 interleaved rounds; the portable Rust code
//! gave 449) and built from the crate with nothing but a C compiler, so a fresh machine needs
//! no OpenSSL headers. Other targets get the portable code. The figures and the other choices
//! measured (vendored OpenSSL, AWS-LC) are in `bench/RESULTS.md`.

use md5::Digest;

/// An MD5 computation.
#[derive(Clone, Default)]
pub struct Md5(md5::Md5);

impl Md5 {
    /// A fresh computation.
    pub fn new() -> Self {
        Self::default()
    }

    /// Feeds bytes.
    pub fn update(&mut self, bytes: &[u8]) {
        self.0.update(bytes);
    }

    /// The digest.
    pub fn finish(self) -> [u8; 16] {
        self.0.finalize().into()
    }

    /// The MD5 of `bytes`.
    pub fn digest(bytes: &[u8]) -> [u8; 16] {
        md5::Md5::digest(bytes).into()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn agrees_with_the_reference_vectors() {
        for (input, expected) in [
            (&b""[..], "d41d8cd98f00b204e9800998ecf8427e"),
            (b"abc", "900150983cd24fb0d6963f7d28e17f72"),
            (
                b"The quick brown fox jumps over the lazy dog",
                "9e107d9d372bb6826bd81d3542a419d6",
            ),
        ] {
            assert_eq!(hex::encode(Md5::digest(input)), expected);
            let mut streamed = Md5::new();
            for byte in input {
                streamed.update(std::slice::from_ref(byte));
            }
            assert_eq!(hex::encode(streamed.finish()), expected);
        }
    }
}
