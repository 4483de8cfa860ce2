"""Foreign calls through ``_ctypes`` alone: the few C types and the library loader the runtime uses.

``import ctypes`` costs about 5 ms a launch here (``struct``, ``types``, ``ctypes._endian`` and
some forty type definitions); ``_ctypes`` itself about 0.7 ms. The runtime needs a handful of
libc calls (mount, unshare, setns, pivot_root, prctl, capset...) and libseccomp's, so this
module builds just those pieces the way ``ctypes/__init__.py`` does: the same C machinery, the
same semantics (errno saved around each call, ``argtypes``/``restype`` on a function).
"""

from __future__ import annotations

import _ctypes
from _ctypes import Array, Structure, addressof, byref, get_errno  # noqa: F401 - re-exported

_SimpleCData = _ctypes._SimpleCData


class c_int(_SimpleCData):
    _type_ = "i"


class c_uint(_SimpleCData):
    _type_ = "I"


class c_long(_SimpleCData):
    _type_ = "l"


class c_ulong(_SimpleCData):
    _type_ = "L"


class c_uint64(_SimpleCData):
    _type_ = "Q"


class c_ushort(_SimpleCData):
    _type_ = "H"


class c_char(_SimpleCData):
    _type_ = "c"


class c_void_p(_SimpleCData):
    _type_ = "P"


class c_char_p(_SimpleCData):
    _type_ = "z"


c_uint32 = c_uint  # "I" is 4 bytes on every Linux ABI
c_size_t = c_ulong  # LP64 and ILP32 alike


def buffer_of(data: bytes) -> Array:
    """A C array holding a copy of ``data`` (``addressof`` gives its address), as ``c_char * n``."""
    array_type = type(Array)(f"c_char_Array_{len(data)}", (Array,), {"_type_": c_char, "_length_": len(data)})
    return array_type.from_buffer_copy(data)


class CDLL:
    """A loaded library; ``lib.name`` is the C function (int result, errno kept for get_errno)."""

    def __init__(self, name: str | None) -> None:
        self._name = name
        # dlopen(NULL) is the program itself and the libraries already loaded (libc): no file opened.
        self._handle = _ctypes.dlopen(name, _ctypes.RTLD_LOCAL)

        class _FuncPtr(_ctypes.CFuncPtr):
            _flags_ = _ctypes.FUNCFLAG_CDECL | _ctypes.FUNCFLAG_USE_ERRNO
            _restype_ = c_int

        self._FuncPtr = _FuncPtr

    def function(self, name: str, argtypes: list[type], restype: type = c_int) -> _ctypes.CFuncPtr:
        """A function object of its own, with its prototype (``lib.name`` is shared by all callers)."""
        func = self._FuncPtr((name, self))
        func.argtypes = argtypes
        func.restype = restype
        return func

    def __getattr__(self, name: str) -> _ctypes.CFuncPtr:
        if name.startswith("__") and name.endswith("__"):
            raise AttributeError(name)
        func = self._FuncPtr((name, self))
        func.__name__ = name
        setattr(self, name, func)
        return func


_libc: CDLL | None = None


def libc() -> CDLL:
    """The C library, opened once per process."""
    global _libc
    if _libc is None:
        _libc = CDLL(None)
    return _libc
