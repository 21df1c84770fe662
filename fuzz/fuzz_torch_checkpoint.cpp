// PyTorch torch.save zip files: the zip reader and the pickle reader (read_torch_checkpoint).
#include "fuzz_util.h"
#include "vlmo/checkpoint.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string& path = vlmo::fuzz::write_temp(data, size, ".pt");
  vlmo::fuzz::expect_only_errors([&] { vlmo::read_torch_checkpoint(path); });
  return 0;
}
