"""Causal mediation analysis over UNet and text-encoder states (Basu et al., ICLR 2024)."""
