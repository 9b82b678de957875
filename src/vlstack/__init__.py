"""vlstack: full-stack vision-language model training."""

import logging

__version__ = "0.1.0"

# transformers imports torchao where it is installed, and torchao registers enums in a way torch deprecates: two
# lines of torch's warning at the start of every command and every worker process, which no vlstack user can act on.
logging.getLogger("torch.utils._pytree").setLevel(logging.ERROR)
