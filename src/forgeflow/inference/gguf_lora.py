"""Convert a PEFT LoRA adapter folder to llama.cpp's GGUF LoRA format, so the `llamacpp` runtime can serve many
fine-tunes on one base model (llama.cpp applies such a file on top of the base GGUF).

The file names each low-rank pair after the base tensor it modifies, as gguf_export.py names the base tensors
(`blk.N.attn_q.weight.lora_a` / `.lora_b`), and carries `adapter.lora.alpha`: llama.cpp scales the product by
alpha / rank, as PEFT does. The rows of q and k's `lora_b` are permuted as gguf_export permutes the q and k
weights (HF's half-split rotary layout to GGML's interleaved one); `lora_a` acts on the input and is left as is.
`cached_gguf_lora` writes the file once next to the adapter (`forgeflow-lora.gguf`) and reuses it while the
adapter's weights are unchanged.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from forgeflow.errors import InvalidInput, NotFound
from forgeflow.inference.gguf_export import _rope_permute, cached_file, unsupported_reason

LORA_FILE = "forgeflow-lora.gguf"
PEFT_DEFAULT_ALPHA = 8  # PEFT's LoraConfig.lora_alpha when adapter_config.json names none
_MODULES = {  # PEFT module path inside a decoder layer -> GGUF base tensor name
    "self_attn.q_proj": "attn_q", "self_attn.k_proj": "attn_k", "self_attn.v_proj": "attn_v",
    "self_attn.o_proj": "attn_output", "mlp.gate_proj": "ffn_gate", "mlp.up_proj": "ffn_up",
    "mlp.down_proj": "ffn_down",
}


def cached_gguf_lora(adapter_dir: Path, base_dir: Path) -> Path:
    """The GGUF LoRA file of the PEFT adapter in `adapter_dir` (for the base model in `base_dir`), written on
    first use next to the adapter; safe when instances race."""
    adapter_dir = Path(adapter_dir)
    return cached_file(adapter_dir, LORA_FILE, lambda partial: export_gguf_lora(adapter_dir, base_dir, partial))


def export_gguf_lora(adapter_dir: Path, base_dir: Path, out: Path) -> Path:
    """Write the PEFT LoRA adapter in `adapter_dir` as a GGUF LoRA file `out` for `base_dir`'s model."""
    import gguf

    adapter_dir = Path(adapter_dir)
    config_path = adapter_dir / "adapter_config.json"
    if not config_path.is_file():
        raise NotFound(f"{adapter_dir} has no adapter_config.json (a PEFT LoRA folder)", field="adapter")
    spec = json.loads(config_path.read_text())
    base = json.loads((Path(base_dir) / "config.json").read_text())
    if problem := unsupported_reason(base):
        raise InvalidInput(f"{problem}: serve its adapters with runtime 'transformers'", field="runtime")
    alpha = _alpha(spec, adapter_dir)
    heads = base["num_attention_heads"]
    kv_heads = base.get("num_key_value_heads", heads)
    pairs = _pairs(adapter_dir)
    _check_shapes(pairs, base, adapter_dir)

    writer = gguf.GGUFWriter(str(out), "llama")
    writer.add_string("general.type", "adapter")
    writer.add_name(adapter_dir.name)
    writer.add_string("adapter.type", "lora")
    writer.add_float32("adapter.lora.alpha", alpha)
    for layer, module, a, b in pairs:
        name = f"blk.{layer}.{_MODULES[module]}.weight"
        if module == "self_attn.q_proj":
            b = _rope_permute(b, heads)
        elif module == "self_attn.k_proj":
            b = _rope_permute(b, kv_heads)
        writer.add_tensor(f"{name}.lora_a", a.astype("float32"))
        writer.add_tensor(f"{name}.lora_b", b.astype("float32"))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return Path(out)


def _alpha(spec: dict, adapter_dir: Path) -> float:
    """The alpha llama.cpp needs for PEFT's scale (alpha / r, or alpha / sqrt(r) with rsLoRA); what PEFT can do
    that a GGUF LoRA cannot carry is refused by name."""
    if spec.get("peft_type", "LORA") != "LORA":
        raise InvalidInput(f"adapter {adapter_dir.name} is a {spec.get('peft_type')} adapter: the llamacpp runtime "
                           "serves LoRA adapters; serve it with runtime 'transformers'", field="runtime")
    for key in ("use_dora", "modules_to_save", "rank_pattern", "alpha_pattern"):
        if spec.get(key):
            raise InvalidInput(f"adapter {adapter_dir.name} uses {key}, which llama.cpp's LoRA format cannot carry: "
                               "serve it with runtime 'transformers'", field="runtime")
    for key in ("layer_replication", "fan_in_fan_out"):
        if spec.get(key):
            raise InvalidInput(f"adapter {adapter_dir.name} uses {key}, which the llamacpp runtime cannot apply: serve "
                               "it with runtime 'transformers', or train it without", field="adapter")
    try:
        r = int(spec["r"])
        alpha = float(spec.get("lora_alpha", PEFT_DEFAULT_ALPHA))
    except (KeyError, TypeError, ValueError):
        raise InvalidInput(f"adapter {adapter_dir.name}'s adapter_config.json needs a whole-number rank r (and a "
                           "number lora_alpha, if any); save the adapter again with PEFT", field="adapter") from None
    if r < 1 or alpha == 0:  # llama.cpp reads an alpha of 0 as "no alpha" and would apply the product unscaled
        raise InvalidInput(f"adapter {adapter_dir.name} has r {r} and lora_alpha {alpha:g}: a LoRA adapter needs a "
                           "rank of at least 1 and a non-zero alpha; fix its adapter_config.json", field="adapter")
    return alpha * math.sqrt(r) if spec.get("use_rslora") else alpha


def _check_shapes(pairs: list[tuple[int, str, Any, Any]], base: dict, adapter_dir: Path) -> None:
    """Each lora_A / lora_B must fit the base model's projection it modifies (an adapter of another base, or a
    damaged file, is refused here rather than failing in llama.cpp on first use)."""
    hidden, layers = int(base["hidden_size"]), int(base["num_hidden_layers"])
    heads = int(base["num_attention_heads"])
    head_dim = int(base.get("head_dim") or hidden // heads)
    q, kv = heads * head_dim, int(base.get("num_key_value_heads", heads)) * head_dim
    inner = int(base.get("intermediate_size") or 0)
    sizes = {"self_attn.q_proj": (hidden, q), "self_attn.k_proj": (hidden, kv), "self_attn.v_proj": (hidden, kv),
             "self_attn.o_proj": (q, hidden), "mlp.gate_proj": (hidden, inner), "mlp.up_proj": (hidden, inner),
             "mlp.down_proj": (inner, hidden)}  # (in, out) features
    for layer, module, a, b in pairs:
        fan_in, fan_out = sizes[module]
        if layer >= layers:
            problem = f"has a layer {layer}, and the base model has {layers} layers"
        elif a.ndim != 2 or b.ndim != 2 or a.shape[1] != fan_in or b.shape[0] != fan_out or a.shape[0] != b.shape[1]:
            problem = (f"layer {layer}'s {module} has lora_A {list(a.shape)} and lora_B {list(b.shape)}, where the "
                       f"base model needs [r, {fan_in}] and [{fan_out}, r]")
        else:
            continue
        raise InvalidInput(f"adapter {adapter_dir.name} {problem}: it was not trained on this base model; deploy it "
                           "with its own base", field="adapter")


def _pairs(adapter_dir: Path) -> list[tuple[int, str, Any, Any]]:
    """(layer, module, lora_A, lora_B) for each adapted projection, as float32 numpy arrays."""
    from safetensors import safe_open

    path = adapter_dir / "adapter_model.safetensors"
    if not path.is_file():
        raise NotFound(f"{adapter_dir} has no adapter_model.safetensors", field="adapter")
    found: dict[tuple[int, str], dict[str, Any]] = {}
    with safe_open(str(path), framework="pt") as f:
        for key in f.keys():  # noqa: SIM118 - safe_open is not a dict
            head, _, part = key.rpartition(".lora_")
            marker = ".layers."
            if not part or marker not in head or part not in ("A.weight", "B.weight"):
                raise InvalidInput(f"adapter {adapter_dir.name}: tensor {key} is not a decoder layer's LoRA pair; "
                                   "serve it with runtime 'transformers'", field="runtime")
            layer, _, module = head[head.index(marker) + len(marker):].partition(".")
            if module not in _MODULES:
                raise InvalidInput(f"adapter {adapter_dir.name}: LoRA on {module} cannot be served by llama.cpp "
                                   "here; serve it with runtime 'transformers'", field="runtime")
            found.setdefault((int(layer), module), {})[part[0]] = f.get_tensor(key).float().numpy()
    if not found:
        raise InvalidInput(f"adapter {adapter_dir.name} holds no LoRA weights", field="adapter")
    for (layer, module), ab in found.items():
        if len(ab) != 2:
            raise InvalidInput(f"adapter {adapter_dir.name}: layer {layer}'s {module} lacks its lora_A or lora_B "
                               "weight; save the adapter again with PEFT", field="adapter")
    return [(layer, module, ab["A"], ab["B"]) for (layer, module), ab in sorted(found.items())]
