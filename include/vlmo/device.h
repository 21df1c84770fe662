// Device names as users write them: "cpu", "cuda", "cuda:N".
#pragma once
#include <c10/core/Device.h>

#include <string>

namespace vlmo {

// Parses and checks a device name: throws vlmo::Error naming what was expected for anything
// else, and when a CUDA device is asked for but this LibTorch has no CUDA or no such GPU.
c10::Device parse_device(const std::string& name);

}  // namespace vlmo
