//! The instruction sets the native kernels are written for, detected at run time.

/// Which instruction set the native kernels are written for. [`Kernels::detect`] picks the
/// widest this CPU has; tests force each available one to compare it with the reference.
///
/// Each is a set of capabilities, the wider including the narrower's strategy: a CPU with
/// AVX-512 also has AVX2 and FMA, so it keeps the packed products and fused blocks and runs
/// them on its own micro-kernel and depthwise kernel. (Until 2026-12 `Avx512` meant gemm's
/// products without packing or fusion, and an AVX-512 CPU ran 1.2–1.7× slower by default
/// than with `--kernels avx2`.)
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kernels {
    /// AVX-512 F and VL (with AVX2 + FMA): everything [`Kernels::Avx2`] does, on AVX-512
    /// kernels: a 12×16 micro-kernel for the packed products and the depthwise layers,
    /// each with masked tails on 256-bit registers for small channel counts.
    Avx512,
    /// AVX2 + FMA: matrix products on weights packed once, with the bias, residual and
    /// clamp fused into the store, inverted-residual blocks fused, and the depthwise loop
    /// compiled for AVX2.
    Avx2,
    /// Any CPU: portable loops (gemm still picks its own kernels at run time). The only set
    /// whose warm forward pass allocates: gemm takes its packing buffers per product.
    Portable,
}

impl Kernels {
    /// The widest set this CPU supports.
    ///
    /// ```
    /// use flowers_kit::backend::native::Kernels;
    /// assert!(Kernels::detect().is_supported());
    /// ```
    pub fn detect() -> Kernels {
        [Kernels::Avx512, Kernels::Avx2]
            .into_iter()
            .find(|k| k.is_supported())
            .unwrap_or(Kernels::Portable)
    }

    /// Every set this CPU can run, widest first.
    pub fn available() -> Vec<Kernels> {
        [Kernels::Avx512, Kernels::Avx2, Kernels::Portable]
            .into_iter()
            .filter(|k| k.is_supported())
            .collect()
    }

    /// Whether this CPU has the instructions.
    pub fn is_supported(self) -> bool {
        match self {
            #[cfg(target_arch = "x86_64")]
            Kernels::Avx512 => {
                is_x86_feature_detected!("avx512f")
                    && is_x86_feature_detected!("avx512vl")
                    && has_avx2_fma()
            }
            #[cfg(not(target_arch = "x86_64"))]
            Kernels::Avx512 => false,
            Kernels::Avx2 => has_avx2_fma(),
            Kernels::Portable => true,
        }
    }
}

/// Whether this CPU has AVX2 and FMA (the packed product and the AVX2 kernels need both).
pub(super) fn has_avx2_fma() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}
