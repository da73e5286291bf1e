# Sourced by the notebook benchmarks: a local stand-in for the internet in $tmp (removed on exit),
# from ../shared. Exports FLOWERS_DATA_URL, FLOWERS_WEIGHTS_URL and BENCH_TMP.
tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT
# The sample packed like the real archive, and the weight files laid out like Keras Applications.
tar -czf "$tmp/flower_photos.tgz" -C ../shared/data --transform 's,^flower_photos_sample,flower_photos,' \
  flower_photos_sample
mkdir -p "$tmp/weights/mobilenet_v2"
for h5 in ../shared/golden/mobilenet_v2_*_no_top.h5; do
  variant="$(basename "$h5" _no_top.h5)"
  variant="${variant#mobilenet_v2_}"
  ln -s "$(realpath "$h5")" \
    "$tmp/weights/mobilenet_v2/mobilenet_v2_weights_tf_dim_ordering_tf_kernels_${variant}_no_top.h5"
done
export FLOWERS_DATA_URL="$tmp/flower_photos.tgz" FLOWERS_WEIGHTS_URL="$tmp/weights"
export BENCH_TMP="$tmp"
