//! The fast CPU path: any [`Network`] on plain NHWC buffers, with the kernels of the widest
//! instruction set the CPU has ([`Kernels`], chosen at run time).
//!
//! - Convolutions are matrix products: a 1×1 stride-1 convolution multiplies the activation
//!   directly, others go through an im2col buffer. With AVX2 ([`Kernels::Avx2`], and
//!   [`Kernels::Avx512`], whose CPUs have AVX2 too) the weights are
//!   packed once into 16-column panels for an FMA micro-kernel (`packed/`: 6×16 on AVX2,
//!   12×16 on AVX-512, 256-bit registers for panels of at most 8 columns) that adds the
//!   bias, a residual addend and the ReLU/ReLU6 clamp as it stores; otherwise each is one `gemm` call into an
//!   output pre-filled with the bias (and the addend).
//! - With AVX2 kernels, an inverted-residual block (expand → depthwise → project) is one
//!   step, run band by band of output rows so that its expanded activations stay in L2;
//!   where a squeeze-and-excitation reads the depthwise output (EfficientNet, MobileNet V3),
//!   the expansion and the depthwise layer are one step.
//! - Depthwise convolutions vectorise over channels: explicit AVX-512 and AVX2 kernels (taps
//!   in registers) inside the image, a bounds-checked loop at its borders and for any other
//!   CPU.
//! - Pooling, concatenation, squeeze-and-excitation products and activations are plain loops
//!   over channels (activations compiled for the network's instruction set).
//! - Buffers come from pools kept between calls and return to them after their last reader,
//!   and the band-by-band kernels' per-thread scratch grows to the largest band any thread
//!   has met (`scratch`); nothing is allocated per layer once warm. A batch shares its images
//!   among a team of spinning threads (`team`), one contiguous share each, and a single image
//!   splits its layers among the same team; rayon takes over while another image holds it.
//!
//! Memory safety: the gemm call, the micro-kernel and the explicit SIMD loads are `unsafe`.
//! They rely on the shapes that [`Network::new`] validated (weights `[kh, kw, cin, cout]` or
//! `[kh, kw, c]`, each step's shape following from its inputs'), and each kernel re-checks
//! the lengths of the slices it is handed with `assert!` before any unchecked access, so a
//! broken invariant panics instead of reading out of bounds.
//!
//! Files, one concern each: `plan` prepares a network (which buffers live how long, which
//! steps fuse, packed weights), `exec` runs it image by image, `block` runs an
//! inverted-residual block (or an expansion and its depthwise layer) band by band, `conv` holds the matrix-product convolutions
//! (`gemm` the one call into the gemm crate, shared with the gradient kernels),
//! `depthwise/` the depthwise kernel per instruction set (`portable`, `avx2`, `avx512`),
//! `packed/` the packed product and its micro-kernel per instruction set (`avx2`,
//! `avx512`), `isa` which instruction sets the CPU has, `threads` when
//! work is split among threads and `team` the spinning threads that share one image's
//! layers, `profile` each step's time against the CPU's roofs, `eltwise` the activations,
//! `pooling` the pooling loops,
//! `pool` the reusable buffers, `scratch` the per-thread band buffers; `train` runs the steps above a cut forward and backward for
//! fine-tuning, with the gradient kernels of `grad`.

mod block;
mod conv;
mod depthwise;
mod eltwise;
mod exec;
pub(crate) mod gemm;
mod grad;
mod isa;
mod packed;
mod plan;
mod pool;
mod pooling;
mod profile;
mod scratch;
mod team;
#[cfg(test)]
mod testing;
mod threads;
mod train;

pub use exec::LayerSplit;
pub use isa::Kernels;
pub use plan::NativeNetwork;
pub use profile::{LayerTime, Roofs};
pub use train::{NativeSuffix, Parameter, SuffixStepTime, SuffixTape};
