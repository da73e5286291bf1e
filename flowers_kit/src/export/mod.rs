//! A trained classifier as one ONNX file, to run where the kit does not: ONNX Runtime,
//! OpenVINO, a phone or a browser.
//!
//! The file holds the whole way from a resized photo to the answer: the input rescaling
//! (RGB bytes to the network's range), the backbone with any fine-tuned blocks, the head and a
//! softmax. Its one input, `pixels`, is `uint8 [batch, size, size, 3]` (NHWC, RGB), the
//! photo already resized to the model's size; an app must resize as the classifier was
//! trained (`resize` in the metadata: the tutorial's is TF 1's bilinear resize without
//! half-pixel centres, `tf.compat.v1.image.resize_images`) and round to bytes, which the kit
//! itself does not (its resized pixels stay f32). Its one output, `probabilities`,
//! is `float [batch, classes]`. The class names are in the model's `metadata_props` under
//! `class_names`, as a JSON list.
//!
//! The ONNX writer (prost, and the Rust types of ONNX's own `onnx.proto`) is built with the
//! `onnx` feature, which the `flowers` command line enables. The notebooks' build leaves it
//! out, as it leaves out the HTTP client: [`export_onnx`] then runs `flowers export`.

#[cfg(feature = "onnx")]
mod onnx;
#[cfg(feature = "onnx")]
#[allow(clippy::all, missing_docs, rustdoc::all)]
mod onnx_proto;

use std::path::Path;

use crate::error::{Error, Result};

#[cfg(feature = "onnx")]
pub use onnx::{CLASS_NAMES_KEY, INPUT, IR_VERSION, OPSET, OUTPUT};

/// The ONNX model of `classifier` with `extractor`'s network (which must be the one it was
/// trained on; a fine-tuned classifier puts its own blocks in), serialized.
#[cfg(feature = "onnx")]
pub fn onnx_bytes(
    classifier: &crate::train::Classifier,
    extractor: &crate::features::FeatureExtractor,
) -> Result<Vec<u8>> {
    classifier.source().check(extractor)?;
    let fine_tuned = classifier.fine_tuned_extractor(extractor)?;
    let network = fine_tuned.as_ref().unwrap_or(extractor).network();
    onnx::model_bytes(classifier, network, extractor.resize_method().name())
}

/// Writes the ONNX model of the classifier file `classifier` to `out` (a `.onnx` path,
/// written atomically) and returns its size in bytes. The backbone's weights are the ones
/// the classifier was trained with (the file it names, or the published ones from the
/// cache).
///
/// In a build without the `onnx` feature (the notebooks') this runs `flowers export`, found
/// as downloads find `flowers fetch`.
///
/// ```no_run
/// use flowers_kit::export::export_onnx;
/// let bytes = export_onnx("flowers.safetensors".as_ref(), "flowers.onnx".as_ref())?;
/// println!("flowers.onnx: {:.1} MB", bytes as f64 / 1e6);
/// # Ok::<(), flowers_kit::Error>(())
/// ```
pub fn export_onnx(classifier: &Path, out: &Path) -> Result<u64> {
    if out.extension().and_then(|e| e.to_str()) != Some("onnx") {
        return Err(Error::InvalidArgument(format!(
            "an ONNX model is written to a .onnx file, not {}",
            out.display()
        )));
    }
    export_here_or_there(classifier, out)?;
    Ok(std::fs::metadata(out).map_err(|e| Error::io(out, e))?.len())
}

#[cfg(feature = "onnx")]
fn export_here_or_there(classifier: &Path, out: &Path) -> Result<()> {
    let classifier = crate::train::Classifier::load(classifier)?;
    let extractor = classifier.training_extractor(None)?;
    crate::files::write_atomically(out, &onnx_bytes(&classifier, &extractor)?)
}

#[cfg(not(feature = "onnx"))]
fn export_here_or_there(classifier: &Path, out: &Path) -> Result<()> {
    use std::io::Write;
    let program = crate::data::fetch::flowers_program().ok_or_else(|| {
        Error::InvalidArgument(format!(
            "this build of the kit (without its `onnx` feature, as the notebooks build it) \
             exports with the `flowers` program, and none was found: build it with \
             `cargo build -p flowers_kit --bin flowers` (./lab does) or name it in {}",
            crate::data::fetch::FETCH_PROGRAM_VARIABLE
        ))
    })?;
    // Its lines follow what this process printed so far.
    let _ = std::io::stdout().flush();
    let output = std::process::Command::new(&program)
        .arg("export")
        .arg("--classifier")
        .arg(classifier)
        .arg("--out")
        .arg(out)
        .stdin(std::process::Stdio::null())
        .output()
        .map_err(|e| Error::io(&program, e))?;
    // Its one line on success ("Wrote …") is the caller's to print, with the size returned.
    if !output.status.success() {
        let stderr = String::from_utf8_lossy(&output.stderr);
        // Its last lines say why; a runaway message is cut.
        let tail: String = stderr
            .chars()
            .rev()
            .take(2000)
            .collect::<Vec<_>>()
            .into_iter()
            .rev()
            .collect();
        return Err(Error::InvalidArgument(format!(
            "`flowers export` could not export {}: {}",
            classifier.display(),
            tail.trim()
        )));
    }
    Ok(())
}
