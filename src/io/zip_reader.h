// Minimal ZIP reader for PyTorch's torch.save files: central directory (ZIP64 too), stored and
// deflated entries, every offset checked against the file size. Internal to src/io.
#pragma once
#include <cstdint>
#include <fstream>
#include <map>
#include <string>
#include <vector>

namespace vlmo {

class ZipReader {
 public:
  explicit ZipReader(const std::string& path);
  bool has(const std::string& name) const { return entries_.count(name) > 0; }
  // Entry size after decompression.
  uint64_t size(const std::string& name) const;
  // Reads an entry whole into `out` (sized by the caller to `size(name)` bytes).
  void read(const std::string& name, char* out, uint64_t out_size);
  std::string read(const std::string& name);
  const std::string& path() const { return path_; }
  std::vector<std::string> names() const;

 private:
  struct Entry {
    uint16_t method = 0;
    uint64_t compressed = 0, uncompressed = 0, local_offset = 0;
  };
  void read_at(uint64_t offset, char* out, uint64_t n);
  const Entry& entry(const std::string& name) const;
  std::string path_;
  std::ifstream in_;
  uint64_t file_size_ = 0;
  std::map<std::string, Entry> entries_;
};

}  // namespace vlmo
