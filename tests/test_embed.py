"""Tests for tasksim.embed: every encoder kind, layer taps, fingerprints, refusing pickles."""

from __future__ import annotations

import io
import json
import pickle
import zipfile
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest
import torch
from safetensors.torch import save_file
from torch import nn

from tasksim.config import EncoderConfig, InputColumns
from tasksim.embed import (
    MAX_CATEGORIES,
    MLP,
    Encoder,
    build_encoder,
    register_architecture,
    registered_architectures,
    table_to_tensor,
)
from tasksim.errors import DataError, SourceError

CPU = torch.device("cpu")


def _cols(*features: str, text: str | None = None) -> InputColumns:
    return InputColumns(feature_columns=features, text_column=text)


def _vec_table(n: int = 10, d: int = 4, seed: int = 0) -> tuple[pa.Table, np.ndarray]:
    x = np.random.default_rng(seed).normal(size=(n, d)).astype(np.float32)
    vec = pa.FixedSizeListArray.from_arrays(pa.array(x.reshape(-1)), d)
    return pa.table({"vec": vec, "s": np.arange(n, dtype=np.int64)}), x


def _one_line(exc: pytest.ExceptionInfo) -> str:
    assert "\n" not in str(exc.value), str(exc.value)
    return str(exc.value)


# ---------------------------------------------------------------- identity / tabular


def test_identity_numeric_and_list_columns() -> None:
    table, x = _vec_table()
    enc = build_encoder(EncoderConfig(kind="identity"), device=CPU)
    assert isinstance(enc, Encoder)
    out = enc.encode(table, _cols("vec", "s"))
    assert out.dtype == torch.float32 and out.shape == (10, 5) and enc.dim == 5
    assert torch.allclose(out[:, :4], torch.from_numpy(x)) and out[3, 4] == 3
    layers = enc.encode_layers(table, _cols("vec"))
    assert list(layers) == ["output"] and layers["output"].shape == (10, 4)
    ragged = pa.table({"v": pa.array([[1.0, 2.0], [1.0]])})
    with pytest.raises(DataError, match="column 'v' has lists of lengths"):
        table_to_tensor(ragged, ["v"])


def test_identity_rejects_strings_and_nan() -> None:
    enc = build_encoder(EncoderConfig(kind="identity"), device=CPU, source="src")
    with pytest.raises(SourceError) as exc:
        enc.encode(pa.table({"c": ["a", "b"]}), _cols("c"))
    assert "source 'src': identity encoder: column 'c' has type string" in _one_line(exc)
    with pytest.raises(SourceError, match="NaN/Inf in 1 rows"):
        enc.encode(pa.table({"c": [1.0, float("inf")]}), _cols("c"))


def test_tabular_standardises_and_caps_categories() -> None:
    rng = np.random.default_rng(0)
    n = 500
    ref = pa.table({"num": rng.normal(5, 3, n), "cat": [f"k{i % 40}" for i in range(n)],
                    "flag": rng.integers(0, 2, n).astype(bool)})
    enc = build_encoder(EncoderConfig(kind="tabular"), device=CPU)
    cols = _cols("num", "cat", "flag")
    with pytest.raises(DataError, match="call fit"):
        enc.encode(ref, cols)
    unfitted = enc.fingerprint
    enc.fit(ref, cols)
    out = enc.encode(ref, cols)
    assert out.shape == (n, 1 + MAX_CATEGORIES + 1 + 3) and enc.dim == out.shape[1]
    assert abs(float(out[:, 0].mean())) < 1e-5 and abs(float(out[:, 0].std()) - 1) < 1e-2
    assert torch.all(out[:, 1:].sum(dim=1) == 2)  # one hot per categorical column
    shifted = ref.set_column(0, "num", pa.array(rng.normal(8, 3, n)))
    assert float(enc.encode(shifted, cols)[:, 0].mean()) > 0.5  # fitted on the reference: shift stays visible
    unseen = enc.encode(pa.table({"num": [5.0], "cat": ["never-seen"], "flag": [True]}), cols)
    assert unseen[0, 1 + MAX_CATEGORIES] == 1  # the 'other' slot
    fp = enc.fingerprint
    assert fp != unfitted
    enc.fit(shifted, cols)
    assert enc.fingerprint != fp  # fitted statistics are part of the cache key


# ---------------------------------------------------------------- text (real MiniLM, offline)


@pytest.fixture(scope="module")
def text_encoder() -> Encoder:
    return build_encoder(EncoderConfig(kind="text", batch_size=8, layers=("0.model.encoder.layer.2",)), device=CPU)


SENTENCES = [
    "The cat sat on the mat.", "A kitten is sleeping on the rug.", "Stock markets fell sharply today.",
    "Shares dropped as investors panicked.", "The recipe needs two eggs and flour.",
    "Bake the cake for thirty minutes.", "The football match ended in a draw.",
    "Both teams scored twice in the game.", "Rain is expected tomorrow afternoon.",
    "The forecast says it will be sunny.", "He repaired the bicycle tire.", "She fixed the flat tyre on her bike.",
    "Quantum computers use qubits.", "The orchestra played Beethoven.", "I lost my keys again.",
    "The museum opens at nine.", "Volcanoes erupt molten rock.", "Mount Etna is an active volcano.",
    "The train was late this morning.", "Our flight was delayed by two hours.",
]


def test_text_encoder_with_packaged_minilm(text_encoder: Encoder) -> None:
    table = pa.table({"text": SENTENCES})
    out = text_encoder.encode(table, _cols(text="text"))
    assert out.shape == (20, 384) and out.dtype == torch.float32 and text_encoder.dim == 384
    assert torch.allclose(out.norm(dim=1), torch.ones(20), atol=1e-4)
    sim = out @ out.T
    assert sim[0, 1] > sim[0, 2] and sim[2, 3] > sim[2, 4]  # paraphrases are closer
    layers = text_encoder.encode_layers(table, _cols(text="text"))
    assert set(layers) == {"0.model.encoder.layer.2", "output"}
    assert layers["0.model.encoder.layer.2"].shape == (20, 384)
    assert torch.allclose(layers["output"], out, atol=1e-4)
    assert text_encoder.fingerprint == build_encoder(EncoderConfig(kind="text"), device=CPU).fingerprint
    with pytest.raises(DataError, match="needs a text_column"):
        text_encoder.encode(table, _cols("x"))


def test_text_encoder_missing_model_path(tmp_path: Path) -> None:
    with pytest.raises(SourceError) as exc:
        build_encoder(EncoderConfig(kind="text", model=str(tmp_path / "no-model")), device=CPU, source="t")
    assert "model path" in _one_line(exc) and "does not exist" in str(exc.value)


# ---------------------------------------------------------------- TorchScript / torch.export


class _Net(nn.Module):
    def __init__(self, d_in: int = 4, d_out: int = 3) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.body = nn.Sequential(nn.Linear(d_in, 8), nn.ReLU())
        self.head = nn.Linear(8, d_out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.body(x.reshape(x.shape[0], -1)))


def test_torchscript_encoder(tmp_path: Path) -> None:
    net = _Net().eval()
    path = tmp_path / "net.pt"
    torch.jit.save(torch.jit.script(net), path)
    table, x = _vec_table(n=300)
    enc = build_encoder(EncoderConfig(kind="torchscript", path=path, batch_size=64), device=CPU)
    out = enc.encode(table, _cols("vec"))
    with torch.no_grad():
        assert torch.allclose(out, net(torch.from_numpy(x)), atol=1e-5)
    assert enc.dim == 3 and enc.name == "torchscript:net.pt"
    reshaped = build_encoder(EncoderConfig(kind="torchscript", path=path, input_shape=(2, 2)), device=CPU)
    assert torch.allclose(reshaped.encode(table, _cols("vec")), out, atol=1e-5)
    bad_shape = build_encoder(EncoderConfig(kind="torchscript", path=path, input_shape=(3, 3)), device=CPU)
    with pytest.raises(DataError, match=r"input columns give 4 values per row; encoder.input_shape \[3, 3\] needs 9"):
        bad_shape.encode(table, _cols("vec"))
    tapped = build_encoder(EncoderConfig(kind="torchscript", path=path, layers=("body",)), device=CPU)
    with pytest.raises(DataError, match="does not support forward hooks"):
        tapped.encode_layers(table, _cols("vec"))


def test_torch_export_static_batch_and_layers(tmp_path: Path) -> None:
    net = _Net().eval()
    path = tmp_path / "net.pt2"
    torch.export.save(torch.export.export(net, (torch.randn(4, 4),)), path)  # batch size fixed at 4
    table, x = _vec_table(n=10)
    enc = build_encoder(EncoderConfig(kind="torchscript", path=path, layers=("body", "body.0")), device=CPU)
    out = enc.encode(table, _cols("vec"))  # 10 rows in batches of exactly 4 (last one padded)
    with torch.no_grad():
        expected = net(torch.from_numpy(x))
        hidden = net.body(torch.from_numpy(x))
    assert out.shape == (10, 3) and torch.allclose(out, expected, atol=1e-5)
    layers = enc.encode_layers(table, _cols("vec"))
    assert layers["body"].shape == (10, 8) and torch.allclose(layers["body"], hidden, atol=1e-5)
    assert layers["body.0"].shape == (10, 8) and torch.allclose(layers["output"], expected, atol=1e-5)
    with pytest.raises(DataError, match=r"layers \['nope'\] not found"):
        build_encoder(EncoderConfig(kind="torchscript", path=path, layers=("nope",)),
                      device=CPU).encode_layers(table, _cols("vec"))


class _Sum(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.sum(dim=0)


class _Boom(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        raise RuntimeError("kaboom")


def test_encoder_returning_wrong_shape_or_failing(tmp_path: Path) -> None:
    table, _ = _vec_table()
    torch.jit.save(torch.jit.script(_Sum()), tmp_path / "sum.pt")
    enc = build_encoder(EncoderConfig(kind="torchscript", path=tmp_path / "sum.pt"), device=CPU, source="m")
    with pytest.raises(SourceError) as exc:
        enc.encode(table, _cols("vec"))
    assert "model returned shape (4,) for a batch of 10 rows; expected (10, D)" in _one_line(exc)
    torch.jit.save(torch.jit.script(_Boom()), tmp_path / "boom.pt")
    enc = build_encoder(EncoderConfig(kind="torchscript", path=tmp_path / "boom.pt"), device=CPU)
    with pytest.raises(DataError) as exc:
        enc.encode(table, _cols("vec"))
    assert "forward failed" in _one_line(exc) and "kaboom" in str(exc.value)


def test_encoder_file_that_fails_to_load(tmp_path: Path) -> None:
    net = torch.jit.script(_Net())
    good = tmp_path / "net.pt"
    torch.jit.save(net, good)
    truncated = tmp_path / "truncated.pt"
    truncated.write_bytes(good.read_bytes()[:300])
    with pytest.raises(SourceError) as exc:
        build_encoder(EncoderConfig(kind="torchscript", path=truncated), device=CPU, source="x")
    assert "truncated.pt" in _one_line(exc)
    garbage = tmp_path / "garbage.bin"
    garbage.write_bytes(b"\x00\x01 definitely not a model")
    with pytest.raises(DataError, match="garbage.bin: is not a TorchScript or torch.export"):
        build_encoder(EncoderConfig(kind="torchscript", path=garbage), device=CPU)
    with pytest.raises(DataError, match="does not exist"):
        build_encoder(EncoderConfig(kind="torchscript", path=tmp_path / "missing.pt"), device=CPU)


# ---------------------------------------------------------------- pickles are refused


def test_pickle_files_are_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def no_torch_load(*args: object, **kwargs: object) -> None:
        raise AssertionError("torch.load must not be called on a pickle")

    monkeypatch.setattr(torch, "load", no_torch_load)
    net = _Net()
    files = {
        "state_dict.pt": lambda p: torch.save(net.state_dict(), p),
        "module.pth": lambda p: torch.save(net, p),
        "legacy.pt": lambda p: torch.save(net.state_dict(), p, _use_new_zipfile_serialization=False),
        "raw.pkl": lambda p: p.write_bytes(pickle.dumps({"w": [1, 2, 3]}, protocol=4)),
        "proto0.pkl": lambda p: p.write_bytes(pickle.dumps(("w", 1), protocol=0)),
    }
    for name, write in files.items():
        path = tmp_path / name
        write(path)
        for kind, extra in (("torchscript", {}), ("safetensors", {"architecture": "mlp"})):
            with pytest.raises(SourceError) as exc:
                build_encoder(EncoderConfig(kind=kind, path=path, **extra), device=CPU, source="evil")
            assert _one_line(exc) == (f"source 'evil': {path} is a pickle file; tasksim loads only TorchScript, "
                                      "torch.export (.pt2) or safetensors"), name


def test_export_archive_with_pickled_payload_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "net.pt2"
    torch.export.save(torch.export.export(_Net().eval(), (torch.randn(2, 4),)), path)
    tampered = tmp_path / "tampered.pt2"
    with zipfile.ZipFile(path) as src, zipfile.ZipFile(tampered, "w") as dst:
        for item in src.infolist():
            data = src.read(item)
            if item.filename.endswith("_weights_config.json"):
                cfg = json.loads(data)
                next(iter(cfg["config"].values()))["use_pickle"] = True
                data = json.dumps(cfg).encode()
            dst.writestr(item, data)
    with pytest.raises(DataError, match="stores pickled tensors"):
        build_encoder(EncoderConfig(kind="torchscript", path=tampered), device=CPU)


# ---------------------------------------------------------------- safetensors + registry


def test_safetensors_mlp(tmp_path: Path) -> None:
    torch.manual_seed(1)
    mlp = MLP([4, 16, 2]).eval()
    path = tmp_path / "mlp.safetensors"
    save_file(mlp.state_dict(), str(path))
    table, x = _vec_table(n=50)
    enc = build_encoder(EncoderConfig(kind="safetensors", path=path, architecture="mlp", layers=("layers.0",)),
                        device=CPU)
    with torch.no_grad():
        expected = mlp(torch.from_numpy(x))
    out = enc.encode(table, _cols("vec"))
    assert torch.allclose(out, expected, atol=1e-6) and enc.dim == 2
    layers = enc.encode_layers(table, _cols("vec"))
    assert layers["layers.0"].shape == (50, 16) and torch.allclose(layers["output"], expected, atol=1e-6)
    fp = enc.fingerprint
    save_file(MLP([4, 16, 2]).state_dict(), str(path))  # new weights, same name
    assert build_encoder(EncoderConfig(kind="safetensors", path=path, architecture="mlp"), device=CPU).fingerprint != fp
    narrow = build_encoder(EncoderConfig(kind="safetensors", path=path, architecture="mlp"), device=CPU)
    with pytest.raises(DataError, match="forward failed"):
        narrow.encode(pa.table({"a": [1.0, 2.0]}), _cols("a"))  # 1 input column, the MLP wants 4


def test_safetensors_errors_and_custom_architecture(tmp_path: Path) -> None:
    path = tmp_path / "w.safetensors"
    save_file({"layers.0.weight": torch.randn(3, 4), "layers.0.bias": torch.randn(3),
               "layers.1.weight": torch.randn(2, 5)}, str(path))
    with pytest.raises(SourceError) as exc:
        build_encoder(EncoderConfig(kind="safetensors", path=path, architecture="mlp"), device=CPU, source="w")
    assert "weights do not fit architecture 'mlp'" in _one_line(exc) and "5 inputs" in str(exc.value)
    with pytest.raises(DataError, match="architecture 'resnet9000' is not registered"):
        build_encoder(EncoderConfig(kind="safetensors", path=path, architecture="resnet9000"), device=CPU)
    corrupt = tmp_path / "corrupt.safetensors"
    corrupt.write_bytes(path.read_bytes()[:40])
    with pytest.raises(DataError, match="corrupt.safetensors"):
        build_encoder(EncoderConfig(kind="safetensors", path=corrupt, architecture="mlp"), device=CPU)

    class Scale(nn.Module):
        def __init__(self, n: int) -> None:
            super().__init__()
            self.w = nn.Parameter(torch.zeros(n))

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return x * self.w

    register_architecture("test-scale", lambda t, cfg: Scale(t["w"].shape[0]), replace=True)
    assert "test-scale" in registered_architectures() and "mlp" in registered_architectures()
    with pytest.raises(ValueError, match="already registered"):
        register_architecture("test-scale", lambda t, cfg: Scale(1))
    save_file({"w": torch.tensor([1.0, 2.0, 3.0, 4.0])}, str(tmp_path / "scale.safetensors"))
    enc = build_encoder(EncoderConfig(kind="safetensors", path=tmp_path / "scale.safetensors",
                                      architecture="test-scale"), device=CPU)
    table, x = _vec_table(n=5)
    assert torch.allclose(enc.encode(table, _cols("vec")), torch.from_numpy(x) * torch.tensor([1.0, 2, 3, 4]))


def test_fingerprints_follow_content_not_name(tmp_path: Path) -> None:
    a, b = tmp_path / "a.pt", tmp_path / "b.pt"
    buf = io.BytesIO()
    torch.jit.save(torch.jit.script(_Net()), buf)
    a.write_bytes(buf.getvalue())
    b.write_bytes(buf.getvalue())
    fa = build_encoder(EncoderConfig(kind="torchscript", path=a), device=CPU).fingerprint
    fb = build_encoder(EncoderConfig(kind="torchscript", path=b), device=CPU).fingerprint
    fc = build_encoder(EncoderConfig(kind="torchscript", path=b, input_shape=(4,)), device=CPU).fingerprint
    assert fa == fb != fc


class _Conv(nn.Module):
    """Needs (N, 1, 4, 4) images: flat rows fail inside the model."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 2, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x).flatten(1)


def test_a_failing_encoder_names_the_shape_it_got_and_the_key_that_fixes_it(tmp_path: Path) -> None:
    torch.jit.save(torch.jit.script(_Conv()), tmp_path / "conv.pt")
    table = pa.table({"vec": pa.array([[float(i)] * 16 for i in range(5)], type=pa.list_(pa.float32(), 16))})
    enc = build_encoder(EncoderConfig(kind="torchscript", path=tmp_path / "conv.pt"), device=CPU, source="cnn")
    with pytest.raises(SourceError) as exc:
        enc.encode(table, _cols("vec"))
    line = _one_line(exc)
    assert "input of shape (5, 16)" in line and "encoder.input_shape" in line
    assert "RuntimeError: RuntimeError" not in line
    fixed = build_encoder(EncoderConfig(kind="torchscript", path=tmp_path / "conv.pt", input_shape=(1, 4, 4)),
                          device=CPU, source="cnn")
    assert tuple(fixed.encode(table, _cols("vec")).shape) == (5, 8)


def test_head_files_are_checked_before_any_cycle(tmp_path: Path) -> None:
    """tasksim validate refuses a TorchScript file or a malformed head with one line and exit 2."""
    import subprocess
    import sys

    from tasksim.model_encoders import check_head_file

    torch.jit.save(torch.jit.script(_Sum()), tmp_path / "head.pt")
    save_file({"weight": torch.zeros(3, 8), "bias": torch.zeros(3)}, str(tmp_path / "good.safetensors"))
    save_file({"weight": torch.zeros(3, 8), "bias": torch.zeros(4)}, str(tmp_path / "bias.safetensors"))
    save_file({"weight": torch.zeros(8)}, str(tmp_path / "flat.safetensors"))
    assert check_head_file(tmp_path / "good.safetensors") == (3, 8)
    with pytest.raises(DataError, match="head.pt: the head is a TorchScript archive; expected safetensors"):
        check_head_file(tmp_path / "head.pt")
    with pytest.raises(DataError, match=r"'bias' has shape \(4,\) but 'weight' has 3 classes"):
        check_head_file(tmp_path / "bias.safetensors")
    with pytest.raises(DataError, match=r"'weight' has shape \(8,\)"):
        check_head_file(tmp_path / "flat.safetensors")
    for head, expected in (("head.pt", "is a TorchScript archive"), ("flat.safetensors", "'weight' has shape")):
        cfg = tmp_path / f"{head}.yaml"
        cfg.write_text(f"""
state_dir: state
production: {{path: prod, timestamp_column: ts, feature_columns: [a, b]}}
reference: {{end: 2026-01-01T00:00:00}}
sources:
  - {{name: plain, path: s1.parquet, feature_columns: [a, b]}}
  - {{name: withhead, path: s2.parquet, feature_columns: [a, b], head: {head}}}
deployed_source: plain
schedule: {{interval: 30s}}
""")
        proc = subprocess.run([sys.executable, "-m", "tasksim.cli", "validate", "--config", str(cfg)],
                              capture_output=True, text=True, timeout=120)
        lines = [line for line in proc.stderr.splitlines() if line.strip()]
        assert proc.returncode == 2 and len(lines) == 1, proc.stderr
        assert f"sources[1].head (withhead): {tmp_path / head}" in lines[0] and expected in lines[0]
