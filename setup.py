"""Package metadata for xraygpt.  CI and the README install with `-c constraints.txt`."""

from setuptools import find_packages, setup

setup(
    name="xraygpt",
    version="0.1.0",
    description="XrayGPT-style chest X-ray summarisation: frozen MedCLIP -> linear projection -> frozen Vicuna",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    license="Apache-2.0",
    python_requires=">=3.10",
    packages=find_packages(include=["xraygpt", "xraygpt.*"]),
    # the entry-point scripts at the repository root (`python train.py` keeps working), importable
    # once installed so the console scripts below can call their main()
    py_modules=["train", "evaluate", "demo", "cache_features", "serve"],
    entry_points={"console_scripts": [
        "xraygpt-train=train:main",
        "xraygpt-eval=evaluate:main",
        "xraygpt-demo=demo:main",
        "xraygpt-serve=serve:main",
        "xraygpt-chat=xraygpt.chat_cli:main",
        "xraygpt-prepare=xraygpt.data.prepare.__main__:main",
        "xraygpt-export=xraygpt.export:main",
        "xraygpt-cache-features=cache_features:main",
    ]},
    package_data={"xraygpt.models": ["configs/*.json"], "xraygpt.data.prepare": ["rules/*.tsv"],
                  "xraygpt.evaluation": ["phrases/*.txt", "phrases/mention/*.txt"]},
    install_requires=[
        "torch>=2.4",
        "transformers[sentencepiece]>=5.0,<6",
        "accelerate>=1.0",
        "omegaconf>=2.3",
        "sentencepiece>=0.2",
        "protobuf>=4",
        "safetensors>=0.4",
        "webdataset>=0.2",
        "peft>=0.13",
        "pillow>=10.1",
        "numpy>=1.24",
        "tqdm>=4.66",
        "matplotlib>=3.7",
    ],
    extras_require={
        # the tests exercise the demo (gradio_client, a headless browser via selenium), the metrics,
        # 8/4-bit inference (bitsandbytes runs on the CPU too), the OpenAI-compatible server (with
        # the official openai client), the terminal chat (in a pseudo-terminal, pexpect) and the
        # tensorboard log
        "dev": ["pytest>=8", "gradio>=6,<7", "selenium>=4.20", "rouge-score>=0.1.2", "pydicom>=3",
                "bitsandbytes>=0.49", "openai>=1.0", "pexpect>=4.8", "tensorboard>=2.15"],
        "demo": ["gradio>=6,<7"],
        "dicom": ["pydicom>=3"],
        "eval": ["rouge-score>=0.1.2"],
        "quant": ["bitsandbytes>=0.49"],
        "serve": ["fastapi>=0.110", "uvicorn>=0.29"],
        "tensorboard": ["tensorboard>=2.15"],
    },
)
