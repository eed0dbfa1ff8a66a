"""qssm: quantize small sequence models per component and map them to switched-capacitor IMC."""

import warnings

# Brevitas announces an optional CUDA kernel package on import; it is irrelevant here.
warnings.filterwarnings("ignore", message="fast_hadamard_transform package not found")
