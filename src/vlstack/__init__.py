"""vlstack: full-stack vision-language model training."""

__version__ = "0.1.0"
