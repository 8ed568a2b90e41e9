//! The connection cap, proven from outside the client: a counting TCP proxy between `era5` and
//! the test server sees every connection, and its peak never exceeds `--connections`, even with
//! throttling, resets, truncations, stalls and slow bodies all happening at once.

mod support;

use std::time::Duration;

use support::*;
use tests::faults::{Fault, FaultRule};
use tests::proxy::CountingProxy;

const LIMIT: Duration = Duration::from_secs(180);

fn every_nth(fault: Fault, skip: usize) -> FaultRule {
    FaultRule {
        method: Some(http::Method::GET),
        key_contains: Some("e5.oper".into()),
        object_gets_only: true,
        skip,
        times: Some(3),
        fault,
    }
}

fn mixed_faults(s3: &TestS3) {
    s3.set_faults(vec![
        every_nth(Fault::SlowDown, 0),
        every_nth(
            Fault::ResetMidBody {
                after_bytes: 50_000,
            },
            2,
        ),
        every_nth(
            Fault::TruncateBody {
                after_bytes: 70_000,
            },
            4,
        ),
        every_nth(
            Fault::StallBody {
                after_bytes: 10_000,
            },
            6,
        ),
        every_nth(
            Fault::Status {
                status: 500,
                code: "InternalError".into(),
            },
            8,
        ),
        FaultRule {
            times: Some(10),
            ..every_nth(
                Fault::SlowBody {
                    bytes_per_sec: 2 << 20,
                },
                10,
            )
        },
    ]);
}

fn bounded(connections: usize) {
    let (s3, seeded) = seeded_server();
    mixed_faults(&s3);
    let proxy = CountingProxy::start(s3.addr());
    let scratch = Scratch::new();
    let mut args = sync_args(
        &proxy.endpoint(),
        &scratch.dest(),
        "e5.oper.an.sfc,e5.oper.an.pl,e5.oper.fc.sfc.accumu",
        "",
        "2023-12",
        "2024-04",
    );
    args.extend([
        "--connections".into(),
        connections.to_string(),
        "--stall-timeout".into(),
        "1".into(),
        "--part-size".into(),
        "256KiB".into(),
    ]);
    let run = run_era5(&scratch, &args, LIMIT);
    run.expect_code(0);
    assert!(
        run.stdout.contains("slowdown") && run.stdout.contains("stall"),
        "faults did not happen: {}",
        run.stdout
    );
    assert_mirrored(
        &scratch.dest(),
        &under(&seeded, &["e5.oper.an.sfc/", "e5.oper.an.pl/"]),
    );
    assert!(
        proxy.total_accepted() > connections,
        "the faults should have forced new connections"
    );
    assert!(
        proxy.max_open() <= connections,
        "{} connections were open at once with --connections {connections}",
        proxy.max_open()
    );
    assert!(
        proxy.max_open() >= connections.min(2),
        "the test did not load the pool"
    );
}

#[test]
fn open_connections_never_exceed_the_cap_under_mixed_faults() {
    bounded(4);
}

#[test]
fn a_cap_of_one_connection_still_completes_under_faults() {
    bounded(1);
}
