#include "parse.hpp"

namespace clipguard::bindings {

void register_scoring(py::module_& m) {
  def_compare(m, compare_cpu);

  def_trigger_scores(m, trigger_scores_cpu);

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
