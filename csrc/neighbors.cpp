// Placeholder until the cell-list neighbour kernel lands (issue 4): registers nothing.
#include <pybind11/pybind11.h>
namespace py = pybind11;
namespace fastcsi {
void register_neighbors(py::module_& m) { (void)m; }
}  // namespace fastcsi
