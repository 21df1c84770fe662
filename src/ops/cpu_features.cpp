#include "vlmo/cpu_features.h"

#include <algorithm>
#include <fstream>
#include <set>
#include <sstream>

namespace vlmo {

const std::vector<std::string>& cpu_feature_names() {
  static const std::vector<std::string> names = {"avx2",     "fma",         "avx512f",     "avx512bw",    "avx512vl",
                                                 "avx512dq", "avx512_vnni", "avx512_bf16", "avx512_fp16", "avx_vnni",
                                                 "amx_tile", "amx_bf16",    "amx_int8"};
  return names;
}

bool CpuFeatures::has(const std::string& name) const {
  return std::find(features.begin(), features.end(), name) != features.end();
}

std::string CpuFeatures::widest() const {
  if (has("amx_tile") && has("amx_bf16")) return "amx";
  const bool avx512 = has("avx512f") && has("avx512bw") && has("avx512vl") && has("avx512dq");
  if (avx512 && has("avx512_bf16")) return "avx512_bf16";
  if (avx512) return "avx512";
  if (has("avx2") && has("fma")) return "avx2";
  return "baseline";
}

CpuFeatures parse_cpuinfo(const std::string& cpuinfo) {
  CpuFeatures out;
  out.model = "unknown";
  std::set<std::string> flags;
  bool model_seen = false, flags_seen = false;
  std::istringstream in(cpuinfo);
  for (std::string line; std::getline(in, line) && !(model_seen && flags_seen);) {
    const auto colon = line.find(':');
    if (colon == std::string::npos) continue;
    std::string key = line.substr(0, colon);
    key.erase(key.find_last_not_of(" \t") + 1);
    std::string value = line.substr(colon + 1);
    value.erase(0, value.find_first_not_of(" \t"));
    if (key == "model name" && !model_seen) {
      out.model = value.empty() ? out.model : value;
      model_seen = true;
    } else if (key == "flags" && !flags_seen) {
      std::istringstream words(value);
      for (std::string w; words >> w;) flags.insert(w);
      flags_seen = true;
    }
  }
  for (const auto& name : cpu_feature_names())
    if (flags.count(name)) out.features.push_back(name);
  return out;
}

const CpuFeatures& cpu_features() {
  static const CpuFeatures features = [] {
    std::ifstream in("/proc/cpuinfo");
    std::stringstream text;
    text << in.rdbuf();
    return parse_cpuinfo(text.str());
  }();
  return features;
}

}  // namespace vlmo
