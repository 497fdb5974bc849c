"""Model resolution (local / cache / bundled GGUF / hub), loading, LoRA target modules and the catalog."""
