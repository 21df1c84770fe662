// Weights in and out: reading PyTorch checkpoints (zip-format torch.save holding a Lightning,
// DeepSpeed or bare state_dict) and safetensors; loading a state_dict into a model strictly or
// not, resizing position tables as the official loader does (reference §1.4, §1.6).
#pragma once
#include <string>
#include <vector>

#include "vlmo/model.h"
#include "vlmo/safetensors.h"

namespace vlmo {

// Every tensor of a torch.save zip file's state_dict: `ckpt["state_dict"]` (Lightning), else
// `ckpt["module"]` with the "module." prefix stripped (DeepSpeed), else `ckpt["model"]`, else
// the object itself. Non-tensor entries are skipped. Unknown pickled classes are stood in for.
TensorMap read_torch_checkpoint(const std::string& path);
// A weight file of either format, told apart by its first bytes, with the safetensors metadata
// (empty for torch.save files). A vlmo training checkpoint yields only its model's tensors
// ("model.*", prefix removed); its metadata records the config.
struct WeightsFile {
  TensorMap tensors;
  std::map<std::string, std::string> metadata;
};
WeightsFile read_weights_file(const std::string& path);
inline TensorMap read_weights(const std::string& path) { return read_weights_file(path).tensors; }

// The model's parameters and persistent buffers under their official names.
TensorMap model_state_dict(torch::nn::Module& model);

struct LoadReport {
  std::vector<std::string> missing;     // in the model, not in the file
  std::vector<std::string> unexpected;  // in the file, not in the model
  std::vector<std::string> mismatched;  // "name: file [..] vs model [..]"
  std::vector<std::string> resized;     // what was resampled or truncated, and how
  std::vector<std::string> ignored;     // index buffers old checkpoints carry
  bool clean() const { return missing.empty() && unexpected.empty() && mismatched.empty(); }
  std::string describe() const;  // one line per problem
};

// Copies `weights` into `model` (converting dtype). Before matching shapes it adapts, as the
// official loader: the relative-position table's image rows are resampled to the model's image
// size, `transformer.pos_embed` is bicubically interpolated, and longer text position tables are
// truncated. strict: any missing, unexpected or mis-shaped tensor throws vlmo::Error listing all
// of them (nothing is copied); non-strict: the matching tensors are copied and the rest reported.
LoadReport load_weights(VLMo& model, TensorMap weights, bool strict);

// Makes `cfg` fit a state dict: the heads are those whose tensors it holds (a fine-tuned VQA
// checkpoint has no MLM or ITC heads), and the VQA label count and the number of token types
// are read from the tensors' shapes.
void adapt_config_to_weights(Config& cfg, const TensorMap& weights);

// Where a model's architecture comes from when the weight file does not record it (official
// .pt / .ckpt files), and what to override. Empty / 0 fields are not given.
struct ModelSpec {
  std::string config_path;   // a model config JSON (official hyper-parameter names)
  std::string preset;        // base, base_plus, large
  int image_size = 0;        // resize the position tables to this image size
  int max_text_len = 0;      // and this text length
  std::string answers_path;  // VQA answer list: a JSON array of strings in label order
};

// The architecture of the weight file `path` (with safetensors `metadata`): spec.config_path,
// else spec.preset, else the file's recorded "config", else an error saying what to give;
// then spec.image_size / spec.max_text_len override.
Config model_config(const std::string& path, const std::map<std::string, std::string>& metadata, const ModelSpec& spec);

// The safetensors metadata key under which a checkpoint records its vocabulary (vocab.txt's text)
// when the model was trained with one other than BERT uncased (the demo's); commands without
// --vocab tokenize with it.
inline constexpr const char* kVocabMetadataKey = "vocab";

struct LoadedModel {
  VLMo model{nullptr};
  std::map<std::string, std::string> metadata;  // the file's (empty for torch.save files)
  std::vector<std::string> vqa_answers;         // label order; empty when none is known
  LoadReport report;                            // unexpected tensors, resizing
};

// A model ready for inference (eval mode) from any weight file: a vlmo checkpoint or converted
// file that records its config, or an official checkpoint with `spec.config_path` /
// `spec.preset`. The config comes from the spec, else from the file; the heads follow the
// weights. Missing or mis-shaped tensors are errors naming them; unexpected ones are reported.
// The VQA answers come from `spec.answers_path`, else the file's "vqa_answers" metadata, and
// must number exactly the classifier's labels.
LoadedModel load_model(const std::string& path, const ModelSpec& spec = {});

// A VQA answer list file: a JSON array of distinct strings. Errors name the file and entry.
std::vector<std::string> read_answer_list(const std::string& path);

// Writes a model as a self-describing weight file: its state dict, its config ("config") and,
// when given, the VQA answers ("vqa_answers") as safetensors metadata; any command that takes
// --model accepts it.
void save_model(const std::string& path, VLMo& model, const std::vector<std::string>& vqa_answers = {},
                std::map<std::string, std::string> metadata = {});

}  // namespace vlmo

namespace vlmo {
// A BEiT checkpoint's state_dict under VLMo's names (reference §1.6/§3): "blocks.i.mlp.*" ->
// "transformer.blocks.i.mlp_imag.*", "norm2" -> "norm2_imag", everything else gets the
// "transformer." prefix; the per-layer "blocks.i.attn.relative_position_bias_table" [(2W-1)²+3, H]
// tensors are concatenated (layer-major) into rows 0 .. (2W-1)²+2 of a merged table with
// `table_rows` rows (the text rows stay zero). Index buffers are dropped.
TensorMap beit_to_vlmo(const TensorMap& beit, int64_t table_rows);
}  // namespace vlmo
