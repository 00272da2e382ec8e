"""SmolVLM: Idefics3's layout (its processor needs num2words); tiny model splits images into crops."""

from functools import partial

from mmfv.models.specs import idefics3
from mmfv.models.specs.spec import Spec

SPEC = Spec(
    family="smolvlm",
    model_types=("smolvlm",),
    model_class="SmolVLMForConditionalGeneration",
    processor_class="SmolVLMProcessor",
    layers="model.text_model.layers",
    template=idefics3.TEMPLATE,
    tiny=partial(idefics3.tiny, "SmolVLM", split=True),
)
