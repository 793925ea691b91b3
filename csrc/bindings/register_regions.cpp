#include "parse.hpp"

namespace clipguard::bindings {

void register_regions(py::module_& m) {
  m.def(
      "mask_boxes",
      [](const py::array& masks_arr) {
        auto masks = checked<uint8_t>(masks_arr, "masks", {-1, -1, -1});
        const py::ssize_t r = masks.shape(0);
        py::array_t<int32_t> boxes({r, py::ssize_t{4}});
        py::array_t<int64_t> areas({r});
        {
          py::gil_scoped_release release;
          mask_boxes_cpu(masks.data(), r, masks.shape(1), masks.shape(2), boxes.mutable_data(),
                         areas.mutable_data());
        }
        return py::make_tuple(boxes, areas);
      },
      py::arg("masks"), "Tight boxes [R,4] (x0, y0, x1, y1, end-exclusive) and areas [R].");

  m.def(
      "image_means",
      [](const py::array& images_arr) {
        auto images = checked<uint8_t>(images_arr, "images", {-1, -1, -1, 3});
        const py::ssize_t n = images.shape(0);
        py::array_t<float> means({n, py::ssize_t{3}});
        {
          py::gil_scoped_release release;
          image_means_cpu(images.data(), n, images.shape(1), images.shape(2), means.mutable_data());
        }
        return means;
      },
      py::arg("images"), "Mean colour [N,3] of uint8 images [N,H,W,3].");

  def_render(m, render_cpu);
}

}  // namespace clipguard::bindings
