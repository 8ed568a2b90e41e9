//! `era5-manifest-bench`: how long loading a manifest of a million records takes, and how much
//! memory it needs (targets: under 5 s and under 200 MiB).
//!
//! ```text
//! era5-manifest-bench [--records N] [--dir DIR]
//! ```
//!
//! Writes DIR/.era5/manifest.jsonl with N records shaped like the archive's (ERA5 keys,
//! multipart ETags, composite checksums, file identities), about 300 bytes a line, unless it
//! is already there; then, in a fresh process each, opens it as `era5 sync` does and as a
//! cluster worker does, and reports the wall time and the peak resident memory (VmHWM) of the
//! process that loaded it.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.get(1).map(String::as_str) == Some("--load") {
        return load(Path::new(&args[2]), &args[3]);
    }
    let mut records = 1_000_000usize;
    let mut dir = std::env::temp_dir().join("era5-manifest-bench");
    let mut rest = args.iter().skip(1);
    while let Some(flag) = rest.next() {
        match flag.as_str() {
            "--records" => {
                records = rest
                    .next()
                    .and_then(|n| n.parse().ok())
                    .expect("--records N");
            }
            "--dir" => dir = PathBuf::from(rest.next().expect("--dir DIR")),
            other => {
                eprintln!("era5-manifest-bench: unknown argument `{other}`");
                std::process::exit(2);
            }
        }
    }
    let state = dir.join(".era5");
    let snapshot = state.join("manifest.jsonl");
    let wanted_lines = records;
    let have = std::fs::read_to_string(state.join("records")).ok();
    if have.as_deref() != Some(&records.to_string()) {
        generate(&state, records);
    }
    let bytes = std::fs::metadata(&snapshot).map_or(0, |m| m.len());
    println!(
        "manifest: {wanted_lines} records, {:.0} MiB on disk",
        bytes as f64 / f64::from(1 << 20)
    );
    println!("| opened as | records | load s | peak RSS MiB |");
    println!("|---|---:|---:|---:|");
    for role in ["sync", "worker"] {
        let output = Command::new(std::env::current_exe().expect("own path"))
            .args(["--load", &dir.display().to_string(), role])
            .output()
            .expect("run the loader");
        print!("{}", String::from_utf8_lossy(&output.stdout));
        if !output.status.success() {
            eprintln!("{}", String::from_utf8_lossy(&output.stderr));
            std::process::exit(1);
        }
    }
}

/// Writes `records` lines, streaming (the generator holds one line at a time).
fn generate(state: &Path, records: usize) {
    std::fs::create_dir_all(state).expect("state dir");
    let path = state.join("manifest.jsonl");
    let mut out = std::io::BufWriter::with_capacity(1 << 20, std::fs::File::create(&path).unwrap());
    let variables = [
        "t", "u", "v", "q", "z", "w", "r", "d", "vo", "pv", "o3", "cc", "clwc", "ciwc", "crwc",
        "cswc",
    ];
    let mut written = 0usize;
    let mut day = jiff::civil::date(1940, 1, 1);
    'outer: loop {
        for (n, var) in variables.iter().enumerate() {
            if written == records {
                break 'outer;
            }
            let ymd = day.strftime("%Y%m%d");
            let ym = day.strftime("%Y%m");
            let key = format!(
                "e5.oper.an.pl/{ym}/e5.oper.an.pl.128_{:03}_{var}.ll025sc.{ymd}00_{ymd}23.nc",
                129 + n
            );
            let digest = hex::encode(<md5::Md5 as md5::Digest>::digest(key.as_bytes()));
            writeln!(
                out,
                r#"{{"key":"{key}","size":{},"etag":"{digest}-{}","last_modified":"2024-05-01T12:00:00Z","checksum":"crc32c:{}==-{}","verified":"full","verified_at":"2026-11-30T12:00:00Z","file":{{"ino":{},"mtime_ns":{}}}}}"#,
                1_000_000_000 + written as u64 * 7919 % 400_000_000,
                120 + n,
                &digest[..6],
                120 + n,
                1_000_000 + written,
                1_780_000_000_000_000_000u64 + written as u64,
            )
            .unwrap();
            written += 1;
        }
        day = day.tomorrow().expect("a next day");
    }
    out.into_inner().unwrap().sync_all().unwrap();
    std::fs::write(state.join("records"), records.to_string()).unwrap();
}

/// Opens the manifest in this (fresh) process and prints one table row.
fn load(dir: &Path, role: &str) {
    let state = dir.join(".era5");
    let started = Instant::now();
    let manifest = match role {
        "sync" => engine::manifest::Manifest::open(&state, None),
        _ => engine::manifest::Manifest::open(&state, Some("bench")),
    }
    .expect("open the manifest");
    let elapsed = started.elapsed();
    let peak_kib: u64 = std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmHWM:"))?
                .split_whitespace()
                .nth(1)?
                .parse()
                .ok()
        })
        .unwrap_or(0);
    println!(
        "| {role} | {} | {:.2} | {} |",
        manifest.len(),
        elapsed.as_secs_f64(),
        peak_kib / 1024
    );
    // A worker's journal of its own is removed again, so reruns measure the same thing.
    let journal = manifest.path().to_path_buf();
    drop(manifest);
    if role != "sync" {
        let _ = std::fs::remove_file(journal);
    }
}
