//! Compiles `proto/era5.proto` with protox (pure Rust), so building needs no system protoc.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=proto/era5.proto");
    let descriptors = protox::compile(["proto/era5.proto"], ["proto"])?;
    tonic_prost_build::configure()
        .build_server(true)
        .build_client(true)
        .compile_fds(descriptors)?;
    Ok(())
}
