//! Which implementation runs the network: the choice of backend and device, in one place.

use std::str::FromStr;

use dfdx::tensor::Cpu;

use crate::backend::dfdx::DfdxNetwork;
use crate::backend::native::NativeNetwork;
use crate::backend::Network;
use crate::device::DeviceKind;
use crate::error::{Error, Result};

/// Which implementation runs the network.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum BackendKind {
    /// The native NHWC kernels (CPU only): the fast default.
    #[default]
    Native,
    /// dfdx tensors: the reference implementation, and the CUDA path.
    Dfdx,
}

impl FromStr for BackendKind {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        match s.to_ascii_lowercase().as_str() {
            "native" => Ok(BackendKind::Native),
            "dfdx" => Ok(BackendKind::Dfdx),
            other => Err(Error::InvalidArgument(format!(
                "unknown backend '{other}': use native or dfdx"
            ))),
        }
    }
}

/// A network prepared for one backend on one device.
pub(crate) enum Engine {
    Native(NativeNetwork),
    Cpu(DfdxNetwork<Cpu>),
    #[cfg(feature = "cuda")]
    Cuda(DfdxNetwork<dfdx::tensor::Cuda>),
}

impl Engine {
    pub(crate) fn new(
        network: &Network,
        device: DeviceKind,
        backend: BackendKind,
    ) -> Result<Engine> {
        match (device, backend) {
            (DeviceKind::Cpu, BackendKind::Native) => {
                Ok(Engine::Native(NativeNetwork::new(network)?))
            }
            (DeviceKind::Cpu, BackendKind::Dfdx) => {
                Ok(Engine::Cpu(DfdxNetwork::new(network, Cpu::default())?))
            }
            // The GPU always runs the dfdx implementation.
            #[cfg(feature = "cuda")]
            (DeviceKind::Cuda, _) => Ok(Engine::Cuda(DfdxNetwork::new(
                network,
                crate::device::open_cuda(0)?,
            )?)),
            #[cfg(not(feature = "cuda"))]
            (DeviceKind::Cuda, _) => Err(crate::device::no_cuda()),
        }
    }

    /// Features `[n, F]` of `n` preprocessed images.
    pub(crate) fn forward(&self, pixels: &[f32], n: usize) -> Result<Vec<f32>> {
        match self {
            Engine::Native(net) => net.forward(pixels, n),
            Engine::Cpu(net) => Ok(net.forward(pixels, n)?.as_vec()),
            #[cfg(feature = "cuda")]
            Engine::Cuda(net) => Ok(net.forward(pixels, n)?.as_vec()),
        }
    }
}
