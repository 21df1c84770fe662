// Images to model inputs: ToTensor (u8 / 255) and Normalize(0.5, 0.5), and the evaluation
// transform square_transform(size) = bicubic resize to size x size (no crop, no aspect kept).
#pragma once
#include <ATen/Tensor.h>

#include "vlmo/image.h"

namespace vlmo {

// (3, H, W) float32 in [-1, 1]: ((u / 255) - 0.5) / 0.5 computed in float32 as torchvision does.
at::Tensor to_normalized_tensor(const Image& img);
// The official evaluation transform of a decoded image.
at::Tensor eval_transform(const Image& img, int size);
// The official training transform: RandomResizedCrop(0.5-1), horizontal flip, RandomAugment(2, 7).
at::Tensor train_transform(const Image& img, int size, std::mt19937_64& rng);

}  // namespace vlmo
