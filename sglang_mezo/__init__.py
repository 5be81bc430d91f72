"""sglang_mezo: MeZO fine-tuning (Malladi et al., 2023) inside the SGLang serving engine."""
__version__ = "0.1.0"
