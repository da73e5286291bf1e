//! Photo bombs at 8 threads under a peak-counting allocator (issue 21, case 4): small PNG
//! files whose colour profile or text chunk inflates to a gigabyte, and 49-megapixel 16-bit
//! RGBA PNGs, all decoded at once. Every photo must come out right and the process's live
//! memory must stay under 1 GB, whatever the number of threads.

use std::alloc::{GlobalAlloc, Layout, System};
use std::io::Write;
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};

use flowers_kit::backend::Network;
use flowers_kit::features::FeatureExtractor;
use flowers_kit::models::Model;

/// The system allocator, counting live bytes and their peak.
struct Peak;

static LIVE: AtomicUsize = AtomicUsize::new(0);
static PEAK: AtomicUsize = AtomicUsize::new(0);

fn grew(size: usize) {
    let live = LIVE.fetch_add(size, Ordering::Relaxed) + size;
    PEAK.fetch_max(live, Ordering::Relaxed);
}

// SAFETY: every call is forwarded to the system allocator unchanged; the counters are only
// read by the test.
unsafe impl GlobalAlloc for Peak {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let p = unsafe { System.alloc(layout) };
        if !p.is_null() {
            grew(layout.size());
        }
        p
    }
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        let p = unsafe { System.alloc_zeroed(layout) };
        if !p.is_null() {
            grew(layout.size());
        }
        p
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { System.dealloc(ptr, layout) };
        LIVE.fetch_sub(layout.size(), Ordering::Relaxed);
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        let p = unsafe { System.realloc(ptr, layout, new_size) };
        if !p.is_null() {
            LIVE.fetch_sub(layout.size(), Ordering::Relaxed);
            grew(new_size);
        }
        p
    }
}

#[global_allocator]
static ALLOCATOR: Peak = Peak;

/// A zlib stream of `n` zero bytes, compressed without ever holding them.
fn zlib_zeros(n: u64) -> Vec<u8> {
    let mut encoder = flate2::write::ZlibEncoder::new(Vec::new(), flate2::Compression::best());
    let block = vec![0u8; 1 << 20];
    let mut left = n;
    while left > 0 {
        let take = left.min(block.len() as u64) as usize;
        encoder.write_all(&block[..take]).unwrap();
        left -= take as u64;
    }
    encoder.finish().unwrap()
}

/// One PNG chunk: length, type, data, CRC.
fn chunk(out: &mut Vec<u8>, kind: &[u8; 4], data: &[u8]) {
    out.extend_from_slice(&(data.len() as u32).to_be_bytes());
    out.extend_from_slice(kind);
    out.extend_from_slice(data);
    let mut crc = flate2::Crc::new();
    crc.update(kind);
    crc.update(data);
    out.extend_from_slice(&crc.sum().to_be_bytes());
}

/// A PNG of `width × height` all-zero pixels (colour type, bit depth) with `extra` chunks
/// before the pixels.
fn png(width: u32, height: u32, colour: u8, depth: u8, extra: &[(&[u8; 4], Vec<u8>)]) -> Vec<u8> {
    let mut out = b"\x89PNG\r\n\x1a\n".to_vec();
    let mut ihdr = Vec::new();
    ihdr.extend_from_slice(&width.to_be_bytes());
    ihdr.extend_from_slice(&height.to_be_bytes());
    ihdr.extend_from_slice(&[depth, colour, 0, 0, 0]);
    chunk(&mut out, b"IHDR", &ihdr);
    for (kind, data) in extra {
        chunk(&mut out, kind, data);
    }
    let channels: u64 = match colour {
        0 => 1,
        2 => 3,
        4 => 2,
        6 => 4,
        _ => panic!("colour type {colour}"),
    };
    let row = 1 + u64::from(width) * channels * u64::from(depth) / 8;
    chunk(&mut out, b"IDAT", &zlib_zeros(row * u64::from(height)));
    chunk(&mut out, b"IEND", &[]);
    out
}

#[test]
fn photo_bombs_decode_correctly_within_a_gigabyte_at_8_threads() {
    let dir = tempfile::tempdir().unwrap();
    let gigabyte_of_zeros = zlib_zeros(1 << 30);
    let with_name = |name: &[u8]| -> Vec<u8> {
        let mut data = name.to_vec();
        data.extend_from_slice(&[0, 0]); // end of the name, compression method 0
        data.extend_from_slice(&gigabyte_of_zeros);
        data
    };
    let iccp = png(8, 8, 2, 8, &[(b"iCCP", with_name(b"bomb"))]);
    let ztxt = png(8, 8, 2, 8, &[(b"zTXt", with_name(b"Comment"))]);
    let deep = png(7000, 7000, 6, 16, &[]);
    assert!(
        iccp.len() < 2 << 20 && deep.len() < 2 << 20,
        "{} {}",
        iccp.len(),
        deep.len()
    );
    let mut paths: Vec<PathBuf> = Vec::new();
    for i in 0..8 {
        for (kind, bytes) in [("iccp", &iccp), ("ztxt", &ztxt), ("deep", &deep)] {
            let path = dir.path().join(format!("{kind}{i}.png"));
            std::fs::write(&path, bytes).unwrap();
            paths.push(path);
        }
    }
    drop((gigabyte_of_zeros, iccp, ztxt, deep));
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(8)
        .build()
        .unwrap();
    let before = LIVE.load(Ordering::Relaxed);
    PEAK.store(before, Ordering::Relaxed);
    // Built inside the pool: with the `cuda` feature an extractor is not `Send`.
    let out = pool
        .install(|| {
            let network =
                Network::random(Model::parse("mobilenet_v2_0.35_96").unwrap(), 0).unwrap();
            FeatureExtractor::from_network(network)
                .unwrap()
                .without_cache()
                .quiet()
                .extract_paths(&paths)
        })
        .unwrap();
    let peak = PEAK.load(Ordering::Relaxed) - before;
    println!(
        "peak {} MiB above the {} MiB before",
        peak >> 20,
        before >> 20
    );
    assert!(out.skipped.is_empty(), "{:?}", out.skipped);
    assert_eq!(out.kept.len(), paths.len());
    // All-zero pixels of any size give the same features.
    let first = &out.values[..out.dim];
    assert!(out.values.chunks(out.dim).all(|row| row == first));
    assert!(peak < 1 << 30, "peak {peak} bytes");
}
