// Image decoders (JPEG, PNG, WebP by content) with the decompression-bomb guard, then the
// evaluation transform when the image decodes.
#include "fuzz_util.h"
#include "vlmo/image.h"
#include "vlmo/image_tensor.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string bytes(reinterpret_cast<const char*>(data), size);
  vlmo::DecodeOptions opt;
  opt.max_pixels = 1 << 20;  // bound the work per input
  vlmo::fuzz::expect_only_errors([&] {
    const vlmo::Image img = vlmo::decode_image(bytes, "fuzz", opt);
    if (img.width <= 0 || img.height <= 0) std::abort();
    vlmo::eval_transform(img, 32);
  });
  return 0;
}
