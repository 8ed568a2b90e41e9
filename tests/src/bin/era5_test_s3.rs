//! `era5-test-s3`: the test S3 server as a standalone process, for trying `era5 sync` without
//! the real bucket and for benchmarks. It serves an in-memory bucket seeded with the
//! ERA5-shaped fixture or with the files of a directory, or an empty one to upload to
//! (PutObject and multipart uploads, checked as S3 checks them).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use bytes::Bytes;
use clap::Parser;
use tests::fixtures::{SizeRange, seed_standard};
use tests::s3_server::{PutOptions, TestS3};

/// A local S3 server holding an ERA5-shaped bucket, or, with neither --fixture nor --dir, an
/// empty bucket: a destination for uploads.
#[derive(Debug, Parser)]
#[command(name = "era5-test-s3", version)]
struct Args {
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1:9000")]
    listen: SocketAddr,
    /// Bucket name.
    #[arg(long, default_value = "nsf-ncar-era5")]
    bucket: String,
    /// Seed the synthetic ERA5 fixture (products around Jan-Feb 2024).
    #[arg(long)]
    fixture: bool,
    /// Largest fixture object, in MiB.
    #[arg(long, default_value_t = 3)]
    fixture_max_mib: usize,
    /// Serve every file under this directory, keyed by its relative path.
    #[arg(long)]
    dir: Option<PathBuf>,
    /// Store files as multipart uploads of this many MiB (0: single PUTs, plain MD5 ETags).
    #[arg(long, default_value_t = 8)]
    part_mib: usize,
    /// Inject the chaos mix of faults (SlowDown, resets, truncations, stalls, 500s and slow
    /// bodies, three of each, see `tests::faults::chaos_mix`), for the chaos benchmark.
    #[arg(long)]
    chaos: bool,
    /// Smallest part, in KiB, that CompleteMultipartUpload accepts for every part but the
    /// last (S3: 5 MiB); smaller lets a destination take small multipart uploads.
    #[arg(long, default_value_t = 5 << 10)]
    min_part_kib: u64,
}

fn load_dir(
    s3: &TestS3,
    root: &Path,
    dir: &Path,
    part_size: Option<usize>,
) -> std::io::Result<usize> {
    let mut count = 0;
    for entry in std::fs::read_dir(dir)? {
        let path = entry?.path();
        if path.is_dir() {
            count += load_dir(s3, root, &path, part_size)?;
            continue;
        }
        let key = path
            .strip_prefix(root)
            .unwrap_or(&path)
            .to_string_lossy()
            .replace('\\', "/");
        let data = Bytes::from(std::fs::read(&path)?);
        s3.put_object_with(
            &key,
            data,
            PutOptions {
                part_size,
                ..PutOptions::default()
            },
        );
        count += 1;
    }
    Ok(count)
}

fn main() {
    let args = Args::parse();
    let s3 = match TestS3::start_on(&args.bucket, args.listen) {
        Ok(s3) => s3,
        Err(error) => {
            eprintln!("era5-test-s3: cannot listen on {}: {error}", args.listen);
            std::process::exit(1);
        }
    };
    let mut objects = 0;
    if args.fixture {
        objects += seed_standard(
            &s3,
            SizeRange {
                min: 48 << 10,
                max: (args.fixture_max_mib.max(1)) << 20,
            },
        )
        .len();
    }
    if let Some(dir) = &args.dir {
        match load_dir(
            &s3,
            dir,
            dir,
            (args.part_mib > 0).then_some(args.part_mib << 20),
        ) {
            Ok(count) => objects += count,
            Err(error) => {
                eprintln!("era5-test-s3: cannot read {}: {error}", dir.display());
                std::process::exit(1);
            }
        }
    }
    if args.chaos {
        s3.set_faults(tests::faults::chaos_mix());
    }
    s3.set_min_part_size(args.min_part_kib << 10);
    println!(
        "era5-test-s3: serving {objects} objects of bucket {} at {}",
        args.bucket,
        s3.endpoint()
    );
    // Serve until killed; the server runs on its own thread.
    loop {
        std::thread::park();
    }
}
