#include "parse.hpp"

namespace clipguard::bindings {

RenderArgs parse_render_args(const py::array& images_arr, const py::object& masks_obj,
                             const py::array& boxes_arr, const py::array& index_arr,
                             const py::array& fill_arr, int mode, int64_t size,
                             const py::array& mean_arr, const py::array& std_arr,
                             std::vector<py::object>& keep) {
  auto images = checked<uint8_t>(images_arr, "images", {-1, -1, -1, 3});
  auto boxes = checked<int32_t>(boxes_arr, "boxes", {-1, 4});
  const py::ssize_t r = boxes.shape(0);
  auto index = checked<int64_t>(index_arr, "image_index", {r});
  auto fill = checked<float>(fill_arr, "fill", {r, 3});
  auto mean = checked<float>(mean_arr, "mean", {3});
  auto std = checked<float>(std_arr, "std", {3});
  keep = {images, boxes, index, fill, mean, std};

  RenderArgs a;
  a.images = images.data();
  a.n_images = images.shape(0);
  a.height = images.shape(1);
  a.width = images.shape(2);
  if (!masks_obj.is_none()) {
    auto masks = checked<uint8_t>(masks_obj.cast<py::array>(), "masks", {r, a.height, a.width});
    a.masks = masks.data();
    keep.push_back(masks);
  }
  a.boxes = boxes.data();
  a.image_index = index.data();
  a.fill = fill.data();
  a.n_regions = r;
  a.mode = static_cast<RenderMode>(mode);
  a.size = size;
  for (int c = 0; c < 3; ++c) {
    a.mean[c] = mean.data()[c];
    a.std[c] = std.data()[c];
  }
  validate_render_args(a);
  return a;
}

py::array_t<float> render_output(const RenderArgs& a) {
  return py::array_t<float>({static_cast<py::ssize_t>(a.n_regions), py::ssize_t{3},
                             static_cast<py::ssize_t>(a.size), static_cast<py::ssize_t>(a.size)});
}

CompareArgs parse_compare_args(const py::array& region_arr, const py::array& image_arr,
                               const py::array& index_arr, const py::array& text_arr, float scale,
                               int k, std::vector<py::object>& keep) {
  auto text = checked<float>(text_arr, "text_emb", {-1, -1});
  const py::ssize_t d = text.shape(1);
  auto region = checked<float>(region_arr, "region_emb", {-1, d});
  auto image = checked<float>(image_arr, "image_emb", {-1, d});
  auto index = checked<int64_t>(index_arr, "image_index", {region.shape(0)});
  keep = {text, region, image, index};
  CompareArgs a;
  a.region_emb = region.data();
  a.image_emb = image.data();
  a.image_index = index.data();
  a.text_emb = text.data();
  a.n_regions = region.shape(0);
  a.n_images = image.shape(0);
  a.n_labels = text.shape(0);
  a.dim = d;
  a.scale = scale;
  a.k = k;
  validate_compare_args(a);
  return a;
}

py::tuple compare_outputs(const CompareArgs& a, CompareOutputs& out) {
  const py::ssize_t r = a.n_regions, n = a.n_images, k = a.k;
  py::array_t<int32_t> region_labels({r, k}), image_labels({n, k});
  py::array_t<float> region_probs({r, k}), image_probs({n, k}), cos({r});
  out.region_labels = region_labels.mutable_data();
  out.region_probs = region_probs.mutable_data();
  out.image_labels = image_labels.mutable_data();
  out.image_probs = image_probs.mutable_data();
  out.region_image_cos = cos.mutable_data();
  return py::make_tuple(region_labels, region_probs, image_labels, image_probs, cos);
}

TriggerArgs parse_trigger_args(const py::array& occ_arr, const py::array& iso_arr,
                               const py::array& image_arr, const py::array& index_arr,
                               const py::array& cand_arr, const py::array& text_arr, float scale,
                               std::vector<py::object>& keep) {
  auto text = checked<float>(text_arr, "text_emb", {-1, -1});
  const py::ssize_t d = text.shape(1);
  auto occ = checked<float>(occ_arr, "occluded_emb", {-1, d});
  auto iso = checked<float>(iso_arr, "isolated_emb", {occ.shape(0), d});
  auto image = checked<float>(image_arr, "image_emb", {-1, d});
  auto index = checked<int64_t>(index_arr, "image_index", {occ.shape(0)});
  auto cand = checked<int64_t>(cand_arr, "candidate", {image.shape(0)});
  keep = {text, occ, iso, image, index, cand};
  TriggerArgs a;
  a.occluded_emb = occ.data();
  a.isolated_emb = iso.data();
  a.image_emb = image.data();
  a.image_index = index.data();
  a.candidate = cand.data();
  a.text_emb = text.data();
  a.n_regions = occ.shape(0);
  a.n_images = image.shape(0);
  a.n_labels = text.shape(0);
  a.dim = d;
  a.scale = scale;
  validate_trigger_args(a);
  return a;
}

py::tuple trigger_outputs(const TriggerArgs& a, TriggerOutputs& out) {
  const py::ssize_t r = a.n_regions;
  py::array_t<float> p_image({r}), p_occ({r}), p_iso({r}), score({r});
  py::array_t<int32_t> occ_top1({r}), iso_top1({r});
  out.p_image = p_image.mutable_data();
  out.p_occluded = p_occ.mutable_data();
  out.p_isolated = p_iso.mutable_data();
  out.occluded_top1 = occ_top1.mutable_data();
  out.isolated_top1 = iso_top1.mutable_data();
  out.score = score.mutable_data();
  return py::make_tuple(p_image, p_occ, p_iso, occ_top1, iso_top1, score);
}

}  // namespace clipguard::bindings
