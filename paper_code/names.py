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

#: Environment variable read by :func:`paper_code.methods.forward.evaluation_forward` when
#: ``compile`` is ``None``: unset, ``""``, ``0`` or ``false`` -> eager; ``1`` or ``true`` ->
#: Inductor's default mode; anything else -> that mode or backend. ``reproduce`` sets it for the
#: notebooks' kernels from the profile parameter ``compile_evaluation`` (``-p compile_evaluation
#: max-autotune``). Here, not in ``methods.forward``, so that the orchestrator never imports torch.
ENV_COMPILE = "PAPER_CODE_COMPILE"

#: Set (to ``1``) in a notebook kernel's environment while the book's runner executes it
#: (:func:`paper_code.book.runner.run_notebook`): the page is rendered by Jupyter Book, which shows
#: the glued values in the prose (:func:`paper_code.experiments.display.glue`).
ENV_BOOK = "PAPER_CODE_BOOK_RUN"
