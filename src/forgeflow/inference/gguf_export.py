"""Export a Hugging Face Llama-architecture checkpoint (SmolLM2, Llama, fine-tunes of them) to GGUF.

Written with the `gguf` package's GGUFWriter, so no llama.cpp checkout is needed: the
llama-cpp-python wheel ships no converter. Weights go out as f16 or q8_0 (norms stay f32); the
q and k projections are permuted from HF's half-split rotary layout to GGML's interleaved one.
Smaller types (q4_k_m) are made from the f16 file by llama.cpp's own quantizer, which
llama-cpp-python exposes (`llama_model_quantize`). The tokenizer goes in as a GPT-2 style BPE
vocabulary with its merges, special tokens, pre-tokenizer name and chat template, so llama.cpp
on its own (its tokenizer, its chat formatter) reads the same prompt tokens forgeflow's
`llamacpp` runtime feeds it. `cached_gguf` writes each type once next to the model and reuses it
while the weights are unchanged.
"""

from __future__ import annotations

import ctypes
import fcntl
import json
import logging
import os
import re
from pathlib import Path
from typing import Any

from forgeflow.errors import ForgeflowError, InvalidInput, NotFound

OUT_TYPES = ("f16", "q8_0")  # written here
QUANTIZED_TYPES = ("q4_k_m",)  # made from the f16 file by llama.cpp's quantizer
GGUF_TYPES = OUT_TYPES + QUANTIZED_TYPES
# What a llamacpp deployment serves and `model export` writes unless told: on a CPU it decodes ~1.4x f16's speed
# for +0.05 validation loss (+1.7%; bench/README.md, gguf_levels.py).
DEFAULT_TYPE = "q4_k_m"
ARCHITECTURES = ("LlamaForCausalLM",)
_CACHE = re.compile(r"^(forgeflow-[a-z0-9_]+\.(gguf|stamp|gguf\.\d+\.partial)|\.forgeflow-gguf\.lock)$")


def is_cache_file(name: str) -> bool:
    """Whether a file in a model folder is one of the GGUF files (and their stamps, lock, partial writes) that
    `cached_gguf` keeps there: derived from the weights, not part of the model."""
    return bool(_CACHE.match(name))


def cached_gguf(model_dir: Path, out_type: str = "f16") -> Path:
    """The GGUF of `model_dir` (an HF folder), exported on first use; safe when instances race."""
    model_dir = Path(model_dir)
    if out_type not in GGUF_TYPES:
        raise InvalidInput(f"GGUF type must be one of {', '.join(GGUF_TYPES)}, got {out_type!r}", field="gguf_type")
    source = None
    if out_type in QUANTIZED_TYPES:
        _quantizer(out_type)  # before minutes of f16 export, not after
        source = cached_gguf(model_dir, "f16")  # before taking the lock

    def write(partial: Path) -> None:
        if source is not None:
            quantize_gguf(source, partial, out_type)
        else:
            export_gguf(model_dir, partial, out_type)

    return cached_file(model_dir, f"forgeflow-{out_type}.gguf", write)


# beside the weights, what an exported GGUF holds: the model's shape, its tokenizer and its chat template
_STAMPED = ("config.json", "adapter_config.json", "tokenizer.json", "tokenizer_config.json", "tokenizer.model",
            "special_tokens_map.json", "chat_template.jinja", "generation_config.json")


def cached_file(folder: Path, name: str, write: Any) -> Path:
    """`folder/name`, written by `write(partial_path)` when missing or when the folder's safetensors weights or
    the files whose content the GGUF also holds (config, tokenizer, chat template) changed since: a stamp file
    records each one's name, size and time (a file added or replaced with an older time, as `cp -p` leaves it,
    changes it too); instances racing for it wait on a lock file, and the first writes."""
    weights = sorted(folder.glob("*.safetensors"))
    if not weights:
        raise NotFound(f"{folder} has no safetensors weights to export to GGUF")
    configs = [p for p in map(folder.joinpath, _STAMPED) if p.is_file()]
    stamp = " ".join(f"{p.name}:{st.st_size}:{st.st_mtime_ns}" for p in weights + configs for st in [p.stat()])
    target = folder / name
    stamp_file = target.with_suffix(".stamp")
    with open(folder / ".forgeflow-gguf.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # a second instance waits for the first one's export
        if target.exists() and stamp_file.exists() and stamp_file.read_text().strip() == stamp:
            return target
        partial = target.with_name(target.name + f".{os.getpid()}.partial")
        try:
            write(partial)
            os.replace(partial, target)
        finally:
            partial.unlink(missing_ok=True)
        stamp_file.write_text(stamp)
    return target


def quantize_gguf(source: Path, out: Path, out_type: str) -> Path:
    """Quantize an f16 GGUF file to `out_type` with llama.cpp's quantizer (tensors whose rows do not fit the
    type's block size fall back to a type that fits, as llama.cpp's `llama-quantize` does)."""
    if out_type not in QUANTIZED_TYPES:
        raise InvalidInput(f"quantize to one of {', '.join(QUANTIZED_TYPES)}, got {out_type!r}", field="quantize")
    llama_cpp = _quantizer(out_type)
    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = getattr(llama_cpp, f"LLAMA_FTYPE_MOSTLY_{out_type.upper()}")
    params.nthread = max(1, len(os.sched_getaffinity(0)) // 2)
    # llama.cpp logs a line per tensor (and per fallback) through llama-cpp-python's logger: keep its errors only
    log = logging.getLogger("llama-cpp-python")
    level = log.level
    log.setLevel(logging.ERROR)
    try:
        failed = llama_cpp.llama_model_quantize(str(source).encode(), str(out).encode(), ctypes.byref(params))
    finally:
        log.setLevel(level)
    if failed:
        raise ForgeflowError(f"llama.cpp could not quantize {source} to {out_type} (its log on the server says why)")
    return Path(out)


def _quantizer(out_type: str) -> Any:
    """llama-cpp-python, whose bindings carry llama.cpp's quantizer."""
    try:
        import llama_cpp
    except ImportError:
        raise InvalidInput(f"quantize {out_type} needs llama.cpp's quantizer from llama-cpp-python, which is not "
                           "installed where the model is: pip install 'forgeflow[llamacpp]', or export f16 or q8_0",
                           field="quantize") from None
    return llama_cpp


def unsupported_reason(config: dict) -> str | None:
    """Why a model with this config.json cannot be written as GGUF here, or None when it can."""
    arch = (config.get("architectures") or ["?"])[0]
    if arch not in ARCHITECTURES:
        return f"GGUF export supports {', '.join(ARCHITECTURES)} models (SmolLM2, Llama); this model is {arch}"
    rope = config.get("rope_parameters") or config.get("rope_scaling") or {}
    if rope.get("rope_type", rope.get("type", "default")) not in ("default", None):
        return f"GGUF export does not handle rope scaling {rope.get('rope_type')!r} yet"
    return None


def export_gguf(model_dir: Path, out: Path, out_type: str = "f16") -> Path:
    """Write `model_dir`'s model and tokenizer to the GGUF file `out`."""
    import gguf

    if out_type not in OUT_TYPES:
        raise InvalidInput(f"GGUF type must be one of {', '.join(OUT_TYPES)}, got {out_type!r}", field="gguf_type")
    config = json.loads((Path(model_dir) / "config.json").read_text())
    if problem := unsupported_reason(config):
        raise InvalidInput(f"{problem}: serve it with runtime 'transformers'", field="runtime")
    rope = config.get("rope_parameters") or config.get("rope_scaling") or {}

    heads, kv_heads = config["num_attention_heads"], config.get("num_key_value_heads", config["num_attention_heads"])
    hidden = config["hidden_size"]
    head_dim = config.get("head_dim") or hidden // heads
    state = _load_state(Path(model_dir))
    vocab_rows = state["model.embed_tokens.weight"].shape[0]

    writer = gguf.GGUFWriter(str(out), "llama")
    writer.add_name(Path(model_dir).name)
    writer.add_context_length(config.get("max_position_embeddings", 2048))
    writer.add_embedding_length(hidden)
    writer.add_block_count(config["num_hidden_layers"])
    writer.add_feed_forward_length(config["intermediate_size"])
    writer.add_head_count(heads)
    writer.add_head_count_kv(kv_heads)
    writer.add_rope_dimension_count(head_dim)
    if head_dim != hidden // heads:
        writer.add_key_length(head_dim)
        writer.add_value_length(head_dim)
    writer.add_rope_freq_base(float(rope.get("rope_theta", config.get("rope_theta", 10000.0))))
    writer.add_layer_norm_rms_eps(float(config.get("rms_norm_eps", 1e-5)))
    writer.add_vocab_size(vocab_rows)
    writer.add_file_type(gguf.LlamaFileType.MOSTLY_F16 if out_type == "f16" else gguf.LlamaFileType.MOSTLY_Q8_0)
    _add_tokenizer(writer, Path(model_dir), vocab_rows)

    for name, tensor in _gguf_tensors(state, config, heads, kv_heads):
        data, qtype = _encode(tensor, out_type)
        writer.add_tensor(name, data, raw_dtype=qtype)

    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return Path(out)


def _load_state(model_dir: Path) -> dict[str, Any]:
    """All weights as float32 numpy arrays, keyed by their HF names."""
    from safetensors import safe_open

    state: dict[str, Any] = {}
    for path in sorted(model_dir.glob("*.safetensors")):
        with safe_open(str(path), framework="pt") as f:
            for key in f.keys():  # noqa: SIM118 - safe_open is not a dict
                state[key] = f.get_tensor(key).float().numpy()
    return state


def _gguf_tensors(state: dict[str, Any], config: dict, heads: int, kv_heads: int):
    """(GGUF name, array) pairs in llama.cpp's naming."""
    yield "token_embd.weight", state["model.embed_tokens.weight"]
    for i in range(config["num_hidden_layers"]):
        p = f"model.layers.{i}."
        yield f"blk.{i}.attn_norm.weight", state[p + "input_layernorm.weight"]
        yield f"blk.{i}.attn_q.weight", _rope_permute(state[p + "self_attn.q_proj.weight"], heads)
        yield f"blk.{i}.attn_k.weight", _rope_permute(state[p + "self_attn.k_proj.weight"], kv_heads)
        yield f"blk.{i}.attn_v.weight", state[p + "self_attn.v_proj.weight"]
        yield f"blk.{i}.attn_output.weight", state[p + "self_attn.o_proj.weight"]
        yield f"blk.{i}.ffn_norm.weight", state[p + "post_attention_layernorm.weight"]
        yield f"blk.{i}.ffn_gate.weight", state[p + "mlp.gate_proj.weight"]
        yield f"blk.{i}.ffn_up.weight", state[p + "mlp.up_proj.weight"]
        yield f"blk.{i}.ffn_down.weight", state[p + "mlp.down_proj.weight"]
    yield "output_norm.weight", state["model.norm.weight"]
    if "lm_head.weight" in state and not config.get("tie_word_embeddings", False):
        yield "output.weight", state["lm_head.weight"]


def _rope_permute(weight: Any, heads: int) -> Any:
    """HF rotates the two halves of each head; GGML rotates adjacent pairs. Reorder the rows."""
    rows, cols = weight.shape
    return weight.reshape(heads, 2, rows // heads // 2, cols).swapaxes(1, 2).reshape(rows, cols)


def _encode(tensor: Any, out_type: str) -> tuple[Any, Any]:
    import gguf
    import numpy as np

    if tensor.ndim == 1:
        return tensor.astype(np.float32), gguf.GGMLQuantizationType.F32
    if out_type == "q8_0" and tensor.shape[-1] % 32 == 0:
        return gguf.quants.quantize(tensor, gguf.GGMLQuantizationType.Q8_0), gguf.GGMLQuantizationType.Q8_0
    return tensor.astype(np.float16), gguf.GGMLQuantizationType.F16


def _add_tokenizer(writer: Any, model_dir: Path, vocab_rows: int) -> None:
    """A byte-level BPE tokenizer.json as GGUF's `gpt2` tokenizer model."""
    import gguf

    path = model_dir / "tokenizer.json"
    if not path.exists():
        raise InvalidInput(f"{model_dir} has no tokenizer.json: GGUF export needs a fast BPE tokenizer", field="runtime")
    spec = json.loads(path.read_text())
    model = spec.get("model", {})
    if model.get("type") != "BPE" or model.get("byte_fallback"):
        raise InvalidInput("GGUF export handles byte-level BPE tokenizers only", field="runtime")
    by_id = {index: text for text, index in model["vocab"].items()}
    kinds = {index: gguf.TokenType.NORMAL for index in by_id}
    for added in spec.get("added_tokens", []):
        by_id[added["id"]] = added["content"]
        kinds[added["id"]] = gguf.TokenType.CONTROL if added.get("special") else gguf.TokenType.USER_DEFINED
    size = max(vocab_rows, max(by_id) + 1)
    tokens, types = [], []
    for index in range(size):
        tokens.append(by_id.get(index, f"[PAD{index}]"))
        types.append(kinds.get(index, gguf.TokenType.UNUSED))
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre(_pre_tokenizer(spec.get("pre_tokenizer") or {}))
    writer.add_token_list(tokens)
    writer.add_token_types(types)
    special = gguf.SpecialVocab(model_dir, load_merges=True, n_vocab=size)
    if special.chat_template is None:
        from forgeflow.inference.runtimes.base import CHATML_TEMPLATE

        special.chat_template = CHATML_TEMPLATE
    special.add_to_gguf(writer, quiet=True)


def _pre_tokenizer(spec: dict) -> str:
    """llama.cpp's name for the pre-tokenizer: how llama.cpp's own tokenizer splits text before BPE. forgeflow's
    runtime tokenizes with the HF tokenizer; other programs that read the file (llama.cpp itself) use this, so it
    must name the split the HF tokenizer makes. SmolLM2's and GPT-2's are recognised; others get llama.cpp's
    default and may split some text differently."""
    parts = spec.get("pretokenizers", [spec])
    types = [p.get("type") for p in parts]
    if "Digits" in types and "ByteLevel" in types:
        return "smollm"
    if types == ["ByteLevel"]:
        return "gpt-2"
    return "default"
