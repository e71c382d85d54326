// fastcsi._C: the CPU kernels. Each kernel file defines one register_* function; this file only
// gathers them, so the compiled boundary stays a single, narrow module.
#include "kernel_safety.h"

#include <pybind11/pybind11.h>

namespace py = pybind11;

namespace fastcsi {
// Declared here, defined in their own files (one op family per file).
void register_radius(py::module_& m);
void register_covariance(py::module_& m);
void register_activation(py::module_& m);
}  // namespace fastcsi

PYBIND11_MODULE(_C, m) {
    m.doc() = "fastcsi CPU kernels (C++17, std::thread)";
    m.attr("abi_version") = 1;
    // Input a kernel refuses before allocating for it (limits, memory budget): a ValueError subclass
    // that the Python wrappers turn into FastCSIError.
    py::register_exception<fastcsi::InputError>(m, "InputError", PyExc_ValueError);
    fastcsi::register_radius(m);
    fastcsi::register_covariance(m);
    fastcsi::register_activation(m);
}
