// vlmo convert: a PyTorch checkpoint (or safetensors) to safetensors.
#include <iostream>

#include "cli.h"
#include "vlmo/checkpoint.h"
#include "vlmo/error.h"

namespace vlmo::cli {
namespace {

int run_convert(const Args& a) {
  const std::string& in = a.positional[0];
  const std::string& out = a.positional[1];
  TensorMap weights = read_weights(in);
  std::cerr << "read " << weights.size() << " tensors from " << in << "\n";
  if (!a.get("config").empty() || !a.get("preset").empty()) {
    // Load into a model (validating names and shapes, resizing as configured), write its state.
    const Config cfg = a.get("config").empty() ? Config::preset(a.get("preset")) : load_config(a.get("config"));
    VLMo model(cfg);
    init_weights(model, 0);
    const LoadReport report = load_weights(model, std::move(weights), a.get_flag("strict"));
    if (!report.clean() || !report.resized.empty() || !report.ignored.empty())
      std::cerr << report.describe();
    weights = model_state_dict(*model);
  }
  write_safetensors(out, weights, {{"format", "pt"}, {"converted_from", in}});
  std::cerr << "wrote " << weights.size() << " tensors to " << out << "\n";
  return 0;
}

}  // namespace

Command convert_command() {
  Command c;
  c.name = "convert";
  c.summary =
      "Convert an official PyTorch checkpoint (Lightning .ckpt, DeepSpeed or bare state_dict, "
      "zip-format torch.save) or a safetensors file to safetensors.\nWith --preset or --config the "
      "weights are loaded into that model first (resized to its image size and text length).";
  c.usage = "vlmo convert [options] IN OUT.safetensors";
  c.options = {{"preset", "", "load into this preset first (base, base_plus, large)"},
               {"config", "", "load into the model of this config JSON first"},
               {"strict", "false", "with --preset/--config: fail on any missing or unexpected tensor", true}};
  c.min_positional = c.max_positional = 2;
  c.run = run_convert;
  return c;
}

}  // namespace vlmo::cli
