#include "zip_reader.h"

#include <zlib.h>

#include <cstring>
#include <vector>

#include "vlmo/error.h"

namespace vlmo {
namespace {
uint64_t le(const char* p, int n) {
  uint64_t v = 0;
  for (int i = n - 1; i >= 0; --i) v = (v << 8) | static_cast<unsigned char>(p[i]);
  return v;
}
}  // namespace

ZipReader::ZipReader(const std::string& path) : path_(path), in_(path, std::ios::binary) {
  if (!in_) throw Error(cat(path, ": cannot open (", std::strerror(errno), ")"));
  in_.seekg(0, std::ios::end);
  file_size_ = static_cast<uint64_t>(in_.tellg());
  if (file_size_ < 22) throw Error(cat(path, ": not a zip archive (", file_size_, " bytes)"));
  // End of central directory: the last 22..(22 + 65535) bytes.
  const uint64_t tail = std::min<uint64_t>(file_size_, 22 + 65535);
  std::vector<char> buf(tail);
  read_at(file_size_ - tail, buf.data(), tail);
  int64_t eocd = -1;
  for (int64_t i = static_cast<int64_t>(tail) - 22; i >= 0; --i)
    if (le(&buf[i], 4) == 0x06054b50) {
      eocd = i;
      break;
    }
  if (eocd < 0) throw Error(cat(path, ": zip end-of-directory record not found (truncated or not a zip file)"));
  uint64_t count = le(&buf[eocd + 10], 2);
  uint64_t cd_size = le(&buf[eocd + 12], 4);
  uint64_t cd_offset = le(&buf[eocd + 16], 4);
  const uint64_t eocd_pos = file_size_ - tail + eocd;
  if ((count == 0xffff || cd_size == 0xffffffff || cd_offset == 0xffffffff) && eocd_pos >= 20) {
    char loc[20];
    read_at(eocd_pos - 20, loc, 20);
    if (le(loc, 4) != 0x07064b50) throw Error(cat(path, ": ZIP64 locator missing"));
    const uint64_t rec = le(loc + 8, 8);
    char r[56];
    if (rec + 56 > file_size_) throw Error(cat(path, ": ZIP64 record lies outside the file"));
    read_at(rec, r, 56);
    if (le(r, 4) != 0x06064b50) throw Error(cat(path, ": bad ZIP64 end-of-directory record"));
    count = le(r + 32, 8);
    cd_size = le(r + 40, 8);
    cd_offset = le(r + 48, 8);
  }
  if (cd_offset > file_size_ || cd_size > file_size_ - cd_offset)
    throw Error(cat(path, ": zip central directory [", cd_offset, ", +", cd_size, ") lies outside the file of ", file_size_,
                    " bytes (truncated?)"));
  std::vector<char> cd(cd_size);
  read_at(cd_offset, cd.data(), cd_size);
  uint64_t p = 0;
  for (uint64_t i = 0; i < count; ++i) {
    if (p + 46 > cd_size || le(&cd[p], 4) != 0x02014b50) throw Error(cat(path, ": corrupt zip central directory at entry ", i));
    Entry e;
    e.method = static_cast<uint16_t>(le(&cd[p + 10], 2));
    e.compressed = le(&cd[p + 20], 4);
    e.uncompressed = le(&cd[p + 24], 4);
    const uint64_t name_len = le(&cd[p + 28], 2), extra_len = le(&cd[p + 30], 2), comment_len = le(&cd[p + 32], 2);
    e.local_offset = le(&cd[p + 42], 4);
    if (p + 46 + name_len + extra_len + comment_len > cd_size)
      throw Error(cat(path, ": corrupt zip central directory at entry ", i));
    std::string name(&cd[p + 46], name_len);
    // ZIP64 extended information: the 0xffffffff fields, in order.
    uint64_t x = p + 46 + name_len;
    const uint64_t x_end = x + extra_len;
    while (x + 4 <= x_end) {
      const uint64_t id = le(&cd[x], 2), len = le(&cd[x + 2], 2);
      if (x + 4 + len > x_end) break;
      if (id == 0x0001) {
        uint64_t q = x + 4;
        auto take = [&](uint64_t& field) {
          if (field == 0xffffffff && q + 8 <= x + 4 + len) {
            field = le(&cd[q], 8);
            q += 8;
          }
        };
        take(e.uncompressed);
        take(e.compressed);
        take(e.local_offset);
      }
      x += 4 + len;
    }
    if (e.method != 0 && e.method != 8)
      throw Error(
          cat(path, ": zip entry \"", name, "\" uses compression method ", e.method, " (only stored and deflate are supported)"));
    if (e.local_offset > file_size_ || e.compressed > file_size_ - e.local_offset)
      throw Error(cat(path, ": zip entry \"", name, "\" lies outside the file (truncated?)"));
    if ((e.method == 0 && e.compressed != e.uncompressed) || (e.method == 8 && e.uncompressed > e.compressed * 1100 + 4096))
      throw Error(cat(path, ": zip entry \"", name, "\" has inconsistent sizes (corrupt directory)"));
    entries_[name] = e;
    p += 46 + name_len + extra_len + comment_len;
  }
}

void ZipReader::read_at(uint64_t offset, char* out, uint64_t n) {
  if (offset > file_size_ || n > file_size_ - offset)
    throw Error(cat(path_, ": read of ", n, " bytes at offset ", offset, " lies outside the file of ", file_size_,
                    " bytes (truncated?)"));
  in_.clear();
  in_.seekg(static_cast<std::streamoff>(offset));
  in_.read(out, static_cast<std::streamsize>(n));
  if (static_cast<uint64_t>(in_.gcount()) != n) throw Error(cat(path_, ": read failed at offset ", offset));
}

const ZipReader::Entry& ZipReader::entry(const std::string& name) const {
  auto it = entries_.find(name);
  if (it == entries_.end()) throw Error(cat(path_, ": zip entry \"", name, "\" not found"));
  return it->second;
}

uint64_t ZipReader::size(const std::string& name) const { return entry(name).uncompressed; }

std::vector<std::string> ZipReader::names() const {
  std::vector<std::string> out;
  for (const auto& kv : entries_) out.push_back(kv.first);
  return out;
}

void ZipReader::read(const std::string& name, char* out, uint64_t out_size) {
  const Entry e = entry(name);
  if (out_size != e.uncompressed) throw Error(cat(path_, ": internal size mismatch for ", name));
  char local[30];
  read_at(e.local_offset, local, 30);
  if (le(local, 4) != 0x04034b50) throw Error(cat(path_, ": zip entry \"", name, "\" has a bad local header"));
  const uint64_t data = e.local_offset + 30 + le(local + 26, 2) + le(local + 28, 2);
  if (e.method == 0) {
    if (e.compressed != e.uncompressed) throw Error(cat(path_, ": stored zip entry \"", name, "\" has inconsistent sizes"));
    read_at(data, out, e.uncompressed);
    return;
  }
  std::vector<char> packed(e.compressed);
  read_at(data, packed.data(), e.compressed);
  z_stream zs{};
  if (inflateInit2(&zs, -MAX_WBITS) != Z_OK) throw Error("zlib: inflateInit2 failed");
  zs.next_in = reinterpret_cast<Bytef*>(packed.data());
  zs.avail_in = static_cast<uInt>(packed.size());
  zs.next_out = reinterpret_cast<Bytef*>(out);
  zs.avail_out = static_cast<uInt>(e.uncompressed);
  const int rc = inflate(&zs, Z_FINISH);
  inflateEnd(&zs);
  if (rc != Z_STREAM_END || zs.total_out != e.uncompressed)
    throw Error(cat(path_, ": zip entry \"", name, "\" is corrupt (inflate failed)"));
}

std::string ZipReader::read(const std::string& name) {
  std::string s(size(name), '\0');
  read(name, s.data(), s.size());
  return s;
}

}  // namespace vlmo
