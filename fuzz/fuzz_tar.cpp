// WebDataset shards: the tar reader (ustar, GNU long names, pax) entry by entry.
#include "fuzz_util.h"
#include "vlmo/sources.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string& path = vlmo::fuzz::write_temp(data, size, ".tar");
  vlmo::fuzz::expect_only_errors([&] {
    vlmo::TarReader reader(path);
    vlmo::TarEntry e;
    for (int i = 0; i < 10000 && reader.next(e); ++i) {
    }
  });
  return 0;
}
