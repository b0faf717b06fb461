"""Catalogs of GPUs and models the surrogate knows, plus user-supplied model configs.

Public names: GpuSpec, load_gpu, gpu_names, ModelCard, load_model, model_names.
"""

from greenrl.catalog.gpus import GpuSpec, gpu_names, load_gpu
from greenrl.catalog.models import ModelCard, load_model, model_names

__all__ = ["GpuSpec", "ModelCard", "gpu_names", "load_gpu", "load_model", "model_names"]
