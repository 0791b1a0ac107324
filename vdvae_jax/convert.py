"""Torch-free reading of PyTorch checkpoints and mapping to ``vdvae_jax`` parameter trees.

Two on-disk formats written by ``torch.save`` are understood, with ``pickle`` and NumPy only:

* **Legacy (pre-zip)**: five consecutive pickles in one file — the magic number
  ``0x1950a86a20f9469cfc6c``, the protocol version 1001, a sys-info dict (``little_endian``,
  ``type_sizes``), the saved object itself, and the list of storage keys (sorted, not in order of
  first use); then, for every key in that list, an int64 element count followed by the storage's
  raw elements, both in the byte order the sys-info records (little-endian in practice).
* **Zip**: a zip archive with a single top-level folder of any name (``archive`` in the MixDVAE
  files) holding ``data.pkl`` (the pickled object), ``data/<key>`` (one raw storage per key),
  ``version`` and, in newer files only, ``byteorder`` (little-endian when absent). Keys are strings:
  ``"0"``, ``"1"``, ... in recent files, but older writers used object addresses
  (``"94044211940144"`` in MixDVAE's ``model_mot.pt``).

In both, tensors are pickled as ``torch._utils._rebuild_tensor_v2(storage, offset, size, stride,
...)`` where ``storage`` is a persistent id ``('storage', <StorageClass>, key, location, numel)``.
Tensors are views: several may share one storage at different offsets (the LSTM weights in the
legacy DVAE_SE files are views into a single cuDNN flat-weight storage), so every tensor is
materialised from (storage key, element offset, size, stride), all counted in elements. The unpickler resolves only an
allow-list of globals; anything else raises :class:`CheckpointFormatError`.
"""
from __future__ import annotations

import collections
import configparser
import pickle
import re
import zipfile
from pathlib import Path
from typing import AbstractSet, Any, Mapping

import numpy as np

__all__ = ["CheckpointFormatError", "read_torch_checkpoint", "load_torch_object",
           "extract_state_dict", "state_dict_to_params", "params_to_state_dict", "export_npz",
           "load_published"]

_LEGACY_MAGIC = 0x1950A86A20F9469CFC6C
_LEGACY_PROTOCOL = 1001
_STORAGE_DTYPES = {
    "FloatStorage": np.float32, "DoubleStorage": np.float64, "HalfStorage": np.float16,
    "LongStorage": np.int64, "IntStorage": np.int32, "ShortStorage": np.int16,
    "CharStorage": np.int8, "ByteStorage": np.uint8, "BoolStorage": np.bool_,
    "ComplexFloatStorage": np.complex64, "ComplexDoubleStorage": np.complex128,
}
_STATE_DICT_KEYS = ("state_dict", "model_state_dict", "net_state", "model_state", "model", "net")
_RNN_KEY = re.compile(r"^(weight|bias)_(ih|hh)_l(\d+)(_reverse)?$")


class CheckpointFormatError(ValueError):
    """A file is missing, truncated, not a torch checkpoint, or needs an unsupported global."""


_TensorRef = collections.namedtuple("_TensorRef", "key offset size stride")


# The only globals a pickle may name. Storage classes resolve to their NumPy dtype, tensors to a
# _TensorRef (materialised once the storages are read), parameters to their tensor.
_ALLOWED = {
    ("collections", "OrderedDict"): collections.OrderedDict,
    **{("torch", k): np.dtype(v) for k, v in _STORAGE_DTYPES.items()},
    **{("torch._utils", k): lambda st, off, size, stride, *_: _TensorRef(st, off, tuple(size),
                                                                          tuple(stride))
       for k in ("_rebuild_tensor", "_rebuild_tensor_v2")},
    **{("torch._utils", k): lambda data, *_: data
       for k in ("_rebuild_parameter", "_rebuild_parameter_with_state")},
}


class _Unpickler(pickle.Unpickler):
    def __init__(self, file, path: Path, storages: dict):
        super().__init__(file)
        self._path, self._storages = path, storages  # key -> (dtype, numel)

    def find_class(self, module, name):
        try:
            return _ALLOWED[(module, name)]
        except KeyError:
            raise CheckpointFormatError(
                f"{self._path}: unsupported global {module}.{name} in pickle "
                "(only state dicts of plain tensors can be read without torch)") from None

    def persistent_load(self, pid):
        # ('storage', dtype, key, location, numel[, view]); views are pre-0.4 torch only
        if not (isinstance(pid, tuple) and len(pid) >= 5 and pid[0] == "storage"
                and isinstance(pid[1], np.dtype) and (len(pid) == 5 or pid[5] is None)):
            raise CheckpointFormatError(f"{self._path}: unsupported persistent id {pid!r}")
        self._storages[str(pid[2])] = (pid[1], int(pid[4]))
        return str(pid[2])


def _materialise(obj: Any, flat: Mapping[str, np.ndarray], path: Path) -> Any:
    if isinstance(obj, _TensorRef):
        data = flat[obj.key]
        if 0 in obj.size:
            return np.zeros(obj.size, data.dtype)
        last = obj.offset + sum((n - 1) * st for n, st in zip(obj.size, obj.stride))
        if obj.offset < 0 or min(obj.stride, default=0) < 0 or last >= data.size:
            raise CheckpointFormatError(f"{path}: tensor view exceeds its storage {obj.key}")
        strides = tuple(st * data.itemsize for st in obj.stride)
        view = np.lib.stride_tricks.as_strided(data[obj.offset:], obj.size, strides)
        return np.array(view, copy=True, order="C")
    if isinstance(obj, dict):
        return type(obj)((k, _materialise(v, flat, path)) for k, v in obj.items())
    if isinstance(obj, (list, tuple)):
        return type(obj)(_materialise(v, flat, path) for v in obj)
    return obj


def _native(buf: bytes, dtype: np.dtype, little: bool, numel: int, what: str, path: Path):
    dt = dtype.newbyteorder("<" if little else ">") if dtype.itemsize > 1 else dtype
    if numel < 0 or len(buf) < numel * dt.itemsize:
        raise CheckpointFormatError(f"{path}: truncated file ({what} is short)")
    return np.frombuffer(buf, dt, numel).astype(dtype, copy=True)


def _load_legacy(path: Path) -> Any:
    storages: dict = {}
    with open(path, "rb") as f:
        load = _Unpickler(f, path, storages).load  # restricted for every record, headers included
        try:
            magic = load()
        except Exception:  # any non-pickle bytes, or a pickle naming other globals
            magic = None
        if type(magic) is not int or magic != _LEGACY_MAGIC:
            raise CheckpointFormatError(
                f"{path}: not a torch checkpoint (neither a zip archive nor the legacy magic)")
        if load() != _LEGACY_PROTOCOL:
            raise CheckpointFormatError(f"{path}: unsupported legacy torch protocol")
        little = bool(load().get("little_endian", True))
        obj = load()
        keys = load()
        flat = {}
        for key in keys:
            dtype, _ = storages[str(key)]
            count = _native(f.read(8), np.dtype(np.int64), little, 1, f"storage {key}", path)[0]
            flat[str(key)] = _native(f.read(max(int(count), 0) * dtype.itemsize), dtype, little,
                                     int(count), f"storage {key}", path)
    return _materialise(obj, flat, path)


def _load_zip(path: Path) -> Any:
    storages: dict = {}
    with zipfile.ZipFile(path) as zf:
        names = zf.namelist()
        pkl = [n for n in names if n.endswith("data.pkl") and n.count("/") == 1]
        if len(pkl) != 1:
            raise CheckpointFormatError(f"{path}: zip file is not a torch checkpoint (no data.pkl)")
        root = pkl[0].split("/")[0]
        little = True
        if f"{root}/byteorder" in names:
            little = zf.read(f"{root}/byteorder").decode().strip() == "little"
        with zf.open(pkl[0]) as f:
            obj = _Unpickler(f, path, storages).load()
        flat = {}
        for key, (dtype, numel) in storages.items():
            buf = zf.read(f"{root}/data/{key}")
            numel = max(numel, len(buf) // dtype.itemsize)  # pid numel may lag the file
            flat[key] = _native(buf, dtype, little, numel, f"storage {key}", path)
    return _materialise(obj, flat, path)


def load_torch_object(path: str | Path) -> Any:
    """Unpickles a ``torch.save`` file (legacy or zip format) with tensors as NumPy arrays.

    Args:
        path: the checkpoint file.

    Returns:
        The saved object with every tensor replaced by a C-contiguous ``np.ndarray`` of the
        storage's dtype (float32/64/16, complex64/128, int64/32/16/8, uint8 or bool) in native
        byte order. ``bfloat16`` and quantised storages are not supported.

    Raises:
        CheckpointFormatError: naming the file, if it is missing, truncated, not a torch
            checkpoint, or references a global outside the allow-list.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointFormatError(f"{path}: no such checkpoint file")
    with open(path, "rb") as f:
        head = f.read(4)
    is_zip = zipfile.is_zipfile(path)
    if head == b"PK\x03\x04" and not is_zip:
        raise CheckpointFormatError(f"{path}: truncated or corrupt zip archive")
    try:
        return _load_zip(path) if is_zip else _load_legacy(path)
    except CheckpointFormatError:
        raise
    except (EOFError, pickle.UnpicklingError, zipfile.BadZipFile, KeyError) as e:
        raise CheckpointFormatError(f"{path}: truncated or corrupt checkpoint ({e!r})") from e
    except Exception as e:  # pickle errors, bad tuples, ...
        raise CheckpointFormatError(f"{path}: cannot read torch checkpoint ({e!r})") from e


def _is_state_dict(obj: Any) -> bool:
    return isinstance(obj, Mapping) and bool(obj) and all(
        isinstance(k, str) and isinstance(v, np.ndarray) for k, v in obj.items())


def extract_state_dict(obj: Any) -> dict[str, np.ndarray]:
    """Returns the flat state dict held by a loaded checkpoint object.

    Accepts a state dict itself, or a dict wrapping one under a usual key (``state_dict``,
    ``model_state_dict``, ``net_state``, ``model_state``, ``model``, ``net``) or as its only
    state-dict-like value (other entries such as epoch counters or optimiser states are ignored).

    Raises:
        CheckpointFormatError: if no state dict can be identified.
    """
    if _is_state_dict(obj):
        return dict(obj)
    if isinstance(obj, Mapping):
        for key in _STATE_DICT_KEYS:
            if _is_state_dict(obj.get(key)):
                return dict(obj[key])
        found = [v for v in obj.values() if _is_state_dict(v)]
        if len(found) == 1:
            return dict(found[0])
    raise CheckpointFormatError(f"no state dict found in checkpoint object of type {type(obj)}")


def read_torch_checkpoint(path: str | Path) -> dict[str, np.ndarray]:
    """Reads the state dict of a PyTorch checkpoint file without torch.

    Returns:
        ``{torch key: array}`` in the file's order, arrays with torch's shapes (Linear weights
        ``(out, in)``); the state dict's ``_metadata`` attribute (module versions) is dropped.

    Raises:
        CheckpointFormatError: as :func:`load_torch_object`, or if no state dict is found.
    """
    obj = load_torch_object(path)
    try:
        return extract_state_dict(obj)
    except CheckpointFormatError as e:
        raise CheckpointFormatError(f"{path}: {e}") from None


def _set(tree: dict, path: list[str], value: Any, key: str) -> None:
    for p in path[:-1]:
        tree = tree.setdefault(p, {})
        if not isinstance(tree, dict):
            raise ValueError(f"state-dict key {key!r} collides with another key")
    if path[-1] in tree:
        raise ValueError(f"state-dict key {key!r} collides with another key")
    tree[path[-1]] = value


def state_dict_to_params(sd: Mapping[str, Any], flipped: AbstractSet[str] = frozenset()) -> dict:
    """Maps a flat torch state dict to the nested ``vdvae_jax`` parameter tree.

    The tree follows the dotted module path (``prior_logvar.1.weight`` ->
    ``params["prior_logvar"]["1"]``). A 2-D ``weight`` becomes ``kernel = W.T`` (in, out), ``bias``
    stays ``bias``, any other leaf is kept verbatim under its own name. A recurrent module ``m``
    (``m.{weight,bias}_{ih,hh}_l0[_reverse]``; LSTM when ``weight_ih`` has 4H rows, vanilla RNN
    when H rows) becomes ``params[m][direction] = {"kernel_ih": W_ih.T (in, GH),
    "kernel_hh": W_hh.T (H, GH), "bias": b_ih + b_hh (GH,)}`` with torch's gate order
    (i, f, g, o) kept fused along the last axis. ``direction`` is ``"forward"`` for ``_l0`` and
    ``"backward"`` for ``_l0_reverse``, swapped for modules named in ``flipped`` (those the
    reference runs on time-reversed input).

    Raises:
        ValueError: for multi-layer or GRU recurrences, inconsistent shapes or key collisions.
    """
    params: dict = {}
    raw: dict = {}  # (module, direction) -> (cell dict already placed in the tree, torch pieces)
    for key, value in sd.items():
        value = np.asarray(value)
        module, _, leaf = key.rpartition(".")
        path = module.split(".") if module else []
        m = _RNN_KEY.match(leaf)
        if m and module:
            kind, which, layer, rev = m.groups()
            if layer != "0":
                raise ValueError(f"{key}: only single-layer recurrences are supported")
            direction = "backward" if bool(rev) != (module in flipped) else "forward"
            if (module, direction) not in raw:
                raw[module, direction] = ({}, {})
                _set(params, path + [direction], raw[module, direction][0], key)
            raw[module, direction][1][f"{kind}_{which}"] = value
        elif leaf == "weight" and value.ndim == 2:
            _set(params, path + ["kernel"], value.T.copy(), key)
        else:
            _set(params, path + [leaf], value, key)
    for (module, direction), (cell, p) in raw.items():
        w_ih, w_hh = p.get("weight_ih"), p.get("weight_hh")
        if w_ih is None or w_hh is None or w_ih.ndim != 2 or w_hh.ndim != 2:
            raise ValueError(f"{module}: recurrent weights incomplete for {direction}")
        gates, rem = divmod(w_hh.shape[0], w_hh.shape[1])
        if rem or gates not in (1, 4) or w_ih.shape[0] != w_hh.shape[0]:
            raise ValueError(f"{module}: not an LSTM/RNN weight layout "
                             f"(ih {w_ih.shape}, hh {w_hh.shape}; GRU is not supported)")
        cell.update(kernel_ih=w_ih.T.copy(), kernel_hh=w_hh.T.copy())
        biases = [p[b] for b in ("bias_ih", "bias_hh") if b in p]
        if biases:
            cell["bias"] = biases[0] + biases[1] if len(biases) == 2 else biases[0].copy()
    return params


def params_to_state_dict(params: Mapping, flipped: AbstractSet[str] = frozenset(),
                         split_bias: str = "ih") -> dict[str, np.ndarray]:
    """Inverse of :func:`state_dict_to_params`: nested parameter tree -> flat torch state dict.

    Exact for every weight. The torch split of an RNN bias into ``bias_ih``/``bias_hh`` is not
    recoverable from the summed bias; ``split_bias="ih"`` puts the sum in ``bias_ih`` and zeros in
    ``bias_hh`` (``"hh"`` the opposite), so ``bias_ih + bias_hh`` equals the stored bias exactly and
    a torch model loaded from the result computes the same function.

    Returns:
        ``{torch key: np.ndarray}``, recurrent modules in torch's order (l0 then l0_reverse).
    """
    if split_bias not in ("ih", "hh"):
        raise ValueError(f"split_bias must be 'ih' or 'hh', got {split_bias!r}")
    sd: dict[str, np.ndarray] = {}

    def emit_cells(cells: Mapping, prefix: str) -> None:
        flip = prefix[:-1] in flipped
        by_suffix = {"_reverse" if (d == "backward") != flip else "": c for d, c in cells.items()}
        for suffix in sorted(by_suffix):  # torch order: l0, then l0_reverse
            c = by_suffix[suffix]
            sd[f"{prefix}weight_ih_l0{suffix}"] = np.asarray(c["kernel_ih"]).T.copy()
            sd[f"{prefix}weight_hh_l0{suffix}"] = np.asarray(c["kernel_hh"]).T.copy()
            if "bias" in c:
                b = np.asarray(c["bias"])
                for part in ("ih", "hh"):
                    sd[f"{prefix}bias_{part}_l0{suffix}"] = (
                        b.copy() if split_bias == part else np.zeros_like(b))

    def walk(node: Mapping, prefix: str) -> None:
        cells = {d: v for d, v in node.items() if d in ("forward", "backward")
                 and isinstance(v, Mapping) and "kernel_ih" in v}
        for name, value in node.items():
            if name in cells:
                if name == next(iter(cells)):  # emit the module where its first cell sits
                    emit_cells(cells, prefix)
            elif isinstance(value, Mapping):
                walk(value, f"{prefix}{name}.")
            elif name == "kernel":
                sd[f"{prefix}weight"] = np.asarray(value).T.copy()
            else:
                sd[f"{prefix}{name}"] = np.asarray(value)

    walk(params, "")
    return sd


def export_npz(state_dict_or_params: Mapping, path: str | Path,
               flipped: AbstractSet[str] = frozenset()) -> None:
    """Saves arrays under their torch keys to ``path`` (``np.savez``).

    A nested parameter tree (any value is a mapping) is first flattened with
    :func:`params_to_state_dict` (``flipped`` as there); a flat state dict is saved as is.
    """
    tree = state_dict_or_params
    if any(isinstance(v, Mapping) for v in tree.values()):
        sd = params_to_state_dict(tree, flipped)
    else:
        sd = {k: np.asarray(v) for k, v in tree.items()}
    np.savez(path, **sd)


def load_published(
        path_or_dir: str | Path) -> tuple[dict[str, np.ndarray], dict[str, dict[str, str]]]:
    """Loads a published model: a ``.pt``/``.pth`` file or a directory holding exactly one.

    The configuration is the ``config.ini`` beside the weights (the layout of the DVAE_SE
    ``trained_models`` folders), parsed without interpolation and with key case preserved;
    ``{}`` if there is none.

    Returns:
        ``(state_dict, config)`` with ``config[section][key]`` a string.
    """
    p = Path(path_or_dir)
    if p.is_dir():
        found = sorted(q for q in p.iterdir() if q.suffix in (".pt", ".pth") and q.is_file())
        if len(found) != 1:
            raise CheckpointFormatError(f"{p}: expected one .pt/.pth file, found {len(found)}")
        p = found[0]
    sd = read_torch_checkpoint(p)
    config: dict[str, dict[str, str]] = {}
    ini = p.parent / "config.ini"
    if ini.is_file():
        parser = configparser.ConfigParser(interpolation=None)
        parser.optionxform = str
        parser.read(ini)
        config = {s: dict(parser[s]) for s in parser.sections()}
    return sd, config
