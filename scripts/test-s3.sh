# Sourced by scripts/wheel-check and scripts/image-check: starts the test S3 server with the
# synthetic ERA5 fixture on a free loopback port.
#   start_test_s3 LOG   sets $server (its pid, for the caller's cleanup) and $endpoint
start_test_s3() {
    local log=$1 port
    cargo build --quiet --locked -p tests --bin era5-test-s3
    port=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
    "${CARGO_TARGET_DIR:-target}/debug/era5-test-s3" --fixture --listen "127.0.0.1:$port" >"$log" 2>&1 &
    server=$!
    for _ in $(seq 100); do
        grep -q "serving" "$log" && break
        sleep 0.1
    done
    grep -q "serving" "$log" || {
        cat "$log" >&2
        return 1
    }
    endpoint="http://127.0.0.1:$port"
}
