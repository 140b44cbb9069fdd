"""dualroute's models in PyTorch: the same configs, parameter names and safetensors checkpoints
as the Node library, for training beyond one machine (see python/README.md)."""
from .config import ConfigError, resolve_config, resolve_seq2seq_config
from .models import DualRouteClassifier, DualRouteLM, DualRouteSeq2Seq, load_model, save_model
from . import safetensors_io

__all__ = ['ConfigError', 'resolve_config', 'resolve_seq2seq_config', 'DualRouteLM', 'DualRouteSeq2Seq',
           'DualRouteClassifier', 'load_model', 'save_model', 'safetensors_io']
