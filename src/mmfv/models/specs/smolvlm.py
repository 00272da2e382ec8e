"""SmolVLM: Idefics3's layout (its processor needs num2words); the tiny model splits images into crops."""

from mmfv.models.specs import idefics3
from mmfv.models.specs.spec import Spec

SPEC = Spec(
    family="smolvlm",
    model_types=("smolvlm",),
    model_class="SmolVLMForConditionalGeneration",
    processor_class="SmolVLMProcessor",
    layers="model.text_model.layers",
    template=idefics3.TEMPLATE,
    tiny=dict(
        idefics3.SPEC.tiny,
        # resize to 64 px, cut 2x2 crops of 32 px, add the global view (5 sub-images of 4 tokens)
        image_processor=("SmolVLMImageProcessorPil", dict(do_image_splitting=True, size={"longest_edge": 64}, max_image_size={"longest_edge": 32})),
        processor=("SmolVLMProcessor", dict(image_seq_len=4)),
    ),
)
