// A minimal service-style use of the installed libraries: load a model once, embed an image with
// the dual encoder, answer a question about it with the VQA head (vlmo::vlmo); search a FAISS
// index of the image's embedding with the question's (vlmo::index); chart the five most probable
// answers as PNG + SVG (vlmo::plot). Prints one JSON line.
//   vlmo_consumer MODEL IMAGE QUESTION [VOCAB [CHART_STEM]]
// MODEL: a vlmo model file (e.g. from `vlmo convert ... --config C.json --answers A.json`).
#include <ATen/ATen.h>

#include <iostream>
#include <nlohmann/json.hpp>

#include "vlmo/checkpoint.h"
#include "vlmo/data.h"
#include "vlmo/error.h"
#include "vlmo/image.h"
#include "vlmo/image_tensor.h"
#include "vlmo/metrics_plot.h"
#include "vlmo/tasks.h"
#include "vlmo/tokenizer.h"
#include "vlmo/vector_index.h"

int main(int argc, char** argv) {
  if (argc < 4) {
    std::cerr << "usage: vlmo_consumer MODEL IMAGE QUESTION [VOCAB [CHART_STEM]]\n";
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
    // The image as a one-item collection; the question as a text query over it.
    vlmo::EmbeddingSet set;
    set.ids = {argv[2]};
    set.dim = embedding.size(0);
    set.modality = "image";
    const at::Tensor row = embedding.to(at::kFloat).contiguous();
    set.vectors.assign(row.data_ptr<float>(), row.data_ptr<float>() + set.dim);
    const vlmo::VectorIndex index = vlmo::VectorIndex::build(set);
    const at::Tensor query = vlmo::encode_texts(m.model, ids, masks).to(at::kFloat).contiguous();
    const auto hits = index.search(query.data_ptr<float>(), 1, 1);
    out["search_id"] = index.ids().at(hits.at(0).at(0).index);
    out["search_score"] = hits[0][0].score;
    if (argc > 5) {  // the top five answers' probabilities as a chart
      const auto [p, idx] = probs.topk(std::min<int64_t>(5, probs.size(0)));
      vlmo::Series series{"answer probability", {}};
      for (int64_t k = 0; k < p.size(0); ++k) series.points.push_back({static_cast<double>(k + 1), p[k].item<double>()});
      vlmo::draw_chart("top answers", {series}, argv[5]);
      out["chart"] = std::string(argv[5]) + ".png";
    }
    std::cout << out.dump() << "\n";
  } catch (const vlmo::Error& e) {
    std::cerr << "error: " << e.what() << "\n";
    return 1;
  }
  return 0;
}
