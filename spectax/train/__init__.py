"""Training support for drafters: self-distillation data (prompts, target generations, cached hidden states)."""
