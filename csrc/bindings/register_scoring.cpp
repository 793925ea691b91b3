#include "parse.hpp"

namespace clipguard::bindings {

void register_scoring(py::module_& m) {
  m.def(
      "compare",
      [](const py::array& region_emb, const py::array& image_emb, const py::array& image_index,
         const py::array& text_emb, float scale, int k) {
        std::vector<py::object> keep;
        const CompareArgs a =
            parse_compare_args(region_emb, image_emb, image_index, text_emb, scale, k, keep);
        CompareOutputs out;
        py::tuple result = compare_outputs(a, out);
        {
          py::gil_scoped_release release;
          compare_cpu(a, out);
        }
        return result;
      },
      py::arg("region_emb"), py::arg("image_emb"), py::arg("image_index"), py::arg("text_emb"),
      py::arg("scale"), py::arg("k"),
      "(region_labels, region_probs, image_labels, image_probs, region_image_cos).");

  m.def(
      "trigger_scores",
      [](const py::array& occluded_emb, const py::array& isolated_emb, const py::array& image_emb,
         const py::array& image_index, const py::array& candidate, const py::array& text_emb,
         float scale) {
        std::vector<py::object> keep;
        const TriggerArgs a = parse_trigger_args(occluded_emb, isolated_emb, image_emb, image_index,
                                                 candidate, text_emb, scale, keep);
        TriggerOutputs out;
        py::tuple result = trigger_outputs(a, out);
        {
          py::gil_scoped_release release;
          trigger_scores_cpu(a, out);
        }
        return result;
      },
      py::arg("occluded_emb"), py::arg("isolated_emb"), py::arg("image_emb"), py::arg("image_index"),
      py::arg("candidate"), py::arg("text_emb"), py::arg("scale"),
      "(p_image, p_occluded, p_isolated, occluded_top1, isolated_top1, score) per region.");

  m.def(
      "label_anomaly",
      [](const py::array& counts_arr, const py::array& totals_arr) {
        auto counts = checked<double>(counts_arr, "counts", {-1});
        auto totals = checked<double>(totals_arr, "totals", {counts.shape(0)});
        py::array_t<double> index({counts.shape(0)});
        {
          py::gil_scoped_release release;
          label_anomaly_cpu(counts.data(), totals.data(), counts.shape(0), index.mutable_data());
        }
        return index;
      },
      py::arg("counts"), py::arg("totals"), "Per-label anomaly index (median absolute deviation).");
}

}  // namespace clipguard::bindings
