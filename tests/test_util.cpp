// src/util/: files (output and input paths checked before work, the lock, temporaries of dead
// writers), precision names, stop signals, and the allocator's keeping of freed host memory.
#include "test_util.h"

#include <ATen/ATen.h>
#include <gtest/gtest.h>
#include <sys/wait.h>
#include <unistd.h>

#include <csignal>
#include <cstdlib>
#include <cstring>
#include <filesystem>

#include "vlmo/files.h"
#include "vlmo/precision.h"
#include "vlmo/signals.h"
#include "vlmo/threads.h"

#if defined(__GLIBC__)
#include <malloc.h>
#endif

using namespace vlmo;
using vlmo::test::expect_error;

namespace {

pid_t dead_pid() {
  const pid_t pid = ::fork();
  if (pid == 0) ::_exit(0);
  int status = 0;
  ::waitpid(pid, &status, 0);
  return pid;  // reaped: no process has it (until the pid wraps around)
}

// Runs `body` in a child process and returns its wait status.
template <class F>
int in_child(F body) {
  const pid_t pid = ::fork();
  if (pid == 0) ::_exit(body());
  int status = 0;
  ::waitpid(pid, &status, 0);
  return status;
}

}  // namespace

TEST(Signals, ARepeatWithinTheWindowIsTheSameRequest) {
  // Two SIGTERMs back to back (as `timeout` sends them: to the child, then to its group) are one
  // request: the process goes on to its safe point. A SIGINT after the window ends it at once.
  int status = in_child([] {
    install_stop_handlers();
    std::raise(SIGTERM);
    std::raise(SIGTERM);
    if (stop_requested() != SIGTERM || stop_signal_count() != 1) return 3;
    ::usleep(static_cast<useconds_t>((kStopRepeatWindowMs + 300) * 1000));
    std::raise(SIGINT);
    return 0;  // not reached when the late signal ends the process
  });
  EXPECT_TRUE(WIFSIGNALED(status) && WTERMSIG(status) == SIGINT) << "wait status " << status;
  // Work that bounds its own stop (the server) counts the late signal and not the repeat.
  status = in_child([] {
    install_stop_handlers(/*second_signal_exits=*/false);
    std::raise(SIGINT);
    std::raise(SIGTERM);
    const int first = stop_signal_count();
    ::usleep(static_cast<useconds_t>((kStopRepeatWindowMs + 300) * 1000));
    std::raise(SIGTERM);
    return first == 1 && stop_signal_count() == 2 && stop_requested() == SIGINT ? 0 : 4;
  });
  EXPECT_TRUE(WIFEXITED(status) && WEXITSTATUS(status) == 0) << "wait status " << status;
}

TEST(Files, OutputPathsAreCheckedBeforeWork) {
  const std::string dir = vlmo::test::temp_dir();
  expect_error([&] { check_output_path(dir + "/missing/ck.safetensors", "checkpoint (--out)"); },
               {"checkpoint (--out)", "/missing/ck.safetensors", "does not exist"});
  expect_error([&] { check_output_path(dir, "metrics file"); }, {dir, "is a folder"});
  expect_error([&] { check_output_path("", "checkpoint"); }, {"checkpoint", "no path"});
  check_output_path(dir + "/fine.safetensors", "checkpoint");  // a new file in an existing folder
}

TEST(Files, InputsNameThePathAndWhatWasExpected) {
  const std::string dir = vlmo::test::temp_dir();
  expect_error([&] { open_input(dir, "text corpus"); }, {dir, "is a folder", "text corpus"});
  expect_error([&] { open_input(dir + "/nope.txt", "text corpus"); }, {"nope.txt", "No such file"});
  expect_error([&] { open_input("", "model config JSON"); }, {"no model config JSON file given"});
  // The library's readers use them: a folder given as a config or a vocabulary is named.
  expect_error([&] { load_config(dir); }, {dir, "is a folder", "model config JSON"});
  expect_error([&] { Tokenizer::from_file(dir); }, {dir, "is a folder", "vocabulary"});
}

TEST(Files, ASecondHolderOfTheLockIsRefused) {
  const std::string path = vlmo::test::temp_dir() + "/run.safetensors";
  {
    FileLock first(path, "the checkpoint");
    expect_error([&] { FileLock second(path, "the checkpoint"); },
                 {path, "in use by another running process", "pid " + std::to_string(::getpid())});
  }
  FileLock again(path, "the checkpoint");  // released with its holder
}

TEST(Files, StaleTemporariesOfDeadWritersAreRemoved) {
  const std::string dir = vlmo::test::temp_dir();
  const std::string path = dir + "/ck.safetensors";
  const std::string stale = path + ".tmp." + std::to_string(dead_pid());
  const std::string mine = path + ".tmp." + std::to_string(::getpid());
  const std::string other = dir + "/other.safetensors.tmp.1";
  for (const auto& f : {stale, mine, other}) vlmo::test::write_file(f, "partial");
  EXPECT_EQ(remove_stale_temporaries(path), 1);
  EXPECT_FALSE(std::filesystem::exists(stale));
  EXPECT_TRUE(std::filesystem::exists(mine));   // this process may be writing it
  EXPECT_TRUE(std::filesystem::exists(other));  // another file's
}

TEST(Precision, NamesParseAndBadOnesAreErrors) {
  EXPECT_EQ(parse_precision("fp32"), Precision::kFloat32);
  EXPECT_EQ(parse_precision("bf16"), Precision::kBFloat16);
  EXPECT_EQ(parse_precision("bfloat16"), Precision::kBFloat16);
  EXPECT_EQ(precision_name(Precision::kBFloat16), "bf16");
  EXPECT_EQ(parse_precision("fp16"), Precision::kFloat16);
  EXPECT_EQ(parse_precision("float16"), Precision::kFloat16);
  EXPECT_EQ(precision_name(Precision::kFloat16), "fp16");
  EXPECT_EQ(precision_dtype(Precision::kFloat16), at::kHalf);
  expect_error([] { parse_precision("fp8"); }, {"precision \"fp8\"", "expected fp32, bf16 or fp16"});
}

// Sanitizers bring their own malloc: the allocator test is about glibc's.
#if defined(__SANITIZE_ADDRESS__)
#define VLMO_TEST_OWN_MALLOC 1
#elif defined(__has_feature)
#if __has_feature(address_sanitizer) || __has_feature(memory_sanitizer) || __has_feature(thread_sanitizer)
#define VLMO_TEST_OWN_MALLOC 1
#endif
#endif

// keep_freed_host_memory (called by the vlmo program at start): a block far above glibc's mmap
// threshold comes from the heap, and freeing it keeps it there for the next step.
TEST(Allocator, FreedHostMemoryStaysInTheProcessForReuse) {
#if !defined(__GLIBC__) || defined(VLMO_TEST_OWN_MALLOC)
  GTEST_SKIP() << "not glibc's malloc";
#else
  for (const char* v :
       {"VLMO_SYSTEM_MALLOC", "MALLOC_MMAP_MAX_", "MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_", "GLIBC_TUNABLES"})
    if (std::getenv(v)) GTEST_SKIP() << v << " is set: the user's malloc settings win";
  ASSERT_TRUE(vlmo::keep_freed_host_memory());
  const size_t n = size_t{96} << 20;
  const struct mallinfo2 before = mallinfo2();
  auto* p = static_cast<char*>(std::malloc(n));
  ASSERT_NE(p, nullptr);
  std::memset(p, 1, n);
  static char* volatile escape = nullptr;  // the block must really exist: no malloc / free elision
  escape = p;
  EXPECT_EQ(escape[n / 2], 1);
  const struct mallinfo2 during = mallinfo2();
  EXPECT_EQ(during.hblkhd, before.hblkhd) << "the block was mapped on its own (mmap), not taken from the heap";
  std::free(p);
  const struct mallinfo2 after = mallinfo2();
  EXPECT_EQ(after.arena, during.arena) << "the heap was trimmed: the freed block went back to the kernel";
  EXPECT_GE(after.fordblks, n);
#endif
}
