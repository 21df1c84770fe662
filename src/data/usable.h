// Internal to src/data: samples that cannot be used (missing or corrupt image, blank or
// non-UTF-8 caption) are skipped and replaced, and each skip is reported in the batch.
#pragma once
#include <sys/stat.h>

#include <functional>
#include <map>
#include <optional>
#include <string>
#include <vector>

#include "vlmo/batch.h"
#include "vlmo/data.h"
#include "vlmo/error.h"
#include "vlmo/image.h"

namespace vlmo::detail {

// Why a sample cannot be used (a reason key of vlmo::SkipCounters) and where.
struct Unusable {
  std::string reason, what;
};

// Loads an image through `load`, or says why it cannot be used: "missing_file" when no such
// file exists, else "corrupt_image".
inline std::optional<Unusable> try_image(const std::function<Image(const std::string&)>& load, const std::string& path,
                                         Image& out) {
  try {
    out = load(path);
    return std::nullopt;
  } catch (const Error& e) {
    struct stat st {};
    if (::stat(path.c_str(), &st) != 0) return Unusable{"missing_file", cat(path, ": no such image file")};
    return Unusable{"corrupt_image", e.what()};
  }
}

// Skips met while building one batch.
struct SkipNotes {
  std::map<std::string, int64_t> counts;
  std::vector<std::string> log;
  void note(const Unusable& u) {
    ++counts[u.reason];
    log.push_back(cat(u.what, " [", u.reason, "]"));
  }
  void attach(Batch& b) {
    b.skipped = std::move(counts);
    b.skip_log = std::move(log);
  }
};

constexpr int kMaxUnusableInARow = 100;

// Fills the sample at global position `g` of an epoch-ordered source of n items: `try_item(i)`
// takes item i (returning nullopt) or says why it cannot be used; an unusable item is replaced
// by the next epoch's item at the same position. 100 in a row end the run.
template <typename TryItem>
void fill_position(EpochOrder& order, int64_t g, TryItem try_item, SkipNotes& notes) {
  const int64_t n = static_cast<int64_t>(order.size());
  for (int in_a_row = 1;; g += n, ++in_a_row) {
    const std::optional<Unusable> bad = try_item(order.at(g));
    if (!bad) return;
    notes.note(*bad);
    if (in_a_row >= kMaxUnusableInARow)
      throw Error(cat("data: ", in_a_row, " samples in a row could not be used (last: ", bad->what, " [", bad->reason,
                      "]); is the source readable?"));
  }
}

}  // namespace vlmo::detail
