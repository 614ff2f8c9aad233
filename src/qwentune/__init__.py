"""qwentune: fine-tune Qwen-family chat models end to end."""

__version__ = "0.1.0"
