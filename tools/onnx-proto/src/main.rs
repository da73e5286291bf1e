//! Writes the Rust types of onnx.proto (first argument: the .proto file) into the folder
//! named by the second argument, as `onnx.rs`.
fn main() {
    let args: Vec<String> = std::env::args().collect();
    let [_, proto, out] = args.as_slice() else {
        eprintln!("usage: onnx-proto ONNX_PROTO OUT_DIR");
        std::process::exit(2);
    };
    let dir = std::path::Path::new(proto).parent().expect("the .proto file's folder");
    let files = protox::compile([proto], [dir]).expect("onnx.proto parses");
    let mut config = prost_build::Config::new();
    config.out_dir(out);
    config.compile_fds(files).expect("prost-build generates the types");
}
