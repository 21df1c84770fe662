#include "vlmo/device.h"

#include <ATen/Context.h>

#include <cctype>

#include "vlmo/error.h"

namespace vlmo {

c10::Device parse_device(const std::string& name) {
  if (name == "cpu") return c10::Device(c10::kCPU);
  bool cuda = name == "cuda";
  int index = -1;
  if (!cuda && name.rfind("cuda:", 0) == 0 && name.size() > 5 && name.size() <= 8) {
    cuda = true;
    index = 0;
    for (size_t i = 5; i < name.size(); ++i) {
      if (!std::isdigit(static_cast<unsigned char>(name[i]))) cuda = false;
      else index = index * 10 + (name[i] - '0');
    }
  }
  if (!cuda) throw Error(cat("device \"", name, "\": expected cpu, cuda or cuda:N"));
  if (!at::hasCUDA())
    throw Error(cat("device \"", name, "\": this build's LibTorch has no CUDA (or no GPU is visible); use cpu"));
  const int count = static_cast<int>(at::getNumGPUs());
  if (index >= count) throw Error(cat("device \"", name, "\": only ", count, " GPU(s) visible"));
  return index < 0 ? c10::Device(c10::kCUDA) : c10::Device(c10::kCUDA, static_cast<c10::DeviceIndex>(index));
}

}  // namespace vlmo
