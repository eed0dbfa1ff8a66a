"""Integer lowering, integer reference, ONNX export and switched-capacitor mapping of qssm runs
(see docs/hardware.md)."""
