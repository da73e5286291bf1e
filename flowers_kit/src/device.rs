//! Where dfdx work runs — the CPU, or an NVIDIA GPU with the `cuda` feature — and the one
//! place that opens a device and turns dfdx's errors into this crate's.

use std::str::FromStr;

use crate::error::{Error, Result};

/// Where the forward pass or training runs. Extractors and [`TrainConfig`] start on
/// [`DeviceKind::preferred`]: the GPU in a build with CUDA where one answers, else the CPU.
///
/// [`TrainConfig`]: crate::train::TrainConfig
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeviceKind {
    /// The CPU: the native kernels, or dfdx's CPU device.
    Cpu,
    /// dfdx's CUDA device (GPU 0); needs the `cuda` feature.
    Cuda,
}

impl DeviceKind {
    /// Where work runs when nothing says otherwise: GPU 0 in a build with the `cuda` feature
    /// where CUDA's driver lists one, else the CPU. The driver is asked once per process.
    ///
    /// ```
    /// use flowers_kit::device::DeviceKind;
    /// // A build without CUDA always answers the CPU.
    /// # #[cfg(not(feature = "cuda"))]
    /// assert_eq!(DeviceKind::preferred(), DeviceKind::Cpu);
    /// ```
    pub fn preferred() -> DeviceKind {
        #[cfg(feature = "cuda")]
        {
            static PREFERRED: std::sync::OnceLock<DeviceKind> = std::sync::OnceLock::new();
            *PREFERRED.get_or_init(|| match first_cuda_device() {
                Ok(_) => DeviceKind::Cuda,
                Err(_) => DeviceKind::Cpu,
            })
        }
        #[cfg(not(feature = "cuda"))]
        DeviceKind::Cpu
    }
}

impl Default for DeviceKind {
    /// [`DeviceKind::preferred`].
    fn default() -> Self {
        DeviceKind::preferred()
    }
}

impl FromStr for DeviceKind {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        match s.to_ascii_lowercase().as_str() {
            "cpu" => Ok(DeviceKind::Cpu),
            "cuda" | "gpu" => Ok(DeviceKind::Cuda),
            other => Err(Error::InvalidArgument(format!(
                "unknown device '{other}': use cpu or cuda"
            ))),
        }
    }
}

/// A dfdx device the crate can run on: [`dfdx::tensor::Cpu`], or `Cuda` with the feature.
pub trait DfdxDevice: dfdx::tensor_ops::Device<f32> + Clone {}
impl<D: dfdx::tensor_ops::Device<f32> + Clone> DfdxDevice for D {}

/// dfdx's error (out of memory, a CUDA failure…) as [`Error::Backend`].
pub(crate) fn dfdx_error(e: impl std::fmt::Debug) -> Error {
    Error::Backend(format!("{e:?}"))
}

/// GPU 0, with its random generator seeded by `seed`.
#[cfg(feature = "cuda")]
pub(crate) fn open_cuda(seed: u64) -> Result<dfdx::tensor::Cuda> {
    // cudarc unwraps the driver's first answers (no driver, no device visible) inside dfdx's
    // try_build: ask them here first, so that they are an error, not a panic.
    first_cuda_device().map_err(|e| Error::Backend(format!("cannot open CUDA device 0: {e}")))?;
    dfdx::tensor::Cuda::try_build(0, seed)
        .map_err(|e| Error::Backend(format!("cannot open CUDA device 0: {e:?}")))
}

/// GPU 0 as the CUDA driver knows it, after starting the driver; the driver's error as text.
#[cfg(feature = "cuda")]
pub(crate) fn first_cuda_device() -> std::result::Result<cudarc::driver::sys::CUdevice, String> {
    use cudarc::driver::result;
    result::init().map_err(|e| format!("the CUDA driver did not start: {}", driver_error(&e)))?;
    match result::device::get_count() {
        Ok(count) if count > 0 => {}
        Ok(_) => return Err("the CUDA driver lists no GPU".to_owned()),
        Err(e) => {
            return Err(format!(
                "the CUDA driver lists no GPU: {}",
                driver_error(&e)
            ))
        }
    }
    result::device::get(0).map_err(|e| driver_error(&e))
}

/// A driver error as text, without cudarc's `Debug`, which panics where the driver cannot name
/// its own error: the stub `libcuda.so` of a toolkit, found where no driver is installed (a
/// container started without NVIDIA's runtime) answers every call, that one too, with
/// CUDA_ERROR_STUB_LIBRARY.
#[cfg(feature = "cuda")]
fn driver_error(e: &cudarc::driver::result::DriverError) -> String {
    match e.error_string() {
        Ok(text) => format!("{} ({:?})", text.to_string_lossy(), e.0),
        Err(_) => format!("{:?}", e.0),
    }
}

/// The error for asking a build without the `cuda` feature for the GPU.
#[cfg(not(feature = "cuda"))]
pub(crate) fn no_cuda() -> Error {
    Error::InvalidArgument(
        "this build has no CUDA support: rebuild flowers_kit with `--features cuda`".into(),
    )
}
