"""Closed-form editing: one ridge solver serving LOCOEDIT, DiffQuickFix, TIME, UCE, ReFACT and neuron ablation."""
