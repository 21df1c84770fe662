// One rank of the multi-process tests (tests/dist_test.sh starts WORLD_SIZE of them on 127.0.0.1
// with torchrun's variables).
//
//   itc:  every rank holds its slice of one global batch; the ITC loss over the gathered
//         features is the one-process loss on the whole batch, and after the gradient mean the
//         encoders' gradients are the one-process gradients / world size while logit_scale's
//         are equal (the official relation; vlmo/distributed.h). Rank 0 computes the
//         one-process reference itself.
//   broadcast: rank 1 starts from other weights; after broadcast_model they equal rank 0's.
//   kill: rank 1 dies before a collective; rank 0 must fail with a clear error within the
//         timeout (exit 3), not hang.
//   hang: rank 1 stops answering (sleeps past the 3 s timeout); rank 0 must fail the same way
//         after about the timeout.
//   nan:  train() with 2 micro-batches per step and an objective that gathers; rank 1's first
//         micro-batch of step 2 gives a NaN loss. Every rank must skip step 2 together (its
//         collectives still matched, no timeout) and finish with the same weights.
#include <ATen/ATen.h>

#include <chrono>
#include <cstdio>
#include <iostream>
#include <thread>

#include "test_util.h"
#include "vlmo/batch.h"
#include "vlmo/distributed.h"
#include "vlmo/model.h"
#include "vlmo/objectives.h"
#include "vlmo/train.h"

using namespace vlmo;

namespace {

Batch global_batch(const Config& c, int64_t n) {
  at::manual_seed(1234);
  Batch b;
  b.image = at::randn({n, 3, c.image_size, c.image_size});
  b.text_ids = at::randint(1000, 2000, {n, c.max_text_len}, at::kLong);
  b.text_masks = at::ones({n, c.max_text_len}, at::kLong);
  for (int64_t i = 0; i < n; ++i) b.text_masks[i].narrow(0, 4 + i % 8, c.max_text_len - 4 - i % 8).zero_();
  return b;
}

Batch slice(const Batch& b, int64_t start, int64_t len) {
  Batch s;
  s.image = b.image.narrow(0, start, len);
  s.text_ids = b.text_ids.narrow(0, start, len);
  s.text_masks = b.text_masks.narrow(0, start, len);
  return s;
}

std::map<std::string, at::Tensor> grads_of(VLMo& m) {
  std::map<std::string, at::Tensor> g;
  for (auto& p : m->named_parameters())
    if (p.value().grad().defined()) g[p.key()] = p.value().grad().clone();
  return g;
}

}  // namespace

int main(int argc, char** argv) {
  const std::string mode = argc > 1 ? argv[1] : "itc";
  at::set_num_threads(1);
  try {
    const LaunchInfo info = launch_info_from_env();
    const bool fault = mode == "kill" || mode == "hang";
    // nan: a rank left waiting in an unmatched collective fails after 10 s instead of passing.
    auto dist = Distributed::init(info, std::chrono::milliseconds(fault ? 3000 : mode == "nan" ? 10000 : 60000));
    const int W = dist->world_size(), r = dist->rank();
    Config cfg = test::tiny_config({"itc"});
    cfg.drop_path_rate = 0;  // no random draws: the ranks and the one process compute the same features
    if (fault) {
      dist->barrier();
      if (r == 1 && mode == "kill") std::_Exit(9);  // dies without a word
      if (r == 1) {
        std::this_thread::sleep_for(std::chrono::seconds(8));  // alive but silent
        return 0;
      }
      std::vector<at::Tensor> t = {at::ones({4})};
      const auto t0 = std::chrono::steady_clock::now();
      try {
        dist->all_reduce_sum(t);
      } catch (const Error& e) {
        const double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
        std::cout << "rank 0 stopped after " << s << " s: " << e.what() << std::endl;
        return s < 6 ? 3 : 1;  // within the 3 s timeout (and some slack)
      }
      std::cout << "rank 0: the collective returned although rank 1 died\n";
      return 1;
    }
    if (mode == "nan") {
      VLMo model = test::tiny_model(cfg, 7);
      const Batch all = global_batch(cfg, 8);
      const BatchFn batches = [&](int64_t i) { return slice(all, (i % 2) * 4, 4); };
      const ObjectiveFn objective = [&](VLMo& m, const Batch& b, const Distributed* group) {
        ItcOutput out = compute_itc(m, b, gather_over(group));  // a collective in every call
        // Step 2 (0-based 1), micro-batch 0 of rank 1: batch index (1 * 2 + 0) * 2 + 1 = 5.
        if (r == 1 && b.first_sample == 5 * 4) out.loss = out.loss * std::nan("");
        return Outputs{{"itc_loss", out.loss}};
      };
      TrainOptions o;
      o.group = dist;
      o.max_steps = 4;
      o.warmup_steps = 1;
      o.lr = 1e-3;
      o.accumulate = 2;
      o.batch_size = 4;
      o.progress = false;
      const TrainResult res = train(model, objective, batches, o);
      double sum = 0;
      for (auto& p : model->named_parameters()) sum += p.value().sum().item<double>() * (1 + p.value().numel() % 7);
      std::vector<at::Tensor> sums = {at::tensor({sum, -sum}, at::kDouble)};
      dist->all_reduce_sum(sums);  // both ranks' checksums equal <=> sum over ranks = W x own
      const double spread = std::abs(sums[0][0].item<double>() - W * sum);
      std::printf("rank %d: %lld steps, %lld skipped, weight checksum %.9g (ranks differ by %.3g)\n", r,
                  static_cast<long long>(res.steps), static_cast<long long>(res.bad_steps), sum, spread);
      return res.steps == 4 && res.bad_steps == 1 && spread < 1e-9 * std::abs(sum) ? 0 : 1;
    }
    VLMo model = test::tiny_model(cfg, r == 0 ? 7 : 8);  // rank 1 starts elsewhere: broadcast must fix it
    dist->broadcast_model(model);
    if (mode == "broadcast") {
      VLMo ref = test::tiny_model(cfg, 7);
      double worst = 0;
      auto a = model->named_parameters(), b = ref->named_parameters();
      for (auto& p : a) worst = std::max(worst, (p.value() - b[p.key()]).abs().max().item<double>());
      std::cout << "rank " << r << ": largest difference from rank 0's weights " << worst << std::endl;
      return worst == 0 ? 0 : 1;
    }
    const int64_t B = 4, N = B * W;
    const Batch all = global_batch(cfg, N);
    model->train();
    ItcOutput out = compute_itc(model, slice(all, r * B, B), gather_over(dist.get()));
    out.loss.backward();
    dist->average_gradients(model);
    const double loss = out.loss.item<double>();
    std::vector<at::Tensor> losses = {at::tensor({loss}, at::kDouble)};
    dist->all_reduce_sum(losses);
    const double reduced = losses[0].item<double>() / W;
    const auto g = grads_of(model);
    if (r != 0) return 0;

    VLMo single = test::tiny_model(cfg, 7);
    single->train();
    ItcOutput ref = compute_itc(single, all);
    ref.loss.backward();
    const auto g1 = grads_of(single);
    double worst_enc = 0, worst_scale = 0, scale_ref = 0;
    size_t compared = 0;
    for (const auto& [name, grad] : g1) {
      if (!g.count(name)) continue;
      ++compared;
      const bool is_scale = name.find("logit") != std::string::npos && name.find("scale") != std::string::npos;
      const at::Tensor want = is_scale ? grad : grad / W;  // the official relation
      const double d = (g.at(name) - want).abs().max().item<double>() / (1e-8 + want.abs().max().item<double>());
      (is_scale ? worst_scale : worst_enc) = std::max(is_scale ? worst_scale : worst_enc, d);
      if (is_scale) scale_ref = grad.abs().max().item<double>();
    }
    const double loss_diff = std::abs(reduced - ref.loss.item<double>());
    std::printf("{\"world_size\": %d, \"itc_loss_%d_ranks\": %.7f, \"itc_loss_1_process\": %.7f, \"loss_difference\": %.2e, "
                "\"gradients_compared\": %zu, \"encoder_grad_rel_error_vs_full_over_W\": %.2e, "
                "\"logit_scale_grad_rel_error_vs_full\": %.2e, \"logit_scale_grad\": %.4g}\n",
                W, W, reduced, ref.loss.item<double>(), loss_diff, compared, worst_enc, worst_scale, scale_ref);
    const bool ok = loss_diff < 1e-5 && worst_enc < 1e-4 && worst_scale < 1e-4 && compared > 10 && scale_ref > 0;
    return ok ? 0 : 1;
  } catch (const std::exception& e) {
    std::cerr << "error: " << e.what() << "\n";
    return 2;
  }
}
