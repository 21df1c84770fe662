// Checked file access (vlmo/files.h).
#include "vlmo/files.h"

#include <fcntl.h>
#include <signal.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <unistd.h>
#include <zlib.h>

#include <cerrno>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <sstream>

#include "vlmo/error.h"

namespace vlmo {
namespace fs = std::filesystem;

std::ifstream open_input(const std::string& path, const std::string& what, bool binary) {
  if (path.empty()) throw Error(cat("no ", what, " file given (empty path)"));
  struct stat st {};
  if (::stat(path.c_str(), &st) != 0) throw Error(cat(path, ": cannot open ", what, " (", std::strerror(errno), ")"));
  if (S_ISDIR(st.st_mode)) throw Error(cat(path, ": is a folder, expected a ", what, " file"));
  std::ifstream in(path, binary ? std::ios::in | std::ios::binary : std::ios::in);
  if (!in) throw Error(cat(path, ": cannot open ", what, " (", std::strerror(errno), ")"));
  return in;
}

std::string read_input(const std::string& path, const std::string& what) {
  std::ifstream in = open_input(path, what, true);
  std::ostringstream s;
  s << in.rdbuf();
  if (in.bad()) throw Error(cat(path, ": read failed (", std::strerror(errno), ")"));
  return s.str();
}

void check_output_path(const std::string& path, const std::string& what) {
  if (path.empty()) throw Error(cat(what, ": no path given"));
  std::error_code ec;
  if (fs::is_directory(path, ec)) throw Error(cat(what, " ", path, ": is a folder, expected a file path"));
  fs::path parent = fs::path(path).parent_path();
  if (parent.empty()) parent = ".";
  if (!fs::exists(parent, ec))
    throw Error(cat(what, " ", path, ": folder ", parent.string(), " does not exist (create it first)"));
  if (!fs::is_directory(parent, ec)) throw Error(cat(what, " ", path, ": ", parent.string(), " is not a folder"));
  if (::access(parent.c_str(), W_OK | X_OK) != 0)
    throw Error(cat(what, " ", path, ": cannot write in folder ", parent.string(), " (", std::strerror(errno), ")"));
  if (fs::exists(path, ec) && ::access(path.c_str(), W_OK) != 0)
    throw Error(cat(what, " ", path, ": cannot write (", std::strerror(errno), ")"));
}

void write_file_atomic(const std::string& path, const std::string& bytes) {
  const std::string tmp = path + ".tmp." + std::to_string(::getpid());
  const int fd = ::open(tmp.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
  if (fd < 0) throw Error(cat(path, ": cannot create (", std::strerror(errno), ")"));
  size_t done = 0;
  while (done < bytes.size()) {
    const ssize_t n = ::write(fd, bytes.data() + done, bytes.size() - done);
    if (n < 0) {
      if (errno == EINTR) continue;
      const int err = errno;
      ::close(fd);
      ::unlink(tmp.c_str());
      throw Error(cat(path, ": write failed (", std::strerror(err), "); the previous file is untouched"));
    }
    done += static_cast<size_t>(n);
  }
  if (::fsync(fd) != 0 || ::close(fd) != 0) {
    const int err = errno;
    ::unlink(tmp.c_str());
    throw Error(cat(path, ": could not flush to disk (", std::strerror(err), "); the previous file is untouched"));
  }
  if (std::rename(tmp.c_str(), path.c_str()) != 0) {
    const int err = errno;
    ::unlink(tmp.c_str());
    throw Error(cat(path, ": cannot rename temporary file into place (", std::strerror(err), ")"));
  }
  // Make the rename itself durable.
  fs::path parent = fs::path(path).parent_path();
  if (parent.empty()) parent = ".";
  const int dfd = ::open(parent.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (dfd >= 0) {
    ::fsync(dfd);
    ::close(dfd);
  }
}

void flush_checked(std::ostream& out, const std::string& path) {
  errno = 0;
  out.flush();
  if (!out) throw Error(cat(path, ": write failed (", errno ? std::strerror(errno) : "stream error", ")"));
}

int remove_stale_temporaries(const std::string& path) {
  const fs::path p(path);
  fs::path dir = p.parent_path();
  if (dir.empty()) dir = ".";
  const std::string prefix = p.filename().string() + ".tmp.";
  int removed = 0;
  std::error_code ec;
  for (const auto& e : fs::directory_iterator(dir, ec)) {
    const std::string name = e.path().filename().string();
    if (name.rfind(prefix, 0) != 0) continue;
    const std::string pid_text = name.substr(prefix.size());
    if (pid_text.empty() || pid_text.find_first_not_of("0123456789") != std::string::npos) continue;
    const long pid = std::strtol(pid_text.c_str(), nullptr, 10);
    if (pid == ::getpid()) continue;
    if (pid > 0 && ::kill(static_cast<pid_t>(pid), 0) == 0) continue;  // its writer still runs
    if (fs::remove(e.path(), ec)) ++removed;
  }
  return removed;
}

FileLock::FileLock(const std::string& path, const std::string& what) : lock_path_(path + ".lock") {
  fd_ = ::open(lock_path_.c_str(), O_RDWR | O_CREAT | O_CLOEXEC, 0644);
  if (fd_ < 0) throw Error(cat(lock_path_, ": cannot create the lock file of ", what, " (", std::strerror(errno), ")"));
  if (::flock(fd_, LOCK_EX | LOCK_NB) != 0) {
    char buf[32] = {0};
    const ssize_t n = ::pread(fd_, buf, sizeof buf - 1, 0);
    std::string holder = n > 0 ? std::string(buf, static_cast<size_t>(n)) : "";
    while (!holder.empty() && (holder.back() == '\n' || holder.back() == ' ')) holder.pop_back();
    ::close(fd_);
    fd_ = -1;
    throw Error(cat(path, ": ", what, " is in use by another running process", holder.empty() ? "" : " (pid " + holder + ")",
                    "; lock file ", lock_path_));
  }
  const std::string pid = std::to_string(::getpid()) + "\n";
  if (::ftruncate(fd_, 0) == 0) {
    [[maybe_unused]] const ssize_t w = ::pwrite(fd_, pid.data(), pid.size(), 0);
  }
}

FileLock::~FileLock() {
  // The lock file stays (removing it would let a process that opened it just before lock the
  // unlinked file while a third locks a new one); without a holder it means nothing.
  if (fd_ >= 0) ::close(fd_);  // releases the lock
}

uint32_t crc32_of(const void* data, size_t size, uint32_t crc) {
  if (size == 0) return crc;  // zlib returns the initial value for a null buffer (empty tensors)
  return static_cast<uint32_t>(::crc32_z(crc, static_cast<const Bytef*>(data), size));
}

}  // namespace vlmo
