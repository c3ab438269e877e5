"""Names shared by the library and the command line, importable without torch."""

#: Models :func:`paper_code.load_model` knows.
MODELS = (
    "efficientnet_lite0",
    "resnet50",
    "vgg16_bn",
    "tiny",
    "vit_base_patch16_224",
    "deit_base_patch16_224",
    "vit_tiny",
)
