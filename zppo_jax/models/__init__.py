"""Model families (currently Qwen3.5)."""
