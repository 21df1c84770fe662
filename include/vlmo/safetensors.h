// safetensors reading and writing (own parser). Validates the header, dtypes, shapes and that
// every tensor's byte range lies inside the file and matches its shape. Not: a memory-mapped
// zero-copy reader (tensors are copied into LibTorch storage).
#pragma once
#include <ATen/Tensor.h>

#include <map>
#include <string>

#include "vlmo/files.h"  // write_file_atomic

namespace vlmo {

using TensorMap = std::map<std::string, at::Tensor>;

struct SafetensorsFile {
  TensorMap tensors;
  std::map<std::string, std::string> metadata;  // the optional "__metadata__" string map
};

// Reads a whole file; throws vlmo::Error naming the file and the offending entry.
SafetensorsFile read_safetensors(const std::string& path);
// Parses an in-memory image of a file; `name` is used in error messages.
SafetensorsFile parse_safetensors(const std::string& bytes, const std::string& name);
inline TensorMap load_safetensors(const std::string& path) { return read_safetensors(path).tensors; }

// Writes atomically (temporary file + rename), so a crash never leaves a half-written file.
// Tensors are written contiguous, little-endian, in their own dtype (moved to CPU first).
void write_safetensors(const std::string& path, const TensorMap& tensors,
                       const std::map<std::string, std::string>& metadata = {});

}  // namespace vlmo
