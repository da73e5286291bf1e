//! Where the kit's work runs on this machine, as notebook 00 shows it: the CPU (model, threads,
//! the native kernels' instruction set) and what there is of an NVIDIA GPU.

/// Where the kit's work runs on this machine, as notebook 00 shows it in its first cells: the
/// CPU, and whether an NVIDIA GPU is there for
/// [`DeviceKind::Cuda`](crate::device::DeviceKind::Cuda), which a build with CUDA prefers
/// ([`DeviceKind::preferred`](crate::device::DeviceKind::preferred)).
///
/// ```
/// let here = flowers_kit::features::Compute::detect();
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
    /// GPU 0, which [`DeviceKind::Cuda`](crate::device::DeviceKind::Cuda) runs on.
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

/// Whether the NVIDIA driver lists a GPU (on Linux; WSL2 exposes its GPUs as /dev/dxg).
fn driver_lists_a_gpu() -> bool {
    std::fs::read_dir("/proc/driver/nvidia/gpus").is_ok_and(|mut gpus| gpus.next().is_some())
        || std::path::Path::new("/dev/dxg").exists()
}

#[cfg(not(feature = "cuda"))]
fn detect_gpu() -> Gpu {
    if driver_lists_a_gpu() {
        Gpu::NotInThisBuild
    } else {
        Gpu::None
    }
}

/// (A build with `cuda` links the CUDA driver's library: it does not load at all on a machine
/// without NVIDIA's driver.)
#[cfg(feature = "cuda")]
fn detect_gpu() -> Gpu {
    use cudarc::driver::{result, sys};
    let device = match crate::device::first_cuda_device() {
        Ok(device) => device,
        Err(reason) if driver_lists_a_gpu() => return Gpu::Unusable(reason),
        Err(_) => return Gpu::None,
    };
    // SAFETY: `device` comes from the driver's cuDeviceGet (first_cuda_device).
    let capability = unsafe {
        (
            result::device::get_attribute(
                device,
                sys::CUdevice_attribute::CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MAJOR,
            ),
            result::device::get_attribute(
                device,
                sys::CUdevice_attribute::CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MINOR,
            ),
        )
    };
    let (Ok(major), Ok(minor)) = capability else {
        return Gpu::Unusable("the driver did not give its compute capability".to_owned());
    };
    let mut name = [0u8; 256];
    // SAFETY: the buffer is 256 bytes and that length is passed; `device` is the driver's.
    let named = unsafe { sys::cuDeviceGetName(name.as_mut_ptr().cast(), 256, device) };
    let name = match std::ffi::CStr::from_bytes_until_nul(&name) {
        Ok(text) if named == sys::CUresult::CUDA_SUCCESS => text.to_string_lossy().into_owned(),
        _ => "NVIDIA GPU".to_owned(),
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
                "CUDA: {name}, compute capability {}.{}: extraction and training run there \
                 (DeviceKind::Cuda).",
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
            .ends_with("CUDA: NVIDIA H100, compute capability 9.0: extraction and training run there (DeviceKind::Cuda)."));
        // This machine, as the notebook shows it: its own CPU and thread count.
        let here = Compute::detect();
        assert_eq!(here.threads, rayon::current_num_threads());
        assert!(here.kernels.is_supported());
        assert!(!here.cpu.is_empty());
    }
}
