// safetensors: 8-byte little-endian header length N, N bytes of JSON, then raw data.
#include "vlmo/safetensors.h"

#include <ATen/ATen.h>
#include <fcntl.h>
#include <unistd.h>

#include <algorithm>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <limits>
#include <nlohmann/json.hpp>
#include <vector>

#include "vlmo/error.h"
#include "vlmo/files.h"

namespace vlmo {
namespace {

// Metadata key of the CRC-32 of the data section, written by write_safetensors and checked (then
// hidden) by parse_safetensors; other readers ignore it.
constexpr const char* kCrcKey = "vlmo_crc32";
constexpr uint64_t kMaxHeaderBytes = 100ull << 20;  // same bound as the reference implementation

struct DtypeInfo {
  const char* name;
  at::ScalarType type;
};
constexpr DtypeInfo kDtypes[] = {
    {"F64", at::kDouble}, {"F32", at::kFloat}, {"F16", at::kHalf}, {"BF16", at::kBFloat16}, {"I64", at::kLong},
    {"I32", at::kInt},    {"I16", at::kShort}, {"I8", at::kChar},  {"U8", at::kByte},       {"BOOL", at::kBool},
};

at::ScalarType dtype_from_name(const std::string& name, const std::string& where) {
  for (const auto& d : kDtypes)
    if (name == d.name) return d.type;
  throw Error(cat(where, ": unsupported dtype \"", name, "\" (expected one of F64 F32 F16 BF16 I64 I32 I16 I8 U8 BOOL)"));
}

const char* dtype_name(at::ScalarType type) {
  for (const auto& d : kDtypes)
    if (type == d.type) return d.name;
  throw Error(cat("safetensors: cannot write dtype ", c10::toString(type)));
}

uint64_t read_le64(const char* p) {
  uint64_t v = 0;
  for (int i = 7; i >= 0; --i) v = (v << 8) | static_cast<unsigned char>(p[i]);
  return v;
}

}  // namespace

SafetensorsFile parse_safetensors(const std::string& bytes, const std::string& name) {
  if (bytes.size() < 8)
    throw Error(cat(name, ": truncated safetensors file: ", bytes.size(), " bytes, need at least 8 for the header length"));
  const uint64_t header_len = read_le64(bytes.data());
  if (header_len > kMaxHeaderBytes)
    throw Error(cat(name, ": safetensors header length ", header_len, " exceeds the limit of ", kMaxHeaderBytes,
                    " bytes (not a safetensors file?)"));
  if (header_len > bytes.size() - 8)
    throw Error(
        cat(name, ": safetensors header length ", header_len, " but only ", bytes.size() - 8, " bytes follow (truncated file?)"));
  nlohmann::json header;
  try {
    header = nlohmann::json::parse(bytes.begin() + 8, bytes.begin() + 8 + header_len);
  } catch (const std::exception& e) {
    throw Error(cat(name, ": safetensors header is not valid JSON: ", e.what()));
  }
  if (!header.is_object()) throw Error(cat(name, ": safetensors header must be a JSON object"));

  const uint64_t data_begin = 8 + header_len;
  const uint64_t data_size = bytes.size() - data_begin;
  SafetensorsFile out;
  std::vector<std::pair<uint64_t, uint64_t>> ranges;
  for (auto it = header.begin(); it != header.end(); ++it) {
    const std::string& key = it.key();
    if (key == "__metadata__") {
      if (!it->is_object()) throw Error(cat(name, ": __metadata__ must be an object of strings"));
      for (auto m = it->begin(); m != it->end(); ++m) {
        if (!m->is_string()) throw Error(cat(name, ": __metadata__ field \"", m.key(), "\" must be a string"));
        out.metadata[m.key()] = m->get<std::string>();
      }
      continue;
    }
    const std::string where = cat(name, ": tensor \"", key, "\"");
    const auto& e = *it;
    if (!e.is_object() || !e.contains("dtype") || !e.contains("shape") || !e.contains("data_offsets"))
      throw Error(cat(where, ": entry must be an object with dtype, shape and data_offsets"));
    if (!e["dtype"].is_string()) throw Error(cat(where, ": dtype must be a string"));
    const at::ScalarType type = dtype_from_name(e["dtype"].get<std::string>(), where);
    if (!e["shape"].is_array()) throw Error(cat(where, ": shape must be an array"));
    std::vector<int64_t> shape;
    uint64_t numel = 1;
    for (const auto& d : e["shape"]) {
      if (!d.is_number_integer() || d.get<int64_t>() < 0)
        throw Error(cat(where, ": shape entries must be non-negative integers"));
      const uint64_t dim = d.get<uint64_t>();
      if (dim != 0 && numel > std::numeric_limits<uint64_t>::max() / dim) throw Error(cat(where, ": shape overflows"));
      numel *= dim;
      shape.push_back(static_cast<int64_t>(dim));
    }
    const auto& off = e["data_offsets"];
    if (!off.is_array() || off.size() != 2 || !off[0].is_number_unsigned() || !off[1].is_number_unsigned())
      throw Error(cat(where, ": data_offsets must be [begin, end] with non-negative integers"));
    const uint64_t begin = off[0].get<uint64_t>(), end = off[1].get<uint64_t>();
    const uint64_t item = c10::elementSize(type);
    if (numel > std::numeric_limits<uint64_t>::max() / item) throw Error(cat(where, ": shape overflows"));
    if (begin > end || end > data_size)
      throw Error(cat(where, ": data_offsets [", begin, ", ", end, "] lie outside the data section of ", data_size, " bytes"));
    if (end - begin != numel * item)
      throw Error(cat(where, ": data_offsets span ", end - begin, " bytes but dtype ", e["dtype"].get<std::string>(),
                      " and shape ", e["shape"].dump(), " need ", numel * item));
    ranges.emplace_back(begin, end);
    at::Tensor t = at::empty(shape, at::TensorOptions().dtype(type));
    if (numel > 0) std::memcpy(t.data_ptr(), bytes.data() + data_begin + begin, numel * item);
    out.tensors.emplace(key, std::move(t));
  }
  auto crc = out.metadata.find(kCrcKey);
  if (crc != out.metadata.end()) {
    char want[16];
    std::snprintf(want, sizeof want, "%08x", crc32_of(bytes.data() + data_begin, data_size));
    if (crc->second != want)
      throw Error(cat(name, ": checksum mismatch (data CRC-32 ", want, ", recorded ", crc->second,
                      "): the file is corrupted or was modified"));
    out.metadata.erase(crc);
  }
  std::sort(ranges.begin(), ranges.end());
  for (size_t i = 1; i < ranges.size(); ++i)
    if (ranges[i].first < ranges[i - 1].second && ranges[i].first != ranges[i].second)
      throw Error(cat(name, ": tensors overlap in the data section at byte ", ranges[i].first));
  return out;
}

SafetensorsFile read_safetensors(const std::string& path) {
  const std::string bytes = read_input(path, "safetensors");
  return parse_safetensors(bytes, path);
}

void write_safetensors(const std::string& path, const TensorMap& tensors, const std::map<std::string, std::string>& metadata) {
  nlohmann::json header = nlohmann::json::object();
  std::vector<at::Tensor> contiguous;
  uint64_t offset = 0;
  uint32_t crc = 0;
  for (const auto& [key, tensor] : tensors) {
    at::Tensor t = tensor.detach().to(at::kCPU).contiguous();
    const uint64_t size = t.numel() * t.element_size();
    crc = crc32_of(t.data_ptr(), size, crc);
    header[key] = {{"dtype", dtype_name(t.scalar_type())}, {"shape", t.sizes().vec()}, {"data_offsets", {offset, offset + size}}};
    offset += size;
    contiguous.push_back(std::move(t));
  }
  std::map<std::string, std::string> meta = metadata;
  char crc_text[16];
  std::snprintf(crc_text, sizeof crc_text, "%08x", crc);
  meta[kCrcKey] = crc_text;
  header["__metadata__"] = meta;
  std::string json = header.dump();
  json.append((8 - json.size() % 8) % 8, ' ');
  std::string bytes(8, '\0');
  for (int i = 0; i < 8; ++i) bytes[i] = static_cast<char>((json.size() >> (8 * i)) & 0xff);
  bytes += json;
  bytes.reserve(bytes.size() + offset);
  for (const auto& t : contiguous) bytes.append(static_cast<const char*>(t.data_ptr()), t.numel() * t.element_size());
  write_file_atomic(path, bytes);
}

}  // namespace vlmo
