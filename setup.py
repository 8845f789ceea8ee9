from setuptools import find_packages, setup

setup(
    name="tfquant",
    version="0.1.0",
    description="Post-training int8 quantization of TensorFlow SavedModels of causal language models (GPT-J first)",
    # configs/ (model presets, recipes) ships inside the package as tfquant/configs (see tfquant/assets.py)
    packages=find_packages(include=["tfquant", "tfquant.*"]) + ["tfquant.configs"],
    package_dir={"tfquant.configs": "configs"},
    package_data={"tfquant": ["resources/*"], "tfquant.configs": ["*.yaml", "recipes/*.yaml"]},
    include_package_data=True,
    python_requires=">=3.10,<3.12",
    install_requires=[
        "tensorflow==2.15.1",
        "numpy==1.26.4",
        "transformers==4.46.3",
        "datasets==2.21.0",
        "pyarrow==19.0.1",
        "pandas==2.3.3",
        "tqdm",
        "pyyaml",
        "gguf==0.19.0",
    ],
    extras_require={
        # the peer we measure against; never imported by the core
        "inc": ["neural-compressor-tf==3.10"],
        # the ITEX runtime for itex_mode graphs (CPU build, TF 2.15 only)
        "itex": ["intel-extension-for-tensorflow[cpu]==2.15.0.0"],
        "bench": ["matplotlib==3.9.2"],
        # torch only writes the .bin checkpoints tests/test_torch_bin.py reads; tfquant never imports it.
        # Pinned: 2.13.0 is the CPU wheel on this machine's disk; an unpinned torch pulls a multi-GB CUDA build.
        "test": ["pytest", "torch==2.13.0"],
    },
    entry_points={
        "console_scripts": [
            "tfquant-quantize=tfquant.quantize:_console",
            "tfquant-benchmark=tfquant.benchmark:_console",
        ]
    },
)
