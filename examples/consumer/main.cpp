// A minimal service-style use of libvlmo: load a model once, embed an image with the dual
// encoder, answer a question about it with the VQA head. Prints one JSON line.
//   vlmo_consumer MODEL IMAGE QUESTION [VOCAB]
// MODEL: a vlmo model file (e.g. from `vlmo convert ... --config C.json --answers A.json`).
#include <ATen/ATen.h>

#include <iostream>
#include <nlohmann/json.hpp>

#include "vlmo/checkpoint.h"
#include "vlmo/data.h"
#include "vlmo/error.h"
#include "vlmo/image.h"
#include "vlmo/image_tensor.h"
#include "vlmo/tasks.h"
#include "vlmo/tokenizer.h"

int main(int argc, char** argv) {
  if (argc < 4) {
    std::cerr << "usage: vlmo_consumer MODEL IMAGE QUESTION [VOCAB]\n";
    return 2;
  }
  try {
    vlmo::LoadedModel m = vlmo::load_model(argv[1]);
    const vlmo::Config& cfg = m.model->config();
    const vlmo::Tokenizer tok = vlmo::Tokenizer::from_file(argc > 4 ? argv[4] : vlmo::Tokenizer::default_vocab_path());
    at::NoGradGuard no_grad;
    const at::Tensor image = vlmo::eval_transform(vlmo::read_image(argv[2]), cfg.image_size).unsqueeze(0);
    nlohmann::json out;
    const at::Tensor embedding = vlmo::encode_images(m.model, image)[0];
    out["embedding_dim"] = embedding.size(0);
    out["embedding_norm"] = embedding.norm().item<double>();
    const auto [ids, masks] = vlmo::encode_batch(tok, {argv[3]}, cfg.max_text_len);
    const at::Tensor probs = at::sigmoid(vlmo::vqa_logits(m.model, ids, masks, image))[0];
    const int64_t best = probs.argmax().item<int64_t>();
    out["answer"] = m.vqa_answers.empty() ? std::to_string(best) : m.vqa_answers.at(best);
    out["probability"] = probs[best].item<double>();
    std::cout << out.dump() << "\n";
  } catch (const vlmo::Error& e) {
    std::cerr << "error: " << e.what() << "\n";
    return 1;
  }
  return 0;
}
