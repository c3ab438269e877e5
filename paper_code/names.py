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

#: Environment variable that turns on ``torch.compile`` for the evaluation forwards
#: (:func:`paper_code.methods.forward.evaluation_forward`); set for notebook kernels by
#: ``reproduce`` from the profile's ``compile_evaluation``. Here so that the orchestrator, which
#: only starts kernels, never imports torch.
ENV_COMPILE = "PAPER_CODE_COMPILE"
