"""The soft-prompt pool file and the model fingerprint: round trip, checks at load, malformed files."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors import safe_open
from safetensors.numpy import save_file

from decoders.fingerprint import model_fingerprint
from decoders.tiny import TinySpec, build_tiny_causal_lm
from gateway.stages.select_prompt.pool import FORMAT, PoolError, SoftPool, read_pool_info, save_pool
from tests.support.idp import random_pool


@pytest.fixture(scope="module")
def tiny_dirs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("fp")
    return {
        "a": build_tiny_causal_lm(root / "a", "llama", seed=0, spec=TinySpec(num_layers=1)),
        "b": build_tiny_causal_lm(root / "b", "llama", seed=1, spec=TinySpec(num_layers=1)),
    }


def test_round_trip_keeps_prompts_names_and_fingerprint(tmp_path: Path) -> None:
    prompts = random_pool(3, 4, 16)
    path = save_pool(tmp_path / "pool.safetensors", prompts, ["a", "b", "c"], "f" * 32)
    info = read_pool_info(path)
    assert (info.names, info.fingerprint, info.shape) == (("a", "b", "c"), "f" * 32, (3, 4, 16))
    pool = SoftPool.load(path, fingerprint="f" * 32, hidden_size=16)
    assert pool.prompts.dtype == torch.float32
    assert torch.equal(pool.prompts, prompts)
    with safe_open(str(path), framework="np") as f:  # the metadata as the issue specifies it
        meta = f.metadata()
    assert json.loads(meta["names"]) == ["a", "b", "c"]
    assert (meta["fingerprint"], meta["format"]) == ("f" * 32, FORMAT)


def test_pool_for_another_model_or_hidden_size_is_refused(tmp_path: Path) -> None:
    path = save_pool(tmp_path / "p.safetensors", random_pool(2, 3, 16), ["x", "y"], "a" * 32)
    with pytest.raises(PoolError, match=r"trained for model a+"):
        SoftPool.load(path, fingerprint="b" * 32)
    with pytest.raises(PoolError, match="hidden size 16, the model 64"):
        SoftPool.load(path, hidden_size=64)


@pytest.mark.parametrize(
    ("tensors", "meta", "match"),
    [
        ({"other": np.zeros((1, 2, 3), np.float32)}, {"names": '["a"]', "fingerprint": "x"}, "no tensor 'prompts'"),
        ({"prompts": np.zeros((2, 3), np.float32)}, {"names": '["a", "b"]', "fingerprint": "x"}, "shape"),
        ({"prompts": np.zeros((2, 1, 3), np.float32)}, {"names": '["a"]', "fingerprint": "x"}, "1 names for 2"),
        ({"prompts": np.zeros((2, 1, 3), np.float32)}, {"names": '["a", "a"]', "fingerprint": "x"}, "repeat"),
        ({"prompts": np.zeros((1, 1, 3), np.float32)}, {"names": "a", "fingerprint": "x"}, "not a JSON list"),
        ({"prompts": np.zeros((1, 1, 3), np.float32)}, {"names": '["a"]'}, "fingerprint"),
        ({"prompts": np.full((1, 1, 3), np.nan, np.float32)}, {"names": '["a"]', "fingerprint": "x"}, "NaN"),
    ],
)
def test_malformed_pools_are_clear_errors(tmp_path: Path, tensors: dict, meta: dict, match: str) -> None:
    path = tmp_path / "bad.safetensors"
    save_file(tensors, str(path), metadata=meta)
    with pytest.raises(PoolError, match=match) as err:
        SoftPool.load(path)
    assert err.value.param == "path"


def test_missing_or_garbage_file(tmp_path: Path) -> None:
    with pytest.raises(PoolError, match="does not exist"):
        read_pool_info(tmp_path / "nope.safetensors")
    (tmp_path / "junk").write_bytes(b"not a safetensors file at all")
    with pytest.raises(PoolError, match="not a safetensors file"):
        read_pool_info(tmp_path / "junk")


def test_save_refuses_bad_input(tmp_path: Path) -> None:
    with pytest.raises(PoolError, match=r"\(m, n, d\)"):
        save_pool(tmp_path / "p", torch.zeros(2, 3), ["a", "b"], "f")
    with pytest.raises(PoolError, match="2 names for 3"):
        save_pool(tmp_path / "p", torch.zeros(3, 1, 2), ["a", "b"], "f")
    with pytest.raises(PoolError, match="fingerprint"):
        save_pool(tmp_path / "p", torch.zeros(1, 1, 2), ["a"], "")


def test_fingerprint_follows_weights_and_vocab_not_location(tiny_dirs: dict[str, Path], tmp_path: Path) -> None:
    a, b = tiny_dirs["a"], tiny_dirs["b"]
    fa = model_fingerprint(a)
    assert len(fa) == 32 and fa == model_fingerprint(str(a))
    assert model_fingerprint(b) != fa  # other weights (and tokenizer) -> other id
    copy = Path(shutil.copytree(a, tmp_path / "copy"))
    assert model_fingerprint(copy) == fa  # same files elsewhere -> same id
    (copy / "generation_config.json").write_text("{}")  # generation settings are not identity
    cfg = json.loads((copy / "tokenizer_config.json").read_text())
    cfg["chat_template"] = "{{ messages }}"  # nor is the chat template
    (copy / "tokenizer_config.json").write_text(json.dumps(cfg))
    assert model_fingerprint(copy) == fa
    tok = json.loads((copy / "tokenizer.json").read_text())
    tok["model"]["vocab"]["zzz-new-piece"] = 10_000  # the vocabulary is
    (copy / "tokenizer.json").write_text(json.dumps(tok))
    assert model_fingerprint(copy) != fa


def test_fingerprint_needs_weights(tmp_path: Path) -> None:
    (tmp_path / "config.json").write_text("{}")
    with pytest.raises(FileNotFoundError, match="no weight files"):
        model_fingerprint(tmp_path)
