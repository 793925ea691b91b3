// CUDA entry points of the decode kernels (clipguard._cuda); same contracts as detect_cpu and
// masks_cpu in clipguard/decode.hpp: host arrays in, host arrays out.
#pragma once

#include <vector>

#include "clipguard/decode.hpp"

namespace clipguard {

std::vector<Detection> detect_cuda(const DetectArgs& args);
void masks_cuda(const MaskArgs& args, uint8_t* out);

}  // namespace clipguard
