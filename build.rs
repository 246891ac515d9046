//! Marks optimized builds with `cfg(optimized)`: the memory and scale tests measure the proxy
//! as shipped, and are ignored (saying why) in an unoptimized `cargo test`.

fn main() {
    println!("cargo::rustc-check-cfg=cfg(optimized)");
    println!("cargo::rerun-if-env-changed=OPT_LEVEL");
    if std::env::var("OPT_LEVEL").is_ok_and(|level| level != "0") {
        println!("cargo::rustc-cfg=optimized");
    }
}
