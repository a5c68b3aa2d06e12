"""Encoders that run a source's own model: TorchScript / ``torch.export`` files and safetensors
weights for a registered architecture, with layer taps. Model files are code that runs in the
daemon, so pickles are refused outright: nothing here calls ``torch.load`` without
``weights_only=True``; a ``torch.export`` archive is checked for pickled or compiled payloads and
loaded with ``TORCH_FORCE_WEIGHTS_ONLY_LOAD=1``.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import logging
import math
import os
import re
import warnings
import zipfile
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import pyarrow as pa
import torch
from torch import nn

from tasksim._encoding import (
    _BaseEncoder,
    _collect,
    _describe,
    _fail,
    _file_digest,
    _first_tensor,
    _progress,
    _settings_fingerprint,
    _Taps,
)
from tasksim.config import EncoderConfig, InputColumns
from tasksim.errors import DataError, SourceError

__all__ = [
    "MLP",
    "ArchitectureFactory",
    "check_head_file",
    "register_architecture",
    "registered_architectures",
]

logger = logging.getLogger(__name__)

_FLOAT_DTYPES = frozenset({"F16", "BF16", "F32", "F64"})  # safetensors header dtype names

_PICKLE_MESSAGE = "is a pickle file; tasksim loads only TorchScript, torch.export (.pt2) or safetensors"

ArchitectureFactory = Callable[[dict[str, torch.Tensor], EncoderConfig], nn.Module]
"""Builds an ``nn.Module`` whose ``state_dict`` matches the given safetensors tensors."""


def _archive_names(path: Path) -> list[str] | None:
    try:
        with zipfile.ZipFile(path) as z:
            return z.namelist()
    except (zipfile.BadZipFile, OSError):
        return None


def _relative(name: str) -> str:
    """Zip entries of torch archives sit under one top folder; strip it."""
    return name.split("/", 1)[1] if "/" in name else name


def _sniff(path: Path) -> str:
    """torchscript | export | safetensors | pickle | zip | corrupt | unknown, from the bytes."""
    with open(path, "rb") as f:
        head = f.read(16)
        f.seek(0, os.SEEK_END)
        size = f.tell()
        if size:
            f.seek(-1, os.SEEK_END)
        tail = f.read(1)
    if head[:4] == b"PK\x03\x04":
        names = _archive_names(path)
        if names is None:
            return "corrupt"
        rel = {_relative(n) for n in names}
        if "archive_format" in rel or any(r.startswith("models/") and r.endswith(".json") for r in rel):
            return "export"
        if "constants.pkl" in rel and any(r.startswith("code/") for r in rel):
            return "torchscript"
        if "data.pkl" in rel or any(r.endswith(".pkl") for r in rel):
            return "pickle"
        return "zip"
    if len(head) >= 2 and head[0] == 0x80 and 2 <= head[1] <= 5:
        return "pickle"  # pickle protocol 2-5, including legacy (non-zip) torch.save files
    if head[:1] in (b"(", b"]", b"}", b"c") and tail == b".":
        return "pickle"  # protocol 0/1 pickles start with a MARK/LIST/DICT/GLOBAL and end with STOP
    if len(head) >= 9 and head[8:9] == b"{":
        header = int.from_bytes(head[:8], "little")
        if 0 < header <= size - 8:
            return "safetensors"
    return "unknown"


def check_head_file(path: Path) -> tuple[int, int]:
    """(classes, features) of a source's linear head file: safetensors holding ``weight`` (classes x
    features) and optionally ``bias`` (classes). Anything else raises ``DataError`` with one line
    that names the file, what it is and what is expected (no tensor data is read)."""
    from safetensors import SafetensorError, safe_open

    expected = "expected safetensors holding 'weight' (classes x features) and optionally 'bias' (classes)"
    try:
        kind = _sniff(path)
    except OSError as exc:
        raise DataError(f"{path}: cannot read the head ({exc.strerror or exc}); {expected}") from exc
    if kind != "safetensors":
        what = {"torchscript": "a TorchScript archive", "export": "a torch.export archive", "pickle": "a pickle",
                "zip": "a zip archive", "corrupt": "a corrupt archive"}.get(kind, "not a safetensors file")
        raise DataError(f"{path}: the head is {what}; {expected}")
    try:
        with safe_open(str(path), framework="pt") as f:
            shapes = {k: tuple(f.get_slice(k).get_shape()) for k in f.keys()}  # noqa: SIM118 - not a dict
            dtypes = {k: str(f.get_slice(k).get_dtype()) for k in ("weight", "bias") if k in shapes}
    except (OSError, SafetensorError) as exc:
        raise DataError(f"{path}: cannot read the head's safetensors header ({exc}); {expected}") from exc
    weight, bias = shapes.get("weight"), shapes.get("bias")
    if weight is None or len(weight) != 2 or min(weight) < 1:
        raise DataError(f"{path}: the head's 'weight' has shape {weight}; {expected}")
    if bias is not None and bias != (weight[0],):
        raise DataError(f"{path}: the head's 'bias' has shape {bias} but 'weight' has {weight[0]} classes; {expected}")
    odd = {k: t for k, t in dtypes.items() if t not in _FLOAT_DTYPES}
    if odd:
        raise DataError(f"{path}: the head's {', '.join(f'{k!r} has dtype {t}' for k, t in odd.items())}; "
                        f"{expected}, as floating-point tensors")
    return int(weight[0]), int(weight[1])


def _check_model_file(path: Path, kind: str, source: str | None) -> str:
    """Return the detected format, or raise one clear line (pickles are always refused)."""
    if not path.exists():
        _fail(source, f"{kind} encoder: model file {path} does not exist")
    if path.is_dir():
        _fail(source, f"{kind} encoder: model path {path} is a directory; expected a file")
    try:
        fmt = _sniff(path)
    except OSError as exc:
        _fail(source, f"{kind} encoder: cannot read model file {path} ({exc.strerror or exc})")
    if fmt == "pickle":
        _fail(source, f"{path} {_PICKLE_MESSAGE}")
    if fmt == "corrupt":
        _fail(source, f"{kind} encoder: model file {path} is a truncated or corrupt zip archive")
    return fmt


def _check_export_archive(path: Path, source: str | None) -> None:
    """Refuse .pt2 archives whose loading would unpickle objects or run compiled code."""
    with zipfile.ZipFile(path) as z:
        for entry in z.namelist():
            rel = _relative(entry)
            base = rel.rsplit("/", 1)[-1]
            if rel.startswith("data/constants/") and base.startswith(("custom_obj_", "opaque_obj_")):
                _fail(source, f"{path}: contains pickled custom objects ({rel}); "
                              "tasksim loads only TorchScript, torch.export (.pt2) or safetensors tensors")
            if rel.startswith(("data/aotinductor/", "data/executorch/", "data/mtia")):
                _fail(source, f"{path}: contains compiled code ({rel}); tasksim loads only plain "
                              "torch.export programs")
            if rel.startswith(("data/weights/", "data/constants/")) and rel.endswith(".pt"):
                _fail(source, f"{path}: uses legacy pickled weights ({rel}); re-save it with torch.export.save")
            if rel.endswith(("_weights_config.json", "_constants_config.json")):
                try:
                    config = json.loads(z.read(entry))
                except ValueError:
                    _fail(source, f"{path}: {rel} is not valid JSON (corrupt archive)")
                entries = config.get("config", {}) if isinstance(config, dict) else {}
                if any(isinstance(v, dict) and v.get("use_pickle") for v in entries.values()):
                    _fail(source, f"{path}: stores pickled tensors ({rel}); tasksim refuses pickle payloads, "
                                  "re-save the program with torch.export.save")


@contextlib.contextmanager
def _weights_only_loads() -> Iterator[None]:
    """Force every torch.load inside (torch.export.load uses several) to weights_only=True."""
    previous = os.environ.get("TORCH_FORCE_WEIGHTS_ONLY_LOAD")
    os.environ["TORCH_FORCE_WEIGHTS_ONLY_LOAD"] = "1"
    try:
        yield
    finally:
        if previous is None:
            os.environ.pop("TORCH_FORCE_WEIGHTS_ONLY_LOAD", None)
        else:
            os.environ["TORCH_FORCE_WEIGHTS_ONLY_LOAD"] = previous


def _likely_shape(width: int) -> str:
    """A plausible image shape for ``width`` values per row ([3, s, s] or [1, s, s]), as hint text."""
    for channels in (3, 1):
        side = math.isqrt(width // channels)
        if width % channels == 0 and side > 1 and channels * side * side == width:
            return f"e.g. {[channels, side, side]}"
    return "[channels, height, width] for images"


class _ModuleEncoder(_BaseEncoder):
    """Batched forward of a torch module over a tensor built from the feature columns."""

    def __init__(self, cfg: EncoderConfig, device: torch.device, source: str | None) -> None:
        super().__init__(cfg, device, source)
        assert cfg.path is not None  # guaranteed by EncoderConfig
        self.path = Path(cfg.path)
        self.name = f"{cfg.kind}:{self.path.name}"
        self.module: Callable[[torch.Tensor], Any] = lambda x: x
        self.hook_root: nn.Module | None = None
        self.fixed_batch: int | None = None
        self.input_shape: tuple[int, ...] | None = cfg.input_shape
        self.dtype = torch.float32

    def _inputs(self, table: pa.Table, columns: InputColumns) -> torch.Tensor:
        x = self._features(table, columns)
        if self.input_shape:
            width = math.prod(self.input_shape)
            if x.shape[1] != width:
                key = f"{self.field}.input_shape" if self.cfg.input_shape else "the exported program's input shape"
                self._fail(f"input columns give {x.shape[1]} values per row; {key} "
                           f"{list(self.input_shape)} needs {width}")
            x = x.reshape(x.shape[0], *self.input_shape)
        return x

    def _forward(self, xb: torch.Tensor, rows: int) -> torch.Tensor:
        try:
            out = self.module(xb.to(self.device, self.dtype))
        except Exception as exc:  # noqa: BLE001 - the model's own error, as one line
            self._fail(f"forward failed on input of shape {tuple(xb.shape)} ({_describe(exc)}); "
                       f"{self._shape_hint(xb)}")
        t = _first_tensor(out)
        if t is None:
            self._fail(f"model returned {type(out).__name__}, expected a tensor")
        if t.ndim < 2 or t.shape[0] != xb.shape[0]:
            self._fail(f"model returned shape {tuple(t.shape)} for a batch of {xb.shape[0]} rows; "
                       f"expected ({xb.shape[0]}, D)")
        t = t[:rows].reshape(rows, -1).float().cpu()
        if self.dim is not None and t.shape[1] != self.dim:
            self._fail(f"model returned {t.shape[1]} features per row, earlier batches had {self.dim}")
        self.dim = int(t.shape[1])
        if not torch.isfinite(t).all():
            bad = int((~torch.isfinite(t)).any(dim=1).sum())
            self._fail(f"model returned NaN/Inf for {bad} rows")
        return t

    def _shape_hint(self, xb: torch.Tensor) -> str:
        """Which configuration key sets the shape the model gets, and a likely value."""
        key = f"{self.field}.input_shape"
        if self.input_shape:
            if self.cfg.input_shape is None:  # read from the exported program itself
                return f"the exported program takes rows of shape {list(self.input_shape)}"
            return (f"{key} {list(self.input_shape)} reshaped each row: set it to the shape one row "
                    "has for this model")
        return (f"if the model takes rows of another shape (e.g. images), set {key} to one row's "
                f"shape, {_likely_shape(math.prod(xb.shape[1:]))}")

    def _batches(self, x: torch.Tensor) -> Iterator[tuple[torch.Tensor, int]]:
        """Batches of cfg.batch_size, or exactly the exported batch size (last one zero-padded)."""
        size = self.fixed_batch or self.cfg.batch_size
        for i in range(0, x.shape[0], size):
            xb = x[i: i + size]
            rows = xb.shape[0]
            if self.fixed_batch and rows < size:
                pad = torch.zeros((size - rows, *xb.shape[1:]), dtype=xb.dtype)
                xb = torch.cat([xb, pad])
            yield xb, rows

    def _run(self, x: torch.Tensor, taps: _Taps | None) -> torch.Tensor:
        outputs: list[torch.Tensor] = []
        size = self.fixed_batch or self.cfg.batch_size
        bar = _progress(math.ceil(x.shape[0] / size), self.name)
        try:
            with torch.inference_mode():
                for xb, rows in self._batches(x):
                    before = {n: len(p) for n, p in taps.store.items()} if taps else {}
                    outputs.append(self._forward(xb, rows))
                    if taps is not None and self.fixed_batch and rows < xb.shape[0]:
                        for name, parts in taps.store.items():
                            if len(parts) > before[name]:
                                parts[-1] = parts[-1][:rows]
                    if bar is not None:
                        bar.update(1)
        finally:
            if bar is not None:
                bar.close()
        if not outputs:
            return torch.zeros((0, self.dim or 0), dtype=torch.float32)
        return torch.cat(outputs)

    def encode(self, table: pa.Table, columns: InputColumns) -> torch.Tensor:
        return self._run(self._inputs(table, columns), None)

    def encode_layers(self, table: pa.Table, columns: InputColumns) -> dict[str, torch.Tensor]:
        """Outputs of the configured ``layers`` (forward hooks, one flattened row per sample) + output."""
        if not self.cfg.layers:
            return {"output": self.encode(table, columns)}
        root = self._hook_module()
        x = self._inputs(table, columns)
        taps = _Taps(root, self.cfg.layers, self._fail)
        try:
            out = self._run(x, taps)
        finally:
            taps.close()
        return _collect(taps, [out], x.shape[0], self.dim or 0, self._fail)

    def _hook_module(self) -> nn.Module:
        if self.hook_root is None:
            self._fail("this model does not support forward hooks (TorchScript); save it with "
                       "torch.export (.pt2) or safetensors to tap layers")
        assert self.hook_root is not None
        return self.hook_root


class _TorchScriptEncoder(_ModuleEncoder):
    """A TorchScript archive (torch.jit.save) or a torch.export program (.pt2)."""

    kind = "torchscript"

    def __init__(self, cfg: EncoderConfig, device: torch.device, source: str | None) -> None:
        super().__init__(cfg, device, source)
        fmt = _check_model_file(self.path, "torchscript", source)
        if fmt == "safetensors":
            _fail(source, f"{self.path}: is a safetensors file; use encoder kind 'safetensors' with an architecture")
        if fmt not in ("torchscript", "export"):
            _fail(source, f"{self.path}: is not a TorchScript or torch.export (.pt2) archive")
        try:
            if fmt == "torchscript":
                module = torch.jit.load(str(self.path), map_location="cpu")
                module = module.to(device).eval()
                self.module = module
            else:
                _check_export_archive(self.path, source)
                with _weights_only_loads(), warnings.catch_warnings():
                    warnings.simplefilter("ignore")  # torch.export internals emit FutureWarnings
                    program = torch.export.load(str(self.path))
                    self._configure_export(program)
                    if cfg.layers:
                        root = torch.export.unflatten(program).to(device)
                        self.module, self.hook_root = root, root
                    else:
                        self.module = program.module().to(device)
        except (SourceError, DataError):
            raise
        except Exception as exc:  # noqa: BLE001 - any load failure becomes one clear line
            _fail(source, f"{self.path}: cannot load {fmt} model ({_describe(exc)})")
        self._fingerprint = _settings_fingerprint("torchscript", cfg, _file_digest(self.path))

    def _configure_export(self, program: Any) -> None:
        """Read the exported input shape: a static batch size is honoured by padding."""
        user_inputs = list(program.graph_signature.user_inputs)
        if len(user_inputs) != 1:
            self._fail(f"exported program takes {len(user_inputs)} inputs; expected exactly one tensor")
        for node in program.graph.nodes:
            if node.op == "placeholder" and node.name == user_inputs[0]:
                val = node.meta.get("val")
                shape = tuple(getattr(val, "shape", ()))
                if shape and isinstance(shape[0], int):
                    self.fixed_batch = int(shape[0])
                if self.input_shape is None and len(shape) > 1 and all(isinstance(s, int) for s in shape[1:]):
                    self.input_shape = tuple(int(s) for s in shape[1:])
                dtype = getattr(val, "dtype", None)
                if isinstance(dtype, torch.dtype) and dtype.is_floating_point:
                    self.dtype = dtype


_ARCHITECTURES: dict[str, ArchitectureFactory] = {}


def register_architecture(name: str, factory: ArchitectureFactory, *, replace: bool = False) -> None:
    """Make ``architecture: <name>`` usable for safetensors encoders.

    ``factory(tensors, cfg)`` builds the module from the weight shapes; tasksim then loads the
    tensors into it with ``load_state_dict(strict=True)``.
    """
    if not re.fullmatch(r"[A-Za-z0-9_.\-]+", name):
        raise ValueError(f"architecture name {name!r}: use letters, digits, '_', '-' or '.'")
    if name in _ARCHITECTURES and not replace:
        raise ValueError(f"architecture {name!r} is already registered (pass replace=True to override)")
    _ARCHITECTURES[name] = factory


def registered_architectures() -> tuple[str, ...]:
    """Names usable as ``encoder.architecture``."""
    return tuple(sorted(_ARCHITECTURES))


class MLP(nn.Module):
    """``layers.{i}`` Linear layers with ReLU in between (not after the last): the built-in "mlp"."""

    def __init__(self, sizes: Sequence[int]) -> None:
        super().__init__()
        self.layers = nn.ModuleList(nn.Linear(a, b) for a, b in itertools.pairwise(sizes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.reshape(x.shape[0], -1)
        for i, layer in enumerate(self.layers):
            x = layer(x)
            if i < len(self.layers) - 1:
                x = torch.relu(x)
        return x


def _build_mlp(tensors: dict[str, torch.Tensor], cfg: EncoderConfig) -> nn.Module:
    """Layer sizes from ``layers.{i}.weight`` shapes, checked to chain."""
    pattern = re.compile(r"layers\.(\d+)\.(weight|bias)")
    unexpected = [k for k in tensors if not pattern.fullmatch(k)]
    if unexpected:
        raise ValueError(f"unexpected tensors {unexpected[:5]} for architecture 'mlp' "
                         "(expected layers.<i>.weight / layers.<i>.bias)")
    count = len({int(pattern.fullmatch(k).group(1)) for k in tensors})  # type: ignore[union-attr]
    if count == 0:
        raise ValueError("no layers.<i>.weight tensors found for architecture 'mlp'")
    sizes: list[int] = []
    for i in range(count):
        w = tensors.get(f"layers.{i}.weight")
        if w is None or w.ndim != 2:
            raise ValueError(f"layers.{i}.weight is missing or not 2-D")
        if sizes and w.shape[1] != sizes[-1]:
            raise ValueError(f"layers.{i}.weight has {w.shape[1]} inputs but layer {i - 1} has {sizes[-1]} outputs")
        if not sizes:
            sizes.append(int(w.shape[1]))
        sizes.append(int(w.shape[0]))
    return MLP(sizes)


class _SafetensorsEncoder(_ModuleEncoder):
    """safetensors weights loaded into a registered architecture (eager, so layers can be tapped)."""

    kind = "safetensors"

    def __init__(self, cfg: EncoderConfig, device: torch.device, source: str | None) -> None:
        super().__init__(cfg, device, source)
        fmt = _check_model_file(self.path, "safetensors", source)
        if fmt in ("torchscript", "export"):
            _fail(source, f"{self.path}: is a {fmt} archive; use encoder kind 'torchscript'")
        if fmt != "safetensors":
            _fail(source, f"{self.path}: is not a safetensors file")
        arch = cfg.architecture or ""
        factory = _ARCHITECTURES.get(arch)
        if factory is None:
            _fail(source, f"safetensors encoder: architecture {arch!r} is not registered "
                          f"(registered: {', '.join(registered_architectures())})")
        try:
            from safetensors.torch import load_file

            tensors = load_file(str(self.path), device="cpu")
        except Exception as exc:  # noqa: BLE001
            _fail(source, f"{self.path}: cannot read safetensors ({_describe(exc)})")
        try:
            module = factory(tensors, cfg)
            module.load_state_dict(tensors, strict=True)
        except Exception as exc:  # noqa: BLE001
            _fail(source, f"{self.path}: weights do not fit architecture {arch!r} "
                          f"({_describe(exc)})")
        module = module.to(device).eval()
        self.module, self.hook_root = module, module
        self._fingerprint = _settings_fingerprint("safetensors", cfg, _file_digest(self.path))


register_architecture("mlp", _build_mlp)
