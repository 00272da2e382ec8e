"""mmfv: multimodal function vectors — find the attention heads that carry a visual relation in
context, and turn them into vectors that steer, fine-tune and compose it."""

from mmfv import relations
from mmfv.prompts import FLAMINGO, Item, Prompt, Template

__version__ = "0.1.0"

__all__ = ["FLAMINGO", "Item", "Prompt", "Template", "relations", "__version__"]
