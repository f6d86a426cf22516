"""LOCOGEN window search over cross-attention layers, and neuron-level localization (Basu et al., ICML 2024)."""
