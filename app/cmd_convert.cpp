// vlmo convert: an official PyTorch checkpoint (or safetensors) to a safetensors file. With a
// config or preset it becomes a self-describing model file (config, VQA answers) that every
// command taking --model accepts.
#include <iostream>

#include "common.h"
#include "vlmo/checkpoint.h"
#include "vlmo/error.h"

namespace vlmo::cli {
namespace {

int run_convert(const Args& a) {
  const std::string& in = a.positional[0];
  if (in.empty()) throw Error("vlmo convert: the input checkpoint path IN is empty");
  const std::string& out = a.positional[1];
  const bool into_model = !a.get("config").empty() || !a.get("preset").empty();
  if (!into_model) {
    for (const char* o : {"answers", "image-size", "max-text-len"})
      if (a.given.count(o)) throw Error(cat("--", o, " needs --config or --preset (the model to load the weights into)"));
    const TensorMap weights = read_weights(in);
    write_safetensors(out, weights, {{"format", "pt"}, {"converted_from", in}});
    std::cerr << "wrote " << weights.size() << " tensors to " << out << " (names and values as in " << in << ")\n";
    return 0;
  }
  Args spec = a;
  spec.values["model"] = in;
  LoadedModel m = load_model_from(spec);
  // --strict: every tensor of the file belongs to the model and the model has every tensor
  // (checked before anything is written).
  if (a.get_flag("strict") && (!m.report.unexpected.empty() || !m.report.missing.empty()))
    throw Error(cat("strict load failed: ", m.report.missing.size(), " missing, ", m.report.unexpected.size(),
                    " unexpected tensors\n", m.report.describe()));
  if (!m.report.resized.empty()) std::cerr << m.report.describe();
  save_model(out, m.model, m.vqa_answers, {{"converted_from", in}});
  const Config& c = m.model->config();
  std::cerr << "wrote " << model_state_dict(*m.model).size() << " tensors to " << out << ": " << c.embed_dim << "-d, " << c.depth
            << " blocks, " << c.image_size << " px, text " << c.max_text_len << ", heads";
  for (const auto& h : c.heads) std::cerr << " " << h;
  if (!m.vqa_answers.empty()) std::cerr << ", " << m.vqa_answers.size() << " VQA answers";
  std::cerr << "\n";
  return 0;
}

}  // namespace

Command convert_command() {
  Command c;
  c.name = "convert";
  c.summary = "Convert an official PyTorch checkpoint (Lightning .ckpt, DeepSpeed or bare state_dict, "
              "zip-format torch.save) or a safetensors file to safetensors.\nWith --config or --preset the "
              "weights are loaded into that model (heads follow the weights; position tables resized to "
              "--image-size / --max-text-len) and the file records the config and --answers, so every "
              "command that takes --model accepts it.";
  c.usage =
      "vlmo convert IN OUT.safetensors [--config C.json | --preset P [--image-size S] [--max-text-len L]] [--answers A.json]";
  c.options = {{"config", "", "model config JSON (official hyper-parameter names)"},
               {"preset", "", "model preset: base, base_plus, large"},
               integer_option("image-size", "0", "image size of the converted model (0: the config's)", 0, 8192),
               integer_option("max-text-len", "0", "text length of the converted model (0: the config's)", 0, 4096),
               {"answers", "", "VQA answer list to record: JSON array of strings in label order"},
               {"strict", "false", "fail on any tensor of the file the model does not have", true}};
  c.min_positional = c.max_positional = 2;
  c.run = run_convert;
  return c;
}

}  // namespace vlmo::cli
