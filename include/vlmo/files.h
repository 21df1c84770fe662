// Files the way a long run needs them: inputs opened with messages that name the path and what
// was expected, outputs checked before work starts, writes that are checked (a full disk is an
// error, never an empty file and exit 0), atomic replacement, an exclusive lock on a run's
// outputs, and clean-up of temporaries a killed run left behind.
#pragma once
#include <cstdint>
#include <fstream>
#include <string>

namespace vlmo {

// Opens a file for reading; throws vlmo::Error naming `path` and `what` ("text corpus", "model
// config JSON") when the path is empty, is a folder, or cannot be opened (with the OS's reason).
std::ifstream open_input(const std::string& path, const std::string& what, bool binary = false);
// The whole file (same checks).
std::string read_input(const std::string& path, const std::string& what);

// Checks, before any work, that `path` can be written: not empty, not a folder, its folder
// exists and is writable, and an existing file there is writable. Throws vlmo::Error naming
// `what` ("checkpoint (--out)") and the path.
void check_output_path(const std::string& path, const std::string& what);

// Writes `bytes` to `path` atomically: a temporary "<path>.tmp.<pid>" is written, flushed to
// disk and renamed over `path` (the folder is synced too). On any failure the temporary is
// removed, `path` is untouched and vlmo::Error says why (e.g. "No space left on device").
void write_file_atomic(const std::string& path, const std::string& bytes);

// Throws vlmo::Error ("<path>: write failed (No space left on device)") when `out` is in a
// failed state after flushing it.
void flush_checked(std::ostream& out, const std::string& path);

// Removes temporaries "<path>.tmp.<pid>" left by runs that were killed while writing `path`
// (only those whose process is gone). Returns how many were removed.
int remove_stale_temporaries(const std::string& path);

// An exclusive advisory lock (flock) on "<path>.lock", held while the object lives and released
// by the OS when the process dies, so a second run writing the same outputs refuses to start
// instead of interleaving them. The lock file records the holder's pid for the message.
class FileLock {
 public:
  explicit FileLock(const std::string& path, const std::string& what = "output");
  ~FileLock();
  FileLock(const FileLock&) = delete;
  FileLock& operator=(const FileLock&) = delete;

 private:
  std::string lock_path_;
  int fd_ = -1;
};

// CRC-32 (zlib's polynomial) of a byte range; `crc` continues an earlier value.
uint32_t crc32_of(const void* data, size_t size, uint32_t crc = 0);

}  // namespace vlmo
