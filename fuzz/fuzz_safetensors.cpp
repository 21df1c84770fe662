// safetensors headers and data sections (parse_safetensors).
#include "fuzz_util.h"
#include "vlmo/safetensors.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string bytes(reinterpret_cast<const char*>(data), size);
  vlmo::fuzz::expect_only_errors([&] { vlmo::parse_safetensors(bytes, "fuzz.safetensors"); });
  return 0;
}
