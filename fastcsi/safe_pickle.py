"""Reading pickles written by other programs (JMP's Lightning checkpoints, fairchem checkpoints, the
pickled entries of fairchem LMDBs) without running any code they name.

A pickle is a program: every class or function it names is looked up by ``find_class`` and then
called with arguments from the file. :class:`AllowListUnpickler` answers each name from an
allow-list of harmless things (plain containers and numbers, torch's tensor and storage rebuild
functions wrapped so that no hook or attribute state from the file is applied, numpy scalars and
arrays) and turns every other name into an *inert record class*: calling it, building it with
``NEWOBJ``, giving it state, list items or dict items only stores what it was given. So a planted
``os.system`` becomes a :class:`Record` holding the command string, and a pydantic config of a
package this process does not have becomes a record whose ``state`` holds its field values.

``load_torch_foreign(path)`` reads a ``torch.save`` file (zip or legacy format) through it:
torch's own reader handles the container, our unpickler every global in the pickled data.
Imports nothing of fastcsi at import time; torch, numpy and the one-line error helper lazily.
"""
from __future__ import annotations

import _compat_pickle
import io
import pickle


class Record:
    """An object of a global that was not allowed: ``module`` and ``name`` of the global, the
    ``args`` / ``kwargs`` it was called or built with, the ``state`` it was given (BUILD) and any
    ``items`` / ``dictitems`` appended or set into it. It has no behaviour of its own."""

    _record_module = ""
    _record_name = ""

    def __new__(cls, *args, **kwargs):
        self = object.__new__(cls)
        object.__setattr__(self, "args", args)
        object.__setattr__(self, "kwargs", kwargs)
        object.__setattr__(self, "state", None)
        object.__setattr__(self, "items", [])
        object.__setattr__(self, "dictitems", {})
        return self

    def __init__(self, *args, **kwargs):  # REDUCE calls the class: __new__ already kept the arguments
        pass

    def __setstate__(self, state):
        object.__setattr__(self, "state", state)

    def append(self, item):
        self.items.append(item)

    def extend(self, items):
        self.items.extend(items)

    def __setitem__(self, key, value):
        self.dictitems[key] = value

    @property
    def module(self) -> str:
        return type(self)._record_module

    @property
    def name(self) -> str:
        return type(self)._record_name

    @property
    def qualname(self) -> str:
        return f"{self.module}.{self.name}"

    def __repr__(self):
        return f"<record of {self.qualname}>"


def record_fields(obj) -> dict:
    """The attribute values of a record (or a plain dict): pydantic v2 keeps them in
    ``state["__dict__"]``, plain objects and dataclasses in ``state`` itself, objects with slots in
    ``state[1]``; mapping-like objects add their ``dictitems``. Anything else gives ``{}``."""
    if isinstance(obj, dict):
        return obj
    if not isinstance(obj, Record):
        return {}
    state = obj.state
    fields: dict = {}
    if isinstance(state, tuple) and len(state) == 2:
        for part in state:
            if isinstance(part, dict):
                fields.update(part)
    elif isinstance(state, dict):
        fields.update(state)
    if isinstance(fields.get("__dict__"), dict):  # pydantic v2: {"__dict__", "__pydantic_fields_set__", ...}
        inner = fields.pop("__dict__")
        fields = {k: v for k, v in fields.items() if not k.startswith("__pydantic")}
        fields.update(inner)
    fields.update({k: v for k, v in obj.dictitems.items() if isinstance(k, str)})
    return fields


def _record_class(module: str, name: str) -> type:
    return type(str(name), (Record,), {"_record_module": str(module), "_record_name": str(name),
                                       "__module__": __name__, "__qualname__": f"Record[{module}.{name}]"})


# --- torch's rebuild functions, restricted --------------------------------------------------------
# Tensors come back as torch rebuilds them; backward hooks and Python attribute state named by the
# file are never attached (they could hold records, and hooks would be called).

def _rebuild_tensor_v2(storage, storage_offset, size, stride, requires_grad=False, backward_hooks=None,
                       metadata=None):
    from torch._utils import _rebuild_tensor_v2 as rebuild

    return rebuild(storage, storage_offset, size, stride, False, None, metadata if isinstance(metadata, dict) else None)


def _rebuild_tensor(storage, storage_offset, size, stride):
    from torch._utils import _rebuild_tensor as rebuild

    return rebuild(storage, storage_offset, size, stride)


def _rebuild_parameter(data, requires_grad=False, backward_hooks=None, *state):
    import torch

    if not torch.is_tensor(data):
        raise pickle.UnpicklingError(f"parameter data is a {type(data).__name__}, not a tensor")
    return torch.nn.Parameter(data, requires_grad=bool(requires_grad))


def _rebuild_from_type_v2(func, new_type, args, state=None):
    """Tensor subclasses: rebuild the plain tensor with one of the allowed functions; the subclass
    and its state are dropped (a record type could not hold a tensor's behaviour anyway)."""
    if func not in (_rebuild_tensor_v2, _rebuild_tensor, _rebuild_parameter):
        raise pickle.UnpicklingError("tensor rebuilt by a function that is not torch's")
    return func(*args)


def _codecs_encode(obj, encoding="utf-8"):
    # protocol-2 pickles spell every bytes object as _codecs.encode(text, "latin1")
    if not isinstance(obj, str) or not isinstance(encoding, str):
        raise pickle.UnpicklingError("_codecs.encode on something other than text")
    return obj.encode(encoding)


def _reconstructor(cls, base, state=None):
    # protocol 0/1 objects: copyreg._reconstructor(cls, base, state); never call either class
    if isinstance(cls, type) and issubclass(cls, Record):
        return cls.__new__(cls, state) if state is not None else cls.__new__(cls)
    raise pickle.UnpicklingError("copyreg._reconstructor on an allowed class")


class _NotCallable:
    """Stands for a class a pickle may name but must never call: ``torch.Tensor(n)`` allocates n
    elements, so a file could ask for any amount of memory."""

    def __init__(self, name: str):
        self.name = name

    def __call__(self, *args, **kwargs):
        raise pickle.UnpicklingError(f"{self.name} called by the file")


_TENSOR_TYPE = _NotCallable("torch.Tensor")


# Containers and numbers that protocol-2 pickles build by calling their type (newer protocols have
# opcodes for them). Nothing that allocates by a size argument (bytes, bytearray) or looks up names.
_BUILTINS = {"set", "frozenset", "list", "dict", "tuple", "complex"}
_TORCH_REBUILDS = {
    ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor_v2,
    ("torch._utils", "_rebuild_tensor"): _rebuild_tensor,
    ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
    ("torch._utils", "_rebuild_parameter_with_state"): _rebuild_parameter,
    ("torch._tensor", "_rebuild_from_type_v2"): _rebuild_from_type_v2,
}
_OTHER = {
    ("_codecs", "encode"): _codecs_encode,
    ("copyreg", "_reconstructor"): _reconstructor,
}


def allowed_global(module: str, name: str):
    """The harmless object the pickle global ``module.name`` stands for, or None."""
    if module == "builtins" and name in _BUILTINS:
        import builtins

        return getattr(builtins, name)
    if (module, name) == ("collections", "OrderedDict"):
        import collections

        return collections.OrderedDict
    if (module, name) in _TORCH_REBUILDS:
        return _TORCH_REBUILDS[(module, name)]
    if (module, name) in _OTHER:
        return _OTHER[(module, name)]
    if module == "torch":
        import torch

        value = getattr(torch, name, None) if not name.startswith("_") else None
        # dtypes, shapes, devices and the storage classes that persistent_load receives
        if isinstance(value, torch.dtype) or name in ("Size", "device") or (
                isinstance(value, type) and name.endswith("Storage")):
            return value
        if name == "Tensor":  # only ever _rebuild_from_type_v2's new_type, which is not used
            return _TENSOR_TYPE
        return None
    if (module, name) == ("torch.nn.parameter", "Parameter"):
        import torch

        return torch.nn.Parameter
    if module in ("numpy.core.multiarray", "numpy._core.multiarray") and name in ("scalar", "_reconstruct"):
        import numpy as np

        return getattr(np._core.multiarray if hasattr(np, "_core") else np.core.multiarray, name)
    if (module, name) in (("numpy", "dtype"), ("numpy", "ndarray")):
        import numpy as np

        return getattr(np, name)
    if module == "numpy.dtypes" or (module == "numpy" and name.endswith("DType")):
        import numpy as np

        dtypes = getattr(np, "dtypes", None)
        value = getattr(dtypes, name, None) if dtypes is not None else None
        return value if isinstance(value, type) and issubclass(value, np.dtype) else None
    return None


class AllowListUnpickler(pickle.Unpickler):
    """``pickle.Unpickler`` whose ``find_class`` returns only allowed objects; every other global
    becomes an inert :class:`Record` class (one per name and unpickler). Subclasses may refuse
    unknown globals instead (``unknown_global``) or add their own stand-ins (``extra_global``)."""

    def __init__(self, file, *args, **kwargs):
        super().__init__(file, *args, **kwargs)
        self._records: dict = {}

    def find_class(self, module, name):
        if not isinstance(module, str) or not isinstance(name, str):
            raise pickle.UnpicklingError("global with a non-text name")
        # protocol < 3 pickles spell Python 2 names (__builtin__.set, copy_reg._reconstructor)
        if (module, name) in _compat_pickle.NAME_MAPPING:
            module, name = _compat_pickle.NAME_MAPPING[(module, name)]
        elif module in _compat_pickle.IMPORT_MAPPING:
            module = _compat_pickle.IMPORT_MAPPING[module]
        extra = self.extra_global(module, name)
        if extra is not None:
            return extra
        value = allowed_global(module, name)
        if value is not None:
            return value
        return self.unknown_global(module, name)

    def extra_global(self, module: str, name: str):
        return None

    def unknown_global(self, module: str, name: str):
        key = (module, name)
        if key not in self._records:
            self._records[key] = _record_class(module, name)
        return self._records[key]


class _AllowListPickleModule:
    """What ``torch.load(pickle_module=...)`` needs: ``Unpickler`` and ``load`` (legacy format)."""

    __name__ = "fastcsi.safe_pickle"
    Unpickler = AllowListUnpickler
    UnpicklingError = pickle.UnpicklingError

    @staticmethod
    def load(file, **kwargs):
        return AllowListUnpickler(file, **kwargs).load()


def loads(data: bytes):
    """Unpickle bytes through the allow-list (no torch container format)."""
    return AllowListUnpickler(io.BytesIO(data)).load()


def load_torch_foreign(path, what: str = "checkpoint"):
    """Read a ``torch.save`` file written by another program on CPU through the allow-list
    unpickler; every failure is one :class:`FastCSIError` line naming the file."""
    import zipfile

    from fastcsi.utils import torch_load_or_one_line

    # mmap: tensors of the zip format stay in the file until used (optimizer states of a large
    # Lightning checkpoint are never read)
    return torch_load_or_one_line(path, what, pickle_module=_AllowListPickleModule, weights_only=False,
                                  mmap=zipfile.is_zipfile(path))


def records_in(obj, limit: int = 100_000) -> list:
    """Every :class:`Record` reachable from ``obj`` through containers and record contents."""
    found, stack, seen = [], [obj], set()
    while stack and len(seen) < limit:
        item = stack.pop()
        if id(item) in seen:
            continue
        seen.add(id(item))
        if isinstance(item, Record):
            found.append(item)
            stack.extend([item.args, item.kwargs, item.state, item.items, item.dictitems])
        elif isinstance(item, dict):
            stack.extend(item.keys())
            stack.extend(item.values())
            stack.append(getattr(item, "__dict__", None))  # attributes of a dict subclass (a state_dict's _metadata)
        elif isinstance(item, (list, tuple, set, frozenset)):
            stack.extend(item)
    return found


__all__ = ["AllowListUnpickler", "Record", "allowed_global", "load_torch_foreign", "loads", "record_fields",
           "records_in"]
