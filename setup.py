"""affcons: sparsely supervised neuron segmentation (CRAC) with blockwise post-processing on daisy 2.

Install torch first (``pip install torch==2.13.0``), then ``pip install -e .[test]``.
"""

from setuptools import find_packages, setup

INSTALL_REQUIRES = [
    "torch==2.13.0",
    "daisy==2.0.0",
    "funlib.persistence==0.7.0",
    "funlib.geometry==0.3.0",
    "zarr==3.1.6",
    "numcodecs==0.16.6",
    "numpy==2.4.6",
    "scipy==1.17.1",
    "scikit-image==0.26.0",
    "waterz==0.10.1",
    "numba==0.68.1",
    "fastremap==1.21.0",
    "connected-components-3d==4.1.1",
    "pymongo==4.20.1",
    "h5py==3.16.0",
    "tifffile==2026.3.3",
    "tensorboard==2.21.0",
    "pydantic==2.14.4",
    "PyYAML==6.0.4",
    "tqdm==4.70.1",
    "psutil==7.2.2",
    "dask==2026.8.0",
    "neuroglancer==2.41.2",
    "matplotlib==3.11.2",
]

setup(
    name="affcons",
    version="0.1.0",
    description="Cross-representation affinity consistency (CRAC) and blockwise EM segmentation",
    python_requires=">=3.11",
    packages=find_packages(include=["affcons", "affcons.*", "blockwise", "blockwise.*"]),
    install_requires=INSTALL_REQUIRES,
    extras_require={"test": ["pytest==9.2.0", "nx-27017==0.8.1", "ruff==0.17.5", "hypothesis==6.170.15"]},
    entry_points={
        "console_scripts": ["affcons=affcons.cli:main"],
        # The CLI's commands (affcons.cli), in the order `affcons --help` lists them.
        "affcons.commands": [
            "import=affcons.commands:IMPORT",
            "info=affcons.commands:INFO",
            "evaluate=affcons.commands:EVALUATE",
            "segment=blockwise.commands:SEGMENT",
            "predict=blockwise.commands:PREDICT",
            "pretrain=affcons.commands:PRETRAIN",
            "train=affcons.commands:TRAIN",
            "run=blockwise.commands:RUN",
            "view=blockwise.commands:VIEW",
            "report=blockwise.commands:REPORT",
        ],
    },
)
