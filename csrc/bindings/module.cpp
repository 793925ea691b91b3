// clipguard._core: wires up one submodule per area; each area registers itself.
#include <pybind11/pybind11.h>

#include "clipguard/common.hpp"
#include "clipguard/parallel.hpp"

namespace py = pybind11;

namespace clipguard::bindings {
void register_regions(py::module_& m);
void register_scoring(py::module_& m);
void register_decode(py::module_& m);
}  // namespace clipguard::bindings

PYBIND11_MODULE(_core, m) {
  m.doc() = "clipguard native core (CPU). Private: use clipguard.regions and clipguard.scoring.";
  py::register_exception<clipguard::ClipguardError>(m, "ClipguardError", PyExc_RuntimeError);
  auto regions = m.def_submodule("regions", "Batched region views (crop, isolate, occlude).");
  clipguard::bindings::register_regions(regions);
  auto scoring = m.def_submodule("scoring", "Region scoring and label anomaly.");
  clipguard::bindings::register_scoring(scoring);
  auto decode = m.def_submodule("decode", "YOLOv8-seg / FastSAM output decoding (boxes, NMS, masks).");
  clipguard::bindings::register_decode(decode);
  m.def("num_threads", &clipguard::num_threads, "Worker threads the kernels use (CLIPGUARD_NUM_THREADS).");
  m.attr("__version__") = CLIPGUARD_VERSION;
  m.attr("compiler") = CLIPGUARD_COMPILER;
  m.attr("build_type") = CLIPGUARD_BUILD_TYPE;
  m.attr("cuda_status") = CLIPGUARD_CUDA_STATUS;
}
