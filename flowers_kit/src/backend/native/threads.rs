//! When work is split among threads.

/// Below this many multiply-adds per image, a single image runs on one thread: measured on
/// a 2-core Zen 3, splitting the layers of MobileNet V3 (214 M) or MobileNet V2 1.0/128
/// (98 M) among threads ran no faster or slower than one thread (the waits for the other
/// thread cost what its half saved), while MobileNet V2 1.0/224 (299 M) and EfficientNet
/// B0 (385 M) gained 12–21 %.
pub(super) const MIN_PARALLEL_IMAGE_MACS: usize = 250_000_000;

/// Below this many multiply-adds a layer runs on one thread: splitting a small layer across
/// threads costs more than it saves (batch 1 at 0.35/128 ran 3× slower on 2 threads).
pub(super) const MIN_PARALLEL_MACS: usize = 1 << 22;
