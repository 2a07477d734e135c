"""affcons: sparsely supervised neuron instance segmentation for electron microscopy."""

__version__ = "0.1.0"
