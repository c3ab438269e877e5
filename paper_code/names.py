"""Names shared by the library and the command line, importable without torch."""

#: Models :func:`paper_code.load_model` knows.
MODELS = ("efficientnet_lite0", "resnet50", "vgg16_bn", "tiny")

#: Saliency methods and their names in the paper's tables.
PAPER_NAMES = {
    "fakecam": "Fake-CAM",
    "gradcam": "Grad-CAM",
    "gradcampp": "Grad-CAM++",
    "scorecam": "Score-CAM",
    "ablationcam": "Ablation-CAM",
    "xgradcam": "XGrad-CAM",
    "layercam": "Layer-CAM",
    "hirescam": "HiRes-CAM",
    "opticam": "Opti-CAM",
}
