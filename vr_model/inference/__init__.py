"""Applying a trained network: separation (one masking path), evaluation (SDR with floor and
ceiling) and ONNX export. Uses `vr_model.network`; never imports `vr_model.train`.
"""
