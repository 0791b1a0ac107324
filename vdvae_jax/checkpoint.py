"""Training checkpoints (orbax-checkpoint) and a framework-neutral ``.npz`` export.

:class:`Checkpointer` is a thin adapter over ``orbax.checkpoint.CheckpointManager``
(the "V0" API, ``ocp.args``) so that orbax's API churn stays in one module. Each
step directory holds three items::

    <directory>/<step>/state      # the pytree (ocp.args.StandardSave)
    <directory>/<step>/metadata   # user JSON metadata (ocp.args.JsonSave)
    <directory>/<step>/spec       # {key path: [shape, dtype]} of every leaf (JSON)

Restores always use an explicit abstract target
(``jax.tree.map(ocp.utils.to_shape_dtype_struct, target)``), and the stored
``spec`` is compared with the target *before* reading any array, so a missing or
extra leaf, a different container type, a different shape or a different dtype
raises :class:`CheckpointMismatchError` instead of silently restoring part of the
tree. Any other failure while reading (deleted, truncated or garbled files) is
reported as :class:`CheckpointError` naming the step directory.

Saves are asynchronous (orbax default): :meth:`Checkpointer.save` returns once
the arrays are copied, writing continues in the background; :meth:`restore`,
:meth:`wait` and :meth:`close` wait for it.

:func:`export_npz` / :func:`load_npz` write/read a nested-dict parameter tree as
one ``.npz`` file with ``'/'``-joined keys plus a JSON config string, loadable
with numpy alone (for released pretrained priors).

Example::

    with Checkpointer("/tmp/run/ckpt", max_to_keep=2) as ckpt:
        ckpt.save(step, {"params": params, "opt_state": opt_state, "step": step},
                  metadata={"epoch": epoch})
        state, meta = ckpt.restore({"params": params, "opt_state": opt_state, "step": 0})
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp

__all__ = [
    "CONFIG_KEY",
    "CheckpointError",
    "CheckpointMismatchError",
    "Checkpointer",
    "export_npz",
    "load_npz",
]

CONFIG_KEY = "__config__"
"""Entry of an exported ``.npz`` holding the JSON config string."""

_STATE, _META, _SPEC = "state", "metadata", "spec"
_SPEC_FORMAT = 1


class CheckpointError(RuntimeError):
    """A checkpoint cannot be read (missing, corrupt, truncated or foreign)."""


class CheckpointMismatchError(CheckpointError):
    """The restore target does not match the stored tree (structure, shape or dtype)."""


def _leaf_spec(leaf: Any) -> list[Any]:
    """``[shape, dtype]`` of an array-like leaf; Python scalars keep their type name."""
    if isinstance(leaf, (bool, int, float, complex)) and not hasattr(leaf, "dtype"):
        return [[], type(leaf).__name__]
    return [list(np.shape(leaf)), str(np.dtype(leaf.dtype))]


def _to_abstract(leaf: Any) -> Any:
    """Abstract restore target of one leaf (numpy scalars become 0-d arrays)."""
    if isinstance(leaf, np.generic):
        return jax.ShapeDtypeStruct((), leaf.dtype)
    return ocp.utils.to_shape_dtype_struct(leaf)


def _tree_spec(tree: Any) -> dict[str, list[Any]]:
    leaves = jax.tree_util.tree_flatten_with_path(tree)[0]
    return {jax.tree_util.keystr(path): _leaf_spec(leaf) for path, leaf in leaves}


def _compare_specs(stored: Mapping[str, Any], wanted: Mapping[str, Any], where: str) -> None:
    missing = sorted(set(wanted) - set(stored))
    extra = sorted(set(stored) - set(wanted))
    problems = []
    if missing:
        problems.append(f"leaves in the target but not in the checkpoint: {missing[:10]}")
    if extra:
        problems.append(f"leaves in the checkpoint but not in the target: {extra[:10]}")
    for key in sorted(set(stored) & set(wanted)):
        s_shape, s_dtype = stored[key]
        w_shape, w_dtype = wanted[key]
        if list(s_shape) != list(w_shape) or s_dtype != w_dtype:
            problems.append(
                f"{key}: checkpoint has shape {tuple(s_shape)} {s_dtype}, "
                f"target has {tuple(w_shape)} {w_dtype}"
            )
    if problems:
        raise CheckpointMismatchError(
            f"restore target does not match checkpoint {where}:\n  " + "\n  ".join(problems[:20])
        )


class Checkpointer:
    """Save / restore training state with orbax ``CheckpointManager`` plus JSON metadata.

    Args:
      directory: Root directory (created if needed); one sub-directory per step.
      max_to_keep: Keep only the most recent ``max_to_keep`` steps (``None``: all).
      save_interval_steps: :meth:`save` is a no-op unless ``step`` is a multiple of
        this, ``force=True``, or no checkpoint exists yet (orbax always saves the
        first one).
    """

    def __init__(
        self,
        directory: str | os.PathLike[str],
        max_to_keep: int | None = 2,
        save_interval_steps: int = 1,
    ) -> None:
        self.directory = os.path.abspath(os.fspath(directory))
        options = ocp.CheckpointManagerOptions(
            max_to_keep=max_to_keep, save_interval_steps=save_interval_steps, create=True
        )
        try:
            self._manager = ocp.CheckpointManager(
                self.directory, options=options, item_names=(_STATE, _META, _SPEC)
            )
        except Exception as exc:  # noqa: BLE001
            raise CheckpointError(
                f"cannot open checkpoint directory {self.directory}: {type(exc).__name__}: {exc}"
            ) from exc

    # -- saving -------------------------------------------------------------
    def save(
        self,
        step: int,
        state: Any,
        *,
        metadata: Mapping[str, Any] | None = None,
        force: bool = False,
    ) -> bool:
        """Save ``state`` (any pytree of arrays / Python scalars) at ``step``, asynchronously.

        Args:
          step: Non-negative integer step (the sub-directory name).
          state: Pytree, e.g. ``{"params": ..., "opt_state": optax_state, "step": 10}``.
            Leaves: jax/numpy arrays, numpy scalars (restored as 0-d arrays) and
            Python ``int``/``float`` (restored as such). Optax states (NamedTuples)
            are fine; restore needs a target of the same structure.
          metadata: JSON-serialisable dict stored beside the state.
          force: Save even if ``step`` is not on the ``save_interval_steps`` grid.

        Returns:
          Whether a checkpoint was started (``False`` if skipped by the interval).

        Raises:
          TypeError: ``metadata`` is not JSON-serialisable.
        """
        metadata = dict(metadata or {})
        try:
            json.dumps(metadata)
        except (TypeError, ValueError) as exc:
            raise TypeError(f"checkpoint metadata must be JSON-serialisable: {exc}") from exc
        # orbax rejects numpy scalars (np.int64(3)); store them as 0-d arrays.
        state = jax.tree.map(lambda x: np.asarray(x) if isinstance(x, np.generic) else x, state)
        spec = {"format": _SPEC_FORMAT, "leaves": _tree_spec(state)}
        args = ocp.args.Composite(
            **{
                _STATE: ocp.args.StandardSave(state),
                _META: ocp.args.JsonSave(metadata),
                _SPEC: ocp.args.JsonSave(spec),
            }
        )
        return bool(self._manager.save(int(step), args=args, force=force))

    def wait(self) -> None:
        """Block until pending asynchronous saves are written."""
        self._manager.wait_until_finished()

    # -- reading ------------------------------------------------------------
    def all_steps(self) -> list[int]:
        """Steps with a complete checkpoint, ascending."""
        self.wait()
        return sorted(self._manager.all_steps())

    def latest_step(self) -> int | None:
        """Most recent saved step, or ``None`` if there is none."""
        self.wait()
        return self._manager.latest_step()

    def restore(self, target: Any, step: int | None = None) -> tuple[Any, dict[str, Any]]:
        """Restore the state saved at ``step`` (default: latest) into ``target``'s structure.

        Args:
          target: Pytree with the expected structure, shapes and dtypes — concrete
            arrays (e.g. freshly initialised state) or ``jax.ShapeDtypeStruct``s.
          step: Step to restore; ``None`` for :meth:`latest_step`.

        Returns:
          ``(state, metadata)``.

        Raises:
          CheckpointMismatchError: ``target`` differs from the stored tree.
          CheckpointError: No checkpoint, or the step directory is corrupt/truncated.
        """
        self.wait()
        if step is None:
            step = self._manager.latest_step()
            if step is None:
                raise CheckpointError(f"no checkpoint found in {self.directory}")
        step = int(step)
        where = os.path.join(self.directory, str(step))
        if step not in self._manager.all_steps():
            raise CheckpointError(
                f"no checkpoint for step {step} in {self.directory} "
                f"(available: {sorted(self._manager.all_steps())})"
            )
        abstract = jax.tree.map(_to_abstract, target)
        try:
            spec = self._manager.restore(
                step, args=ocp.args.Composite(**{_SPEC: ocp.args.JsonRestore()})
            )[_SPEC]
            if not isinstance(spec, Mapping) or spec.get("format") != _SPEC_FORMAT:
                raise ValueError(f"unrecognised tree spec {str(spec)[:200]!r}")
            stored = spec["leaves"]
        except Exception as exc:  # noqa: BLE001
            raise CheckpointError(
                f"corrupt or incomplete checkpoint {where}: cannot read its tree spec "
                f"({type(exc).__name__}: {exc})"
            ) from exc
        _compare_specs(stored, _tree_spec(abstract), where)
        try:
            restored = self._manager.restore(
                step,
                args=ocp.args.Composite(
                    **{
                        _STATE: ocp.args.StandardRestore(abstract),
                        _META: ocp.args.JsonRestore(),
                    }
                ),
            )
            state, metadata = restored[_STATE], restored[_META]
        except Exception as exc:  # noqa: BLE001
            raise CheckpointError(
                f"corrupt or truncated checkpoint {where}: {type(exc).__name__}: {exc}"
            ) from exc
        if jax.tree.structure(state) != jax.tree.structure(abstract):
            raise CheckpointMismatchError(
                f"restored tree structure differs from the target for checkpoint {where}"
            )
        got_leaves = jax.tree_util.tree_flatten_with_path(state)[0]
        for (path, got), want in zip(got_leaves, jax.tree.leaves(abstract), strict=True):
            if np.shape(got) != np.shape(want):
                raise CheckpointMismatchError(
                    f"{jax.tree_util.keystr(path)}: restored shape {np.shape(got)} != "
                    f"target {np.shape(want)} for checkpoint {where}"
                )
        return state, dict(metadata or {})

    # -- lifecycle ----------------------------------------------------------
    def close(self) -> None:
        """Wait for pending saves and release orbax resources."""
        self._manager.wait_until_finished()
        self._manager.close()

    def __enter__(self) -> Checkpointer:
        return self

    def __exit__(self, *exc_info: Any) -> None:
        self.close()


# --------------------------------------------------------------------------- #
# Framework-neutral export                                                    #
# --------------------------------------------------------------------------- #
def _flatten(tree: Mapping[str, Any], prefix: str, out: dict[str, np.ndarray]) -> None:
    for key, value in tree.items():
        if not isinstance(key, str) or not key or "/" in key:
            raise ValueError(f"parameter keys must be non-empty strings without '/': {key!r}")
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            _flatten(value, name + "/", out)
            continue
        if value is None or isinstance(value, (list, tuple, str, bytes)):
            raise TypeError(
                f"{name}: only nested dicts of arrays can be exported, got {type(value)}"
            )
        arr = np.asarray(value)
        if arr.dtype.kind not in "biufc":
            raise TypeError(
                f"{name}: dtype {arr.dtype} cannot be stored portably; cast to a numpy dtype first"
            )
        out[name] = arr


def export_npz(
    params: Mapping[str, Any],
    path: str | os.PathLike[str],
    config: Mapping[str, Any] | None = None,
) -> None:
    """Write a nested-dict parameter tree to one ``.npz`` file (numpy-only format).

    ``{"enc": {"dense": {"kernel": A}}}`` is stored as the entry ``"enc/dense/kernel"``;
    ``config`` (JSON-serialisable) is stored as a 0-d unicode array under
    :data:`CONFIG_KEY`. Empty sub-dicts are not stored. The file is written to
    exactly ``path`` (no ``.npz`` suffix is appended).

    Args:
      params: Nested ``dict`` (``Mapping``) of array leaves (jax or numpy).
      path: Output file.
      config: Optional model configuration.

    Raises:
      TypeError: A non-dict container, ``None`` or a non-numpy dtype (e.g. bfloat16).
      ValueError: A key that is not a non-empty string without ``'/'``, or the
        reserved top-level key :data:`CONFIG_KEY`.
    """
    if not isinstance(params, Mapping):
        raise TypeError(f"params must be a nested dict, got {type(params)}")
    if CONFIG_KEY in params:
        raise ValueError(f"{CONFIG_KEY!r} is reserved")
    flat: dict[str, np.ndarray] = {}
    _flatten(params, "", flat)
    if config is not None:
        flat[CONFIG_KEY] = np.asarray(json.dumps(dict(config), sort_keys=True))
    with open(path, "wb") as f:
        np.savez(f, **flat)


def load_npz(path: str | os.PathLike[str]) -> tuple[dict[str, Any], dict[str, Any] | None]:
    """Read a file written by :func:`export_npz` (no pickle).

    Args:
      path: The ``.npz`` file.

    Returns:
      ``(params, config)``: the nested dict of numpy arrays and the config dict
      (``None`` if none was stored).
    """
    params: dict[str, Any] = {}
    config = None
    with np.load(path, allow_pickle=False) as data:
        for name in data.files:
            if name == CONFIG_KEY:
                config = json.loads(str(data[name]))
                continue
            *parents, leaf = name.split("/")
            node = params
            for p in parents:
                node = node.setdefault(p, {})
            node[leaf] = data[name]
    return params, config
