"""Distillation methods: one module per method, each registering a DistillationMethod subclass."""
