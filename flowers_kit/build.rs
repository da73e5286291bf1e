//! `--cfg flowers_kit_cuda` (how `./lab --cuda` builds the notebooks' kit, whose `:dep` line
//! cannot name features) means the `cuda` feature: Cargo.toml's target table adds dfdx's CUDA
//! device and cudarc for it, and this sets the feature's cfg for the kit's own code.
fn main() {
    println!("cargo::rustc-check-cfg=cfg(flowers_kit_cuda)");
    println!("cargo::rerun-if-changed=build.rs");
    if std::env::var_os("CARGO_CFG_FLOWERS_KIT_CUDA").is_some() {
        println!("cargo::rustc-cfg=feature=\"cuda\"");
    }
}
