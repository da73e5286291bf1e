//! Where dfdx work runs — the CPU, or an NVIDIA GPU with the `cuda` feature — and the one
//! place that opens a device and turns dfdx's errors into this crate's.

use std::str::FromStr;

use crate::error::{Error, Result};

/// Where the forward pass or training runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum DeviceKind {
    /// dfdx's CPU device.
    #[default]
    Cpu,
    /// dfdx's CUDA device (GPU 0); needs the `cuda` feature.
    Cuda,
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
    dfdx::tensor::Cuda::try_build(0, seed)
        .map_err(|e| Error::Backend(format!("cannot open CUDA device 0: {e:?}")))
}

/// The error for asking a build without the `cuda` feature for the GPU.
#[cfg(not(feature = "cuda"))]
pub(crate) fn no_cuda() -> Error {
    Error::InvalidArgument(
        "this build has no CUDA support: rebuild flowers_kit with `--features cuda`".into(),
    )
}

/// Where the kit's work runs on this machine, as notebook 00 shows it in its first cells: the
/// CPU that runs extraction and training by default, and whether an NVIDIA GPU is there for
/// [`DeviceKind::Cuda`].
///
/// ```
/// let here = flowers_kit::device::Compute::detect();
/// assert!(here.to_string().starts_with("CPU: "));
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Compute {
    /// The CPU's model name, from `/proc/cpuinfo` (`"unknown CPU"` where there is none).
    pub cpu: String,
    /// The threads extraction and training use (rayon's pool).
    pub threads: usize,
    /// The instruction set the native kernels run with.
    pub kernels: crate::backend::native::Kernels,
    /// The GPU, if one is found.
    pub gpu: Gpu,
}

/// What [`Compute::detect`] found of an NVIDIA GPU.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Gpu {
    /// None: no NVIDIA driver reports one.
    None,
    /// The driver reports one, but this build of the kit has no CUDA (the `cuda` feature).
    NotInThisBuild,
    /// GPU 0, which [`DeviceKind::Cuda`] runs on.
    Cuda {
        /// Its name, as the driver gives it.
        name: String,
        /// Its compute capability, major and minor (9.0 for an H100).
        capability: (i32, i32),
    },
    /// The driver reports one, but CUDA could not open it (the reason).
    Unusable(String),
}

impl Compute {
    /// Looks at this machine: `/proc/cpuinfo`, rayon's pool, the CPU's instruction sets, and
    /// GPU 0 through CUDA's driver (in a build with the `cuda` feature) or `/proc/driver/nvidia`.
    pub fn detect() -> Compute {
        let cpu = std::fs::read_to_string("/proc/cpuinfo")
            .ok()
            .and_then(|info| {
                info.lines()
                    .find(|line| line.starts_with("model name"))
                    .and_then(|line| line.split_once(':'))
                    .map(|(_, name)| name.trim().to_owned())
            })
            .unwrap_or_else(|| "unknown CPU".to_owned());
        Compute {
            cpu,
            threads: rayon::current_num_threads(),
            kernels: crate::backend::native::Kernels::detect(),
            gpu: detect_gpu(),
        }
    }
}

/// Whether the NVIDIA driver lists a GPU.
fn driver_lists_a_gpu() -> bool {
    std::fs::read_dir("/proc/driver/nvidia/gpus").is_ok_and(|mut gpus| gpus.next().is_some())
}

#[cfg(not(feature = "cuda"))]
fn detect_gpu() -> Gpu {
    if driver_lists_a_gpu() {
        Gpu::NotInThisBuild
    } else {
        Gpu::None
    }
}

#[cfg(feature = "cuda")]
fn detect_gpu() -> Gpu {
    use cudarc::driver::sys::CUdevice_attribute as Attribute;
    if !driver_lists_a_gpu() {
        return Gpu::None;
    }
    let device = match cudarc::driver::CudaDevice::new(0) {
        Ok(device) => device,
        Err(error) => return Gpu::Unusable(format!("{error:?}")),
    };
    let capability = (
        device.attribute(Attribute::CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MAJOR),
        device.attribute(Attribute::CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MINOR),
    );
    let (Ok(major), Ok(minor)) = capability else {
        return Gpu::Unusable("the driver did not give its compute capability".to_owned());
    };
    let mut name = [0 as std::ffi::c_char; 256];
    // SAFETY: the buffer is 256 bytes and its length is passed; the device handle comes from
    // a device cudarc opened above and keeps open while `device` lives.
    let named = unsafe {
        cudarc::driver::sys::cuDeviceGetName(name.as_mut_ptr(), 256, *device.cu_device())
    };
    let name = if named == cudarc::driver::sys::CUresult::CUDA_SUCCESS {
        // SAFETY: cuDeviceGetName wrote a NUL-terminated string within the buffer.
        unsafe { std::ffi::CStr::from_ptr(name.as_ptr()) }
            .to_string_lossy()
            .into_owned()
    } else {
        "NVIDIA GPU".to_owned()
    };
    Gpu::Cuda {
        name,
        capability: (major, minor),
    }
}

impl std::fmt::Display for Compute {
    /// One line: `CPU: <model>, N threads, <kernels> kernels`, then what there is of a GPU.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        use crate::backend::native::Kernels;
        let kernels = match self.kernels {
            Kernels::Avx512 => "AVX-512",
            Kernels::Avx2 => "AVX2",
            Kernels::Portable => "portable",
        };
        write!(
            f,
            "CPU: {}, {} threads, {kernels} kernels. ",
            self.cpu, self.threads
        )?;
        match &self.gpu {
            Gpu::None => write!(f, "No CUDA GPU found: everything runs on the CPU."),
            Gpu::NotInThisBuild => write!(
                f,
                "An NVIDIA GPU is present, but this build of the kit has no CUDA (the `cuda` \
                 feature): everything runs on the CPU."
            ),
            Gpu::Cuda { name, capability } => write!(
                f,
                "CUDA: {name}, compute capability {}.{}, for DeviceKind::Cuda.",
                capability.0, capability.1
            ),
            Gpu::Unusable(reason) => write!(
                f,
                "An NVIDIA GPU is present, but CUDA cannot open it ({reason}): everything runs \
                 on the CPU."
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_summary_names_the_cpu_and_what_there_is_of_a_gpu() {
        use crate::backend::native::Kernels;
        let cpu = Compute {
            cpu: "AMD EPYC".into(),
            threads: 2,
            kernels: Kernels::Avx2,
            gpu: Gpu::None,
        };
        assert_eq!(
            cpu.to_string(),
            "CPU: AMD EPYC, 2 threads, AVX2 kernels. No CUDA GPU found: everything runs on the CPU."
        );
        let gpu = Compute {
            gpu: Gpu::Cuda {
                name: "NVIDIA H100".into(),
                capability: (9, 0),
            },
            ..cpu.clone()
        };
        assert!(gpu
            .to_string()
            .ends_with("CUDA: NVIDIA H100, compute capability 9.0, for DeviceKind::Cuda."));
        // This machine, as the notebook shows it: its own CPU and thread count.
        let here = Compute::detect();
        assert_eq!(here.threads, rayon::current_num_threads());
        assert!(here.kernels.is_supported());
        assert!(!here.cpu.is_empty());
    }
}
