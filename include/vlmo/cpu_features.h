// What the CPU this process runs on can do: its model name and the instruction-set extensions that
// decide which matrix-product kernels run (AVX2 / FMA; AVX-512 and its BF16 / VNNI parts; AMX), as
// the kernel reports them (Linux /proc/cpuinfo: extensions the operating system has enabled).
// `vlmo bench` reports them, so every speed figure names the ISA it ran on.
#pragma once
#include <string>
#include <vector>

namespace vlmo {

struct CpuFeatures {
  std::string model;                  // e.g. "AMD EPYC 9B45"; "unknown" where not reported
  std::vector<std::string> features;  // the extensions below that the CPU has, in this order
  bool has(const std::string& name) const;
  // The widest vector ISA: "amx", "avx512_bf16", "avx512", "avx2" or "baseline".
  std::string widest() const;
};

// The extensions looked for, in the order reported.
const std::vector<std::string>& cpu_feature_names();

// Read once per process.
const CpuFeatures& cpu_features();

// Parses /proc/cpuinfo's text (tests give their own).
CpuFeatures parse_cpuinfo(const std::string& cpuinfo);

}  // namespace vlmo
