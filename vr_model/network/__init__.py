"""The network: layers, attention, primer blocks, the frame-primer U-Net, its config and presets,
and its form on disk (checkpoint: safetensors weights + JSON).

Training (`vr_model.train`) and inference (`vr_model.inference`) both build on this room; it
imports neither.
"""
