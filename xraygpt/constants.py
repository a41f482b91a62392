"""Project-wide constants: the image placeholder, the loss ignore index and MedCLIP's pixel statistics."""

# The placeholder that instruction templates carry where the image goes (one per prompt).
IMAGE_PLACEHOLDER = "<ImageHere>"

# Token id written into `input_ids` at every image-token position by the collator.  It is
# negative so that it can never collide with a real vocabulary id; `splice_image_embeddings`
# replaces these positions with projected image features.
IMAGE_TOKEN_ID = -200

# Label value excluded from the loss (the convention of torch.nn.functional.cross_entropy).
IGNORE_INDEX = -100

# MedCLIP's image normalisation (grayscale replicated to 3 channels), from its released
# preprocessing constants.
MEDCLIP_MEAN = 0.5862785803043838
MEDCLIP_STD = 0.27950088968644304
MEDCLIP_IMAGE_SIZE = 224

# The paper's conversation template: `{}` receives `<Img><ImageHere></Img> {instruction}`.
DEFAULT_PROMPT_TEMPLATE = "###Doctor: {} ###Assistant: "
DEFAULT_END_SYM = "###"
