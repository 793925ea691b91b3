#include "decode_args.hpp"

namespace clipguard::bindings {

void register_decode(py::module_& m) {
  def_detect(m, detect_cpu);
  def_masks(m, masks_cpu);
}

}  // namespace clipguard::bindings
