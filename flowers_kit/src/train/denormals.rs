//! Flush-to-zero for the duration of training, as TensorFlow runs its kernels.
//!
//! When a classifier becomes confident, softmax gradients shrink into the subnormal range,
//! and x86 FMA units take a micro-coded path for subnormal operands that is tens of times
//! slower: 1000 full-batch steps went from ~2 s to 26 s. TensorFlow sets the FTZ and DAZ
//! bits of MXCSR in its compute threads for this reason; this guard does the same on the
//! calling thread and on every rayon worker (where gemm runs), and restores each thread's
//! previous setting when dropped. Values below ~1.2e-38 become 0, which no loss notices.

/// Sets FTZ/DAZ on this thread and on rayon's workers until dropped.
pub(crate) struct FlushDenormals {
    /// (previous MXCSR of the calling thread, previous MXCSR per rayon worker).
    #[cfg(target_arch = "x86_64")]
    saved: (u32, Vec<u32>),
}

#[cfg(target_arch = "x86_64")]
mod mxcsr {
    /// Flush-to-zero (bit 15) and denormals-are-zero (bit 6).
    const FTZ_DAZ: u32 = 0x8040;

    pub fn get() -> u32 {
        let mut csr = 0u32;
        // SAFETY: `stmxcsr` only stores the SSE control register into `csr`, a valid u32.
        unsafe { std::arch::asm!("stmxcsr [{}]", in(reg) &mut csr, options(nostack)) };
        csr
    }

    pub fn set(csr: u32) {
        // SAFETY: `ldmxcsr` loads a control word read by `get` with only the FTZ/DAZ mode
        // bits changed; no reserved bit is set, so it cannot fault.
        unsafe { std::arch::asm!("ldmxcsr [{}]", in(reg) &csr, options(nostack)) };
    }

    pub fn enable() -> u32 {
        let old = get();
        set(old | FTZ_DAZ);
        old
    }
}

impl FlushDenormals {
    /// Turns flushing on everywhere training computes.
    pub(crate) fn new() -> FlushDenormals {
        #[cfg(target_arch = "x86_64")]
        {
            let here = mxcsr::enable();
            let workers = rayon::broadcast(|_| mxcsr::enable());
            FlushDenormals {
                saved: (here, workers),
            }
        }
        #[cfg(not(target_arch = "x86_64"))]
        FlushDenormals {}
    }
}

impl Drop for FlushDenormals {
    fn drop(&mut self) {
        #[cfg(target_arch = "x86_64")]
        {
            mxcsr::set(self.saved.0);
            let workers = &self.saved.1;
            rayon::broadcast(|ctx| {
                if let Some(&csr) = workers.get(ctx.index()) {
                    mxcsr::set(csr);
                }
            });
        }
    }
}
