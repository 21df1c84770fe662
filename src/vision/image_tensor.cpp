#include "vlmo/image_tensor.h"

#include <ATen/ATen.h>

namespace vlmo {

at::Tensor to_normalized_tensor(const Image& img) {
  at::Tensor t = at::empty({3, img.height, img.width}, at::kFloat);
  float* out = t.data_ptr<float>();
  const size_t plane = static_cast<size_t>(img.width) * img.height;
  float lut[256];
  for (int v = 0; v < 256; ++v) lut[v] = (static_cast<float>(v) / 255.0f - 0.5f) / 0.5f;
  for (size_t i = 0; i < plane; ++i)
    for (int c = 0; c < 3; ++c) out[c * plane + i] = lut[img.rgb[3 * i + c]];
  return t;
}

at::Tensor eval_transform(const Image& img, int size) { return to_normalized_tensor(resize_bicubic(img, size, size)); }

at::Tensor train_transform(const Image& img, int size, std::mt19937_64& rng) {
  Image x = random_resized_crop(img, size, rng);
  if (std::uniform_int_distribution<int>(0, 1)(rng)) x = flip_horizontal(x);
  return to_normalized_tensor(random_augment(x, rng));
}

}  // namespace vlmo
